"""
The request body, behind the L{IRequestBody} seam.

How the bytes arrived (buffered by Twisted before the app runs, or streamed
as they come) is this module's business; the environ's C{wsgi.input} and the
controller's C{on_get} only talk to an L{IRequestBody}.
"""

from __future__ import annotations

from typing import IO, Any, Callable

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txawsgi.interfaces import IRequestBody


@implementer(IRequestBody)
class BufferedBody:
    """
    A body Twisted received completely before the app was called
    (C{request.content}: memory, or a temporary file when large).

    C{wsgi.input} is the content file itself: it already has the file
    semantics PEP 3333 asks for, and sharing it keeps C{wsgi.input} reads and
    C{on_get} deliveries on one read position.
    """

    __slots__ = ("_reactor", "file")

    def __init__(self, reactor: IReactorTime, content: IO[bytes]) -> None:
        self._reactor = reactor
        self.file = content

    def request(self, length: int, callback: Callable[[bytes], Any], errback: Callable[[BaseException], Any]) -> None:
        self._reactor.callLater(0, self._deliver, length, callback)

    def _deliver(self, length: int, callback: Callable[[bytes], Any]) -> None:
        callback(self.file.read(length) if not self.file.closed else b"")

    def close(self) -> None:
        pass
