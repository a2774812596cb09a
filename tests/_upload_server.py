"""
A server process for C{test_streaming_backpressure}'s memory test::

    python tests/_upload_server.py PAUSE_EVERY PAUSE_SECONDS

Serves, under an L{AWSGISite} on 127.0.0.1 (a free port, printed as
C{PORT <n>} once listening), a reactor-thread app that SHA-256-hashes the
request body as it streams with C{on_get} and answers C{"<length> <hex>"}.
It reads slowly on purpose: after every C{PAUSE_EVERY} bytes it waits
C{PAUSE_SECONDS} before asking for more, so a fast client is faster than
the app and only backpressure keeps the unread bytes (and the process's
memory) bounded.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Callable, Dict


def make_app(reactor: Any, pause_every: int, pause: float) -> Callable[..., Any]:
    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        ctrl = environ["awsgi.controller"](environ)
        hasher = hashlib.sha256()
        state = {"size": 0, "since": 0}

        def ask() -> None:
            ctrl.on_get(65536, got)

        def got(data: bytes) -> None:
            if not data:
                body = b"%d %s" % (state["size"], hasher.hexdigest().encode())
                start_response("200 OK", [("Content-Length", str(len(body)))])
                ctrl.put(body)
                ctrl.finish()
                return
            hasher.update(data)
            state["size"] += len(data)
            state["since"] += len(data)
            if state["since"] >= pause_every:
                state["since"] = 0
                reactor.callLater(pause, ask)
            else:
                ask()

        ask()
        return ctrl

    return app


def main(argv: list) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from txawsgi import AWSGIResource
    from txawsgi.site import AWSGISite

    pause_every, pause = int(argv[1]), float(argv[2])
    site = AWSGISite(AWSGIResource(reactor, make_app(reactor, pause_every, pause), stream_input=True))
    site.noisy = False

    def listening(port: Any) -> None:
        print(f"PORT {port.getHost().port}", flush=True)

    serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
