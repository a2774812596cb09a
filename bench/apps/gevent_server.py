"""
gevent.pywsgi serving the plain WSGI app, with TCP_NODELAY on every
accepted socket; an access log to stdout only with BENCH_ACCESS_LOG=1.
Usage: gevent_server.py PORT
"""

from gevent import monkey

monkey.patch_all()

import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import os  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from wsgi_app import application  # noqa: E402


class NoDelayWSGIServer(WSGIServer):
    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return super().handle(sock, address)


def main():
    log = sys.stdout if os.environ.get("BENCH_ACCESS_LOG") == "1" else None
    server = NoDelayWSGIServer(("127.0.0.1", int(sys.argv[1])), application, log=log, backlog=4096)
    gevent.signal_handler(signal.SIGTERM, server.stop, 1)
    gevent.signal_handler(signal.SIGINT, server.stop, 1)
    server.serve_forever()


if __name__ == "__main__":
    main()
