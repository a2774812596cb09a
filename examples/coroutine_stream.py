"""
An C{async def} WSGI application: streams that follow the client's pace.

C{@coroutine_app} turns C{async def app(environ, start_response, stream)}
into a WSGI application.  The coroutine runs in the reactor thread, so it
may await anything Twisted gives (a L{Deferred}, another coroutine), and
any helper it calls may await too -- no chain of C{yield}s.  What it writes
goes through the request's controller, which is what the application
returns, so WSGI middleware still wraps it.

Run it::

    python examples/coroutine_stream.py           # listens on 127.0.0.1:8080
    python examples/coroutine_stream.py 0         # any free port (printed)

and try::

    curl -N 'http://127.0.0.1:8080/ticks?n=5&interval=0.5'   # a line every 0.5 s
    curl -o /dev/null 'http://127.0.0.1:8080/download?size=1000000000'
    curl -N -T - http://127.0.0.1:8080/shout      # type lines; they come back loud

C{/download} awaits C{stream.send()}, which waits while the client is slow
to read: memory stays flat however slow it is.  C{/shout} reads the body as
it arrives (serve with C{AWSGISite} and C{stream_input=True}, as the
script does) and answers each piece at once.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict
from urllib.parse import parse_qs

from txawsgi.coroutines import Stream, coroutine_app

#: What C{/download} sends, repeated.
BLOCK = bytes(range(256)) * 256


@coroutine_app
async def application(environ: Dict[str, Any], start_response: Callable[..., Any], stream: Stream) -> None:
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))

    def number(name: str, default: float) -> float:
        values = query.get(name)
        return float(values[0]) if values else default

    if path == "/ticks":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "no-cache")])
        await ticks(stream, int(number("n", 10)), number("interval", 1.0))
    elif path == "/download":
        size = int(number("size", 10 * 1024 * 1024))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        left = size
        while left:
            piece = BLOCK[: min(left, len(BLOCK))]
            await stream.send(piece)  # waits while the client is slow
            left -= len(piece)
    elif path == "/shout":
        start_response("200 OK", [("Content-Type", "text/plain")])
        total = await shout(stream)
        await stream.send(b"(%d bytes)\n" % total)
    else:
        body = b"GET /ticks?n=N&interval=S or /download?size=N; POST to /shout\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        stream.write(body)


async def ticks(stream: Stream, n: int, interval: float) -> None:
    """
    A nested helper that awaits: C{n} lines, C{interval} seconds apart.
    """
    for i in range(n):
        if i:
            await stream.sleep(interval)
        await stream.send(b"tick %d\n" % i)


async def shout(stream: Stream) -> int:
    """
    Echo the request body upper-cased, piece by piece as it arrives.
    """
    total = 0
    while chunk := await stream.read():
        total += len(chunk)
        await stream.send(chunk.upper())
    return total


if __name__ == "__main__":
    from _serve import serve, site

    serve(sys.argv, lambda reactor: site(reactor, application, stream_input=True))
