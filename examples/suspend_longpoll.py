"""
Long-polling and streaming with C{x-wsgiorg.suspend}.

A message board.  Requests that wait for the next message call
C{resume = environ['x-wsgiorg.suspend'](timeout)}, hand C{resume} to the
board, and yield C{b''}: they hold no thread and cost nothing until a
message is published, when the board calls every C{resume} (from whatever
thread published it; C{resume} is thread-safe and idempotent).

Run it::

    python examples/suspend_longpoll.py           # listens on 127.0.0.1:8080
    python examples/suspend_longpoll.py 0         # any free port (printed)

then, in a few terminals::

    curl -N 'http://127.0.0.1:8080/stream'        # every message, as published
    curl 'http://127.0.0.1:8080/poll'             # waits for the next message
    curl 'http://127.0.0.1:8080/publish?text=hi'  # wakes them all

C{/poll?since=N&timeout=S} answers with the messages after the first C{N}
(waiting up to C{S} seconds for one); C{/stream?count=N} ends after C{N}
messages.  A thread publishes a C{tick} every ten seconds, to show that
C{resume} may be called from any thread.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set
from urllib.parse import parse_qs

#: The longest a C{/poll} waits (seconds).
POLL_TIMEOUT = 30.0


class Board:
    """
    The messages, and the resume callables of the requests waiting for one
    more.  Every method is thread-safe.
    """

    def __init__(self) -> None:
        self.messages: List[bytes] = []
        self._waiting: Set[Callable[[], None]] = set()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """
        How many requests are suspended on the board.
        """
        return len(self._waiting)

    def publish(self, text: bytes) -> int:
        """
        Add a message and resume every waiting request; return how many.
        """
        with self._lock:
            self.messages.append(text)
            waiting, self._waiting = self._waiting, set()
        for resume in waiting:
            resume()
        return len(waiting)

    def notify(self, resume: Callable[[], None], seen: int) -> None:
        """
        Call C{resume} once there are more than C{seen} messages: now, if
        there already are (a message may have come in between the check and
        the suspension).
        """
        with self._lock:
            ready = len(self.messages) > seen
            if not ready:
                self._waiting.add(resume)
        if ready:
            resume()

    def forget(self, resume: Callable[[], None]) -> None:
        with self._lock:
            self._waiting.discard(resume)


BOARD = Board()


def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))

    def number(name: str, default: Any) -> Any:
        values = query.get(name)
        return float(values[0]) if values else default

    if path == "/publish":
        text = (query.get("text") or [""])[0].encode("utf-8")
        body = b"delivered to %d waiting\n" % BOARD.publish(text)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/poll":
        since = int(number("since", len(BOARD.messages)))
        return poll(environ, start_response, since, number("timeout", POLL_TIMEOUT))
    if path == "/stream":
        count = number("count", None)
        return stream(environ, start_response, int(number("since", len(BOARD.messages))), count)
    body = b"GET /poll, /stream or /publish?text=...\n"
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def wait_for(environ: Dict[str, Any], seen: int, timeout: Optional[float] = None) -> Iterator[bytes]:
    """
    Suspend the request until there are more than C{seen} messages (or
    C{timeout} seconds pass): use with C{yield from}.
    """
    resume = environ["x-wsgiorg.suspend"](timeout)
    BOARD.notify(resume, seen)
    try:
        yield b""
    finally:
        # Resumed, timed out, or the client went away (the generator is
        # closed here): either way, stop waiting.
        BOARD.forget(resume)


def poll(environ: Dict[str, Any], start_response: Callable[..., Any], since: int, timeout: float) -> Iterator[bytes]:
    """
    Answer with the messages after the first C{since}, once there is one,
    or empty-handed after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while len(BOARD.messages) <= since:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        yield from wait_for(environ, since, left)
    news = b"".join(message + b"\n" for message in BOARD.messages[since:])
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(news))),
            ("X-Next-Since", str(since + len(BOARD.messages[since:]))),
        ],
    )
    if news:
        yield news


def stream(environ: Dict[str, Any], start_response: Callable[..., Any], since: int, count: Optional[float]) -> Iterator[bytes]:
    """
    Every message after the first C{since}, as it is published (C{count}
    of them, or forever).
    """
    start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "no-cache")])
    sent = since
    while count is None or sent < since + count:
        if len(BOARD.messages) > sent:
            yield BOARD.messages[sent] + b"\n"
            sent += 1
        else:
            yield from wait_for(environ, sent)


def start_ticker() -> None:
    """
    Publish a C{tick} every ten seconds, from a thread of its own.
    """

    def tick() -> None:
        while True:
            time.sleep(10)
            BOARD.publish(time.strftime("tick %H:%M:%S").encode())

    threading.Thread(target=tick, name="ticker", daemon=True).start()


if __name__ == "__main__":
    from _serve import serve, site

    serve(sys.argv, lambda reactor: site(reactor, application, streaming=False), started=start_ticker)
