"""
An ordinary, blocking WSGI application, served in greenlet mode.

Nothing here knows about Twisted's reactor: the application reads uploads
with C{wsgi.input.read()} and C{readline()} and sends a large download with
the C{write()} callable, exactly as it would under a threaded server.  In
greenlet mode each request runs in a greenlet of its own on the reactor
thread, and wherever the application would block (the next piece of the
upload has not arrived, the client has not taken the last block) only that
request's greenlet is suspended; the reactor goes on serving everyone else.
Bodies stream: the application hashes the first bytes of an upload before
the client has sent the rest.

Run it (needs C{pip install txawsgi[greenlet]})::

    python examples/greenlet_upload.py            # listens on 127.0.0.1:8080
    python examples/greenlet_upload.py 0          # any free port (printed)

or with C{twistd}::

    twistd -n awsgi --greenlets --app greenlet_upload:application   # from examples/

and try::

    curl -T big.iso http://127.0.0.1:8080/           # "<bytes> bytes, sha256 <hex>"
    curl --data-binary @/etc/services http://127.0.0.1:8080/lines
    curl -o /dev/null 'http://127.0.0.1:8080/download?size=1000000000'
    curl 'http://127.0.0.1:8080/sleep?seconds=2'     # waits on a Deferred
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Callable, Dict, Iterable
from urllib.parse import parse_qs

#: Bytes read, and written, at a time.
CHUNK = 64 * 1024

#: What C{/download} sends, repeated.
BLOCK = bytes(range(256)) * (CHUNK // 256)


def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    stdin = environ["wsgi.input"]

    if method in ("POST", "PUT") and path == "/lines":
        # Line by line: readline() waits for each newline (or CHUNK bytes).
        lines = size = 0
        while True:
            line = stdin.readline(CHUNK)
            if not line:
                break
            lines += line.endswith(b"\n")
            size += len(line)
        return _answer(start_response, b"%d lines, %d bytes\n" % (lines, size))

    if method in ("POST", "PUT"):
        # Piece by piece: read(n) waits until n bytes (or the end) are in.
        hasher = hashlib.sha256()
        size = 0
        while True:
            data = stdin.read(CHUNK)
            if not data:
                break
            hasher.update(data)
            size += len(data)
        return _answer(start_response, b"%d bytes, sha256 %s\n" % (size, hasher.hexdigest().encode("ascii")))

    if path == "/download":
        size = int((query.get("size") or [str(10 * 1024 * 1024)])[0])
        write = start_response(
            "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        )
        left = size
        while left:
            # write() returns once the client has room for more.
            piece = BLOCK[: min(left, len(BLOCK))]
            write(piece)
            left -= len(piece)
        return []

    if path == "/sleep":
        # Any Twisted API, from plain code: wait() suspends this request
        # until the Deferred fires.
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        from txawsgi.runners import wait

        seconds = float((query.get("seconds") or ["1"])[0])
        wait(deferLater(reactor, seconds, lambda: None))
        return _answer(start_response, b"slept %g s\n" % seconds)

    return _answer(
        start_response,
        b"POST a body to /, or to /lines; GET /download?size=N or /sleep?seconds=S\n",
    )


def _answer(start_response: Callable[..., Any], body: bytes) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    from _serve import serve, site

    serve(sys.argv, lambda reactor: site(reactor, application, greenlets=True))
