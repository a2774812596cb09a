"""
WSGI applications for the production-deployment tests (served in-process
and by C{twistd awsgi} child processes).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable, List

StartResponse = Callable[..., Any]

#: Environ keys reported by C{/environ}.
REPORTED = (
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.url_scheme",
    "HTTP_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
    "SCRIPT_NAME",
    "PATH_INFO",
    "SERVER_PROTOCOL",
    "wsgi.multiprocess",
    "HTTP_X_FORWARDED_FOR",
)

#: Bytes the last C{/produce} request has put so far.
produced = [0]

#: Controllers of C{/hold} requests, answered by C{/release}.
_held: List[Any] = []


def _text(start_response: StartResponse, body: bytes, status: str = "200 OK") -> List[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    query = environ["QUERY_STRING"]
    reactor = environ["awsgi.reactor"]
    if path == "/pid":
        return _text(start_response, str(os.getpid()).encode())
    if path == "/environ":
        report = {key: environ.get(key) for key in REPORTED}
        return _text(start_response, json.dumps(report).encode())
    if path == "/block":
        # Blocks this process's reactor: other workers must answer meanwhile.
        time.sleep(float(query or "1"))
        return _text(start_response, str(os.getpid()).encode())
    if path == "/slow":
        # Headers and a first line now, the rest after QUERY seconds.
        ctrl = environ["awsgi.controller"](environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        ctrl.put(b"started\n")

        def finish() -> None:
            if not ctrl.closed:
                ctrl.put(b"finished\n")
                ctrl.finish()

        reactor.callLater(float(query or "2"), finish)
        return ctrl
    if path == "/longpoll":
        # Waits for ever, unless the server starts shutting down.
        ctrl = environ["awsgi.controller"](environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        ctrl.put(b"waiting\n")

        def bye() -> None:
            ctrl.put(b"server shutting down\n")
            ctrl.finish()

        ctrl.on_shutdown(bye)
        return ctrl
    if path == "/never":
        # Never answers at all.
        ctrl = environ["awsgi.controller"](environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ctrl
    if path == "/stream":
        count = int(query or "3")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"chunk %d\n" % i for i in range(count)]
    if path == "/hold":
        # First line now, the rest when /release is requested.
        ctrl = environ["awsgi.controller"](environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        ctrl.put(b"first part\n")
        _held.append(ctrl)
        ctrl.on_close(lambda reason: ctrl in _held and _held.remove(ctrl))
        return ctrl
    if path == "/release":
        released = len(_held)
        for ctrl in list(_held):
            ctrl.put(b"second part\n")
            ctrl.finish()
        return _text(start_response, b"released %d\n" % released)
    if path == "/produce":
        # Streams up to QUERY bytes as fast as the client takes them.
        limit = int(query or "0")
        ctrl = environ["awsgi.controller"](environ)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        chunk = b"x" * 65536
        produced[0] = 0

        def produce() -> None:
            while produced[0] < limit and not ctrl.closed:
                produced[0] += len(chunk)
                if not ctrl.put(chunk):
                    ctrl.on_drain(produce)
                    return
            if not ctrl.closed:
                ctrl.finish()

        reactor.callLater(0, produce)
        return ctrl
    if path == "/produced":
        return _text(start_response, b"%d" % produced[0])
    if path == "/fail":
        # Fails after the response started: the connection is cut.
        def body() -> Iterable[bytes]:
            yield b"partial"
            raise RuntimeError("failing on purpose")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return body()
    return _text(start_response, b"hello " + environ["SCRIPT_NAME"].encode() + b"|" + path.encode() + b"\n")


def other(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """
    A second application, for --mount.
    """
    body = ("other " + environ["SCRIPT_NAME"] + "|" + environ["PATH_INFO"] + "\n").encode()
    return _text(start_response, body)
