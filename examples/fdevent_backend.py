"""
Talk to a backend over a non-blocking socket with C{x-wsgiorg.fdevent}.

The application is a plain generator written to the wsgi.org fdevent text,
with nothing txawsgi-specific in it: it opens a non-blocking TCP socket to a
backend service and, wherever it would block, calls
C{environ['x-wsgiorg.fdevent.writable'](sock, timeout)} (or C{.readable})
and yields C{b''}.  txawsgi watches the socket with a reactor reader or
writer and resumes the application when it is ready, so one server thread
serves any number of these requests, and streams each reply to its client
as the backend produces it.

The backend, started by this script in the same process, is a slow
upper-casing service: it answers each line it receives after C{DELAY}
seconds, and closes the connection after answering a line holding a single
C{.}.

Run it::

    python examples/fdevent_backend.py            # listens on 127.0.0.1:8080
    python examples/fdevent_backend.py 0          # any free port (printed)

and ask it to shout (each word arrives on its own)::

    curl -N 'http://127.0.0.1:8080/?w=hello&w=fdevent&w=world'

The application needs the reactor-thread mode (the default): the fdevent
keys are not in the environ when the application runs in a threadpool or in
greenlets.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any, Callable, Dict, Iterator, Tuple
from urllib.parse import parse_qs

#: Where the backend listens; L{start_backend} sets it to the backend it starts.
BACKEND: Tuple[str, int] = ("127.0.0.1", 7000)

#: Seconds the application waits on the backend before giving up.
TIMEOUT = 5.0

#: Seconds the backend takes to answer each line.
DELAY = 0.25


def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    """
    C{GET /?w=word&w=word...}: every word, upper-cased by the backend, one
    line each, streamed as the backend answers.
    """
    readable = environ["x-wsgiorg.fdevent.readable"]
    writable = environ["x-wsgiorg.fdevent.writable"]
    words = parse_qs(environ.get("QUERY_STRING", "")).get("w") or ["hello", "world"]
    pending = b"".join(word.encode("utf-8") + b"\n" for word in words) + b".\n"

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        status = sock.connect_ex(BACKEND)
        if status not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            yield from _fail(start_response, "502 Bad Gateway", f"connect: {errno.errorcode.get(status, status)}")
            return
        # The connection is established (or has failed) once it is writable.
        writable(sock, TIMEOUT)
        yield b""
        if environ["x-wsgiorg.fdevent.timeout"]:
            yield from _fail(start_response, "504 Gateway Timeout", "the backend did not accept")
            return
        status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if status:
            yield from _fail(start_response, "502 Bad Gateway", f"connect: {errno.errorcode.get(status, status)}")
            return

        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        while pending:
            try:
                pending = pending[sock.send(pending) :]
            except BlockingIOError:
                writable(sock, TIMEOUT)
                yield b""
                if environ["x-wsgiorg.fdevent.timeout"]:
                    return

        while True:
            readable(sock, TIMEOUT)
            yield b""
            if environ["x-wsgiorg.fdevent.timeout"]:
                yield b"(the backend is too slow; giving up)\n"
                return
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionError:
                return
            if not data:
                # The backend closed the connection: the hang-up resumes us
                # too, and recv() says so.
                return
            yield data
    finally:
        sock.close()


def _fail(start_response: Callable[..., Any], status: str, why: str) -> Iterator[bytes]:
    body = f"{status}: {why}\n".encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    yield body


def backend_factory(reactor: Any, delay: float = DELAY) -> Any:
    """
    The slow upper-casing backend: each line comes back upper-cased
    C{delay} seconds after it arrived; after the line C{.} it closes.
    """
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineOnlyReceiver

    class Shout(LineOnlyReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.pending: list = []
            self.answered = reactor.seconds()

        def lineReceived(self, line: bytes) -> None:
            # One answer every `delay` seconds, in order.
            self.answered = max(self.answered, reactor.seconds()) + delay
            self.pending.append(reactor.callLater(self.answered - reactor.seconds(), self.answer, line))

        def answer(self, line: bytes) -> None:
            self.pending.pop(0)
            if line == b".":
                self.transport.loseConnection()
            else:
                self.sendLine(line.upper())

        def connectionLost(self, reason: Any = None) -> None:
            for call in self.pending:
                if call.active():
                    call.cancel()
            self.pending = []

    return Factory.forProtocol(Shout)


def start_backend(reactor: Any) -> Any:
    """
    Start the backend on a free port, point L{BACKEND} at it; a L{Deferred}
    firing with the site serving L{application}.
    """
    from twisted.internet.endpoints import serverFromString

    from _serve import site

    def started(backend_port: Any) -> Any:
        global BACKEND
        BACKEND = ("127.0.0.1", backend_port.getHost().port)
        print(f"fdevent_backend: backend on {BACKEND[0]}:{BACKEND[1]}", flush=True)
        return site(reactor, application, streaming=False)

    return serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(backend_factory(reactor)).addCallback(started)


if __name__ == "__main__":
    from _serve import serve

    serve(sys.argv, start_backend)
