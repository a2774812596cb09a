"""
How long the server waits, and for what.

Three limits, each about one way a connection can hold resources:

  - C{keep_alive}:
    A connection with no request in progress (between requests, or before
    the first) and nothing received for this long is closed.  Also the idle
    limit of HTTP/2 connections without open streams.
  - C{header}:
    A request head (request line and headers) must be complete this long
    after its first byte, or the client gets C{408} and the connection is
    closed: a client trickling bytes (slowloris) cannot hold it forever.
  - C{request}:
    Optional: an application that has not finished its response this long
    after it was called is cut off (C{503} if nothing was sent yet, else the
    connection is closed).  Off by default: long-polls and streams are
    legitimate.  Only WSGI applications are timed; static files always end.
    An application waiting in a worker thread or a greenlet (a
    C{wsgi.input} read, a greenlet's C{wait(d)}) gets L{RequestTimedOut}
    from its wait, so the thread or greenlet is freed.

Request bodies are the application's to pace (streamed bodies wait for
C{on_get}), so they are not timed except by C{request}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from zope.interface import implementer

from txawsgi.errors import RequestTimedOut
from txawsgi.interfaces import IExchangeObserver

__all__ = [
    "DEFAULT_HEADER",
    "DEFAULT_KEEP_ALIVE",
    "RequestDeadline",
    "Timeouts",
    "REQUEST_TIMED_OUT",
    "guard_h2_idle",
]

#: Seconds an idle keep-alive connection stays open.
DEFAULT_KEEP_ALIVE = 15.0
#: Seconds allowed for a request head, from its first byte.
DEFAULT_HEADER = 10.0

#: What a client whose request head took too long gets.
REQUEST_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 16\r\n"
    b"\r\n"
    b"Request Timeout\n"
)


@dataclass(frozen=True)
class Timeouts:
    """
    The limits, in seconds; L{None} disables one.
    """

    keep_alive: Optional[float] = DEFAULT_KEEP_ALIVE
    header: Optional[float] = DEFAULT_HEADER
    request: Optional[float] = None


@implementer(IExchangeObserver)
class RequestDeadline:
    """
    Cut off WSGI exchanges that run longer than C{limit} seconds.
    """

    def __init__(self, reactor: Any, limit: float) -> None:
        self._reactor = reactor
        self.limit = limit
        self._timers: dict[Any, IDelayedCall] = {}

    def exchange_started(self, exchange: Any) -> None:
        self._timers[exchange] = self._reactor.callLater(self.limit, self._expire, exchange)

    def exchange_ended(self, exchange: Any) -> None:
        timer = self._timers.pop(exchange, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _expire(self, exchange: Any) -> None:
        self._timers.pop(exchange, None)
        request = exchange.request
        exchange.cancel(
            Failure(
                RequestTimedOut(
                    f"{request.method.decode('latin-1')} "
                    f"{request.uri.decode('latin-1')} did not finish within "
                    f"the request timeout of {self.limit:g}s"
                )
            )
        )

    def __len__(self) -> int:
        return len(self._timers)


def guard_h2_idle(connection: Any) -> None:
    """
    Make an HTTP/2 connection's idle timeout apply only while it has no open
    stream: Twisted's times out a connection whose only stream is a quiet
    long-poll.  (Installed on the connection object, once negotiated.)
    """
    original = connection.timeoutConnection

    def timeoutConnection() -> None:
        if connection.streams:
            # Busy, not idle: wait another period.
            connection.setTimeout(connection.timeOut)
        else:
            original()

    connection.timeoutConnection = timeoutConnection
