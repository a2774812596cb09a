"""
WSGI applications for the reliability tests, served by C{twistd awsgi}
child processes (C{--app tests.abuseapps:echo} and so on).

Every iterable C{stress} returns is wrapped in L{Tracked}, which counts
C{close()} calls, so a test can ask the server (C{/stats}) whether every
request that reached the application was closed, and how many of txawsgi's
per-request objects are still alive after the clients left (C{/gc}).
"""

from __future__ import annotations

import gc
import json
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List

StartResponse = Callable[..., Any]

#: Where L{echo} appends one JSON line per call (a test's side channel).
CALLS_ENV = "TXAWSGI_TEST_CALLS"


def _calls_file() -> Any:
    path = os.environ.get(CALLS_ENV)
    return open(path, "a", buffering=1) if path else None


_calls = _calls_file()


def _request_record(environ: Dict[str, Any], body: bytes) -> Dict[str, Any]:
    headers = sorted(
        (key[5:].replace("_", "-"), value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    )
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if key in environ:
            headers.append((key.replace("_", "-"), environ[key]))
    return {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "uri": environ.get("REQUEST_URI", ""),
        "protocol": environ["SERVER_PROTOCOL"],
        "headers": headers,
        "body": body.decode("latin-1"),
    }


def echo(environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """
    Reads the whole body, records the request (method, path, query,
    protocol, headers, body) in the calls file, and answers it as JSON.
    """
    body = environ["wsgi.input"].read()
    record = _request_record(environ, body)
    text = json.dumps(record)
    if _calls is not None:
        _calls.write(text + "\n")
    data = text.encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


# -- stress: slow clients, aborts, soak ---------------------------------------

#: Counters reported by /stats.
stats: Dict[str, int] = {
    "calls": 0,
    "closed": 0,
    "close_twice": 0,
    "uploaded": 0,
    "upload_errors": 0,
    "polls": 0,
}

#: Long-polls waiting for /release (or their client leaving).
_waiting: List[Any] = []


class Tracked:
    """
    Wraps an application iterable (a controller included: the engine wakes
    it out of band) and counts its C{close()}.
    """

    __slots__ = ("_inner", "_closed")

    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = iter(inner)
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._inner)

    def close(self) -> None:
        if self._closed:
            stats["close_twice"] += 1
            return
        self._closed = True
        stats["closed"] += 1
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def _text(start_response: StartResponse, body: bytes) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _blocks(total: int, size: int = 65536) -> Iterator[bytes]:
    block = b"x" * size
    left = total
    while left > 0:
        piece = block if left >= size else block[:left]
        left -= len(piece)
        yield piece


def _trim() -> None:
    """
    Hand freed heap memory back to the OS (glibc), so RSS tracks what is
    live rather than what the allocator keeps for later.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _live_objects() -> Dict[str, int]:
    gc.collect()
    _trim()
    wanted = {
        "Exchange",
        "Engine",
        "Controller",
        "Response",
        "StreamingBody",
        "SpooledBody",
        "ServerRequest",
        "ServerChannel",
        "ServerProtocol",
        "Tracked",
    }
    counts = dict.fromkeys(sorted(wanted), 0)
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in wanted:
            counts[name] += 1
    return counts


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def _stream(environ: Dict[str, Any], start_response: StartResponse, total: int) -> Any:
    ctrl = environ["awsgi.controller"](environ)
    reactor = environ["awsgi.reactor"]
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    blocks = _blocks(total)

    def produce() -> None:
        for block in blocks:
            if ctrl.closed:
                return
            if not ctrl.put(block):
                ctrl.on_drain(produce)
                return
        if not ctrl.closed:
            ctrl.finish()

    reactor.callLater(0, produce)
    return ctrl


def _upload(environ: Dict[str, Any], start_response: StartResponse) -> Any:
    ctrl = environ["awsgi.controller"](environ)
    start_response("200 OK", [("Content-Type", "text/plain")])
    received = [0]

    def got(data: bytes) -> None:
        if data:
            received[0] += len(data)
            ctrl.on_get(65536, got, lost)
        else:
            stats["uploaded"] += received[0]
            ctrl.put(b"%d\n" % received[0])
            ctrl.finish()

    def lost(reason: BaseException) -> None:
        stats["upload_errors"] += 1

    ctrl.on_get(65536, got, lost)
    return ctrl


def _poll(environ: Dict[str, Any], start_response: StartResponse) -> Any:
    ctrl = environ["awsgi.controller"](environ)
    start_response("200 OK", [("Content-Type", "text/plain")])
    stats["polls"] += 1
    _waiting.append(ctrl)
    ctrl.on_close(lambda reason: ctrl in _waiting and _waiting.remove(ctrl))

    def bye() -> None:
        if not ctrl.closed:
            ctrl.put(b"bye\n")
            ctrl.finish()

    ctrl.on_shutdown(bye)
    return ctrl


def stress(environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """
    C{/hello}; C{/big?N} (N bytes from a generator); C{/stream?N} (N bytes
    put through the controller at the client's pace); C{/upload} (reads the
    body with C{on_get}, answers its size); C{/poll} (a long-poll answered by
    C{/release} or the shutdown); C{/slow?S} (answers after S seconds);
    C{/stats}, C{/gc} (JSON reports, not counted; C{/gc} collects garbage
    and trims the heap first).  The C{X-Request-Id} of every counted call is
    appended to the calls file (C{TXAWSGI_TEST_CALLS}), when there is one.
    """
    path = environ["PATH_INFO"]
    query = environ["QUERY_STRING"]
    if path == "/stats":
        report = dict(stats, waiting=len(_waiting), fds=_fds())
        return _text(start_response, json.dumps(report).encode())
    if path == "/gc":
        report = dict(_live_objects(), fds=_fds(), waiting=len(_waiting))
        return _text(start_response, json.dumps(report).encode())
    if path == "/release":
        released = 0
        for ctrl in list(_waiting):
            if not ctrl.closed:
                ctrl.put(b"released\n")
                ctrl.finish()
                released += 1
        return _text(start_response, b"%d" % released)
    stats["calls"] += 1
    request_id = environ.get("HTTP_X_REQUEST_ID")
    if request_id and _calls is not None:
        _calls.write(request_id + "\n")
    if path == "/big":
        total = int(query or "1048576")
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(total))])
        return Tracked(_blocks(total))
    if path == "/stream":
        return Tracked(_stream(environ, start_response, int(query or "1048576")))
    if path == "/upload":
        return Tracked(_upload(environ, start_response))
    if path == "/poll":
        return Tracked(_poll(environ, start_response))
    if path == "/slow":
        ctrl = environ["awsgi.controller"](environ)
        start_response("200 OK", [("Content-Type", "text/plain")])

        def done() -> None:
            if not ctrl.closed:
                ctrl.put(b"slow done\n")
                ctrl.finish()

        environ["awsgi.reactor"].callLater(float(query or "1"), done)
        return Tracked(ctrl)
    return Tracked(_text(start_response, b"hello\n"))
