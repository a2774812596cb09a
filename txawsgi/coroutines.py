"""
Coroutine applications: C{async def} WSGI apps whose nested helpers can
wait without a chain of yields.

Generators make every function on the call chain yield (Manlio Perillo's
point on Web-SIG; Stawarz's C{awsgiref.callstack} emulated a stack to work
around it).  Native coroutines have a real stack::

    from txawsgi.coroutines import coroutine_app

    @coroutine_app
    async def app(environ, start_response, stream):
        start_response("200 OK", [("Content-Type", "text/plain")])
        total = await count(stream)           # a nested helper that awaits
        await stream.send(b"%d bytes\\n" % total)

    async def count(stream):
        total = 0
        while chunk := await stream.read():
            total += len(chunk)
        return total

The coroutine runs in the reactor thread as a L{Deferred} (so it may await
any L{Deferred} or coroutine); its output goes through the request's
controller, which is what the decorated application returns, so middleware
still applies.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Coroutine, Iterable, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from txawsgi.errors import AlreadyFinished, BodyTruncated, ClientDisconnected

CoroutineApp = Callable[[dict, Callable[..., Any], "Stream"], Coroutine[Any, Any, None]]

#: Bytes asked for by a bare C{read()}.
READ_SIZE = 64 * 1024


class Stream:
    """
    The request body and response body of one exchange, as awaitables.

    @ivar controller: the underlying L{IController}.
    """

    __slots__ = ("controller", "_reactor", "_waiters")

    def __init__(self, environ: dict[str, Any], controller: Any) -> None:
        self.controller = controller
        self._reactor = environ["awsgi.reactor"]
        self._waiters: set[Deferred[Any]] = set()
        controller.on_close(self._closed)

    @property
    def closed(self) -> bool:
        """
        Whether the exchange has ended (the client may have gone away).
        """
        return bool(self.controller.closed)

    def _wait(self) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        self._waiters.add(waiter)
        waiter.addBoth(self._forget, waiter)
        return waiter

    def _forget(self, result: Any, waiter: Deferred[Any]) -> Any:
        self._waiters.discard(waiter)
        return result

    def _closed(self, reason: Optional[BaseException]) -> None:
        for waiter in list(self._waiters):
            if not waiter.called:
                waiter.errback(ClientDisconnected("the exchange ended"))

    async def read(self, size: int = READ_SIZE) -> bytes:
        """
        Up to C{size} bytes of request body as soon as some arrive; C{b''}
        at its end.

        @raise BodyTruncated: if the client went away mid-body.
        """
        waiter = self._wait()
        self.controller.on_get(size, waiter.callback, waiter.errback)
        return await waiter

    async def read_all(self, limit: Optional[int] = None) -> bytes:
        """
        The whole request body (at most C{limit} bytes, else C{ValueError}).
        """
        chunks = []
        total = 0
        while chunk := await self.read():
            total += len(chunk)
            if limit is not None and total > limit:
                raise ValueError(f"request body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, data: bytes) -> bool:
        """
        Queue response bytes (C{put}); C{False} means C{await drain()}.
        """
        return bool(self.controller.put(data))

    async def drain(self) -> None:
        """
        Wait until the client has taken what was written (output
        backpressure).

        @raise ClientDisconnected: if the exchange ended meanwhile.
        """
        if self.closed:
            raise ClientDisconnected("the exchange ended")
        if self.controller.writable:
            return
        waiter = self._wait()
        self.controller.on_drain(lambda: waiter.called or waiter.callback(None))
        await waiter

    async def send(self, data: bytes) -> None:
        """
        C{write} then C{drain}: send and follow the client's pace.
        """
        if not self.write(data):
            await self.drain()

    async def sleep(self, seconds: float) -> None:
        """
        Wait C{seconds} without blocking the reactor.
        """
        await deferLater(self._reactor, seconds)


def coroutine_app(function: CoroutineApp) -> Callable[[dict, Callable[..., Any]], Iterable[bytes]]:
    """
    Turn C{async def app(environ, start_response, stream)} into a WSGI
    application served by txawsgi's controller.

    The response ends when the coroutine returns.  An exception before any
    output is a 500; after, the connection is cut.  If the client goes away,
    the coroutine is cancelled (the awaited operation raises
    L{CancelledError} or L{ClientDisconnected}).
    """

    @functools.wraps(function)
    def application(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        controller = environ["awsgi.controller"](environ)
        stream = Stream(environ, controller)

        def run() -> None:
            running = Deferred.fromCoroutine(function(environ, start_response, stream))
            controller.on_close(lambda reason: reason is not None and running.cancel())
            running.addCallbacks(finished, failed)

        def finished(result: Any) -> None:
            if not controller.closed:
                try:
                    controller.finish()
                except AlreadyFinished:
                    pass

        def failed(reason: Failure) -> None:
            if reason.check(CancelledError, ClientDisconnected, BodyTruncated):
                # The client went away (or its body was refused): the
                # coroutine was told so, and nobody is left to answer.  A
                # read learns of it before the exchange ends, so look again
                # once the departure has been dealt with.
                if not controller.closed:
                    environ["awsgi.reactor"].callLater(0, fail_unless_closed, reason)
                return
            controller.fail(reason)

        def fail_unless_closed(reason: Failure) -> None:
            if not controller.closed:
                controller.fail(reason)

        if isInIOThread():
            run()
        else:
            environ["awsgi.reactor"].callFromThread(run)
        return controller

    return application


__all__ = ["Stream", "coroutine_app"]
