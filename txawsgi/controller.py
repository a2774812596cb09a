"""
Phillip J. Eby's iterator-controller: the app's async API for one exchange.

The controller is the iterable the app returns: it yields what was C{put},
C{b''} while its queue is empty, and stops after C{finish()}.  Because it is
also an L{IWakeSource}, the engine does not poll it: an empty chunk while the
controller is idle puts the engine to sleep until C{put} or C{finish} wakes
it, even when middleware wraps the controller.
"""

from __future__ import annotations

from enum import auto
from threading import Lock, get_ident
from typing import Any, Callable, Optional, Protocol

from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure
from zope.interface import implementer

from txawsgi.errors import (
    AlreadyFinished,
    BodyTruncated,
    ClientDisconnected,
    GetPending,
    InputReplaced,
    InvalidBody,
)
from txawsgi.interfaces import IController, IRequestBody, IWakeSource
from txawsgi.states import Machine, State, edges

#: Queued bytes at which C{put()} starts answering C{False}.
HIGH_WATER = 64 * 1024


class Output(State):
    """
    The controller's side of the response body.
    """

    #: Accepting C{put}.
    OPEN = auto()
    #: C{finish()} was applied; the queue drains, then iteration stops.
    FINISHED = auto()
    #: The exchange ended; the queue was dropped.
    CLOSED = auto()


_OUTPUT_EDGES = edges(
    Output,
    {
        Output.OPEN: {Output.FINISHED, Output.CLOSED},
        Output.FINISHED: {Output.CLOSED},
        Output.CLOSED: set(),
    },
)


class ControllerHooks(Protocol):
    """
    What a controller needs from its exchange, kept narrow: the exchange's
    L{txawsgi.engine.Engine} provides it, so a controller costs no adapter
    object and no bound methods.  The engine forgets its controller when it
    ends, so the controller may keep it without a reference cycle.
    """

    @property
    def reactor(self) -> Any:
        """
        The reactor the exchange runs in.
        """

    @property
    def paused(self) -> bool:
        """
        Whether the transport has asked the response to stop producing.
        """

    def wake(self) -> None:
        """
        Resume iteration: the controller has something for the engine.
        """

    def crash(self, reason: Failure) -> None:
        """
        Fail the exchange as if the application had raised C{reason}.
        """

    def deliver(self, source: Any, data: bytes) -> bool:
        """
        Write C{data} now if that is what pulling it would do (see
        L{txawsgi.engine.Engine.deliver}); C{False} to have it queued.
        Reactor thread only.
        """


class Hooks:
    """
    L{ControllerHooks} made of separate callables, for a controller driven
    by something other than an engine.
    """

    __slots__ = ("reactor", "wake", "_paused", "crash")

    def __init__(self, reactor: Any, wake: Callable[[], None], paused: Callable[[], bool], crash: Callable[[Failure], None]) -> None:
        self.reactor = reactor
        self.wake = wake
        self._paused = paused
        self.crash = crash

    @property
    def paused(self) -> bool:
        return self._paused()

    def deliver(self, source: Any, data: bytes) -> bool:
        return False  # always through the queue


@implementer(IController, IWakeSource)
class Controller:
    """
    See L{IController}.  Created by C{environ['awsgi.controller'](environ)}.
    """

    _log = Logger()

    __slots__ = (
        "_hooks",
        "_environ",
        "_body",
        "_lock",
        "_queue",
        "_queued",
        "_output",
        "_finish_called",
        "_get_pending",
        "_drain",
        "_close",
        "_reason",
        "_shutdown",
        "_shutting_down",
        "_pending",
        "_busy",
    )

    def __init__(self, hooks: ControllerHooks, environ: dict[str, Any], body: IRequestBody) -> None:
        # The queue and the callback lists are made on first use: a held
        # long-poll that never puts costs none of them.
        self._hooks = hooks
        self._environ: Optional[dict[str, Any]] = environ
        self._body = body
        self._lock = Lock()
        self._queue: Optional[list[bytes]] = None
        self._queued = 0
        self._output = Machine(Output.OPEN, _OUTPUT_EDGES)
        self._finish_called = False
        self._get_pending = False
        self._drain: Optional[list[Callable[[], Any]]] = None
        self._close: Optional[list[Callable[[Optional[BaseException]], Any]]] = None
        self._reason: Optional[BaseException] = None
        self._shutdown: Optional[list[Callable[[], Any]]] = None
        self._shutting_down = False
        #: Puts made in other threads, on their way to the reactor.
        self._pending = 0
        #: A put() of the reactor thread is writing, or drain callbacks are
        #: running: a transport resuming meanwhile runs none of them now.
        self._busy = False

    # -- helpers -----------------------------------------------------------

    def _in_reactor(self, f: Callable[..., Any], *args: Any) -> None:
        """
        Run C{f} now if this is the reactor thread, else hop there.
        """
        if get_ident() == threadable.ioThread:
            f(*args)
        else:
            self._hooks.reactor.callFromThread(f, *args)

    def _soon(self, f: Callable[..., Any], *args: Any) -> None:
        """
        Call an app callback later, from the reactor, never re-entrantly.
        """
        if get_ident() == threadable.ioThread:
            self._hooks.reactor.callLater(0, self._call_app, f, *args)
        else:
            self._hooks.reactor.callFromThread(self._call_app, f, *args)

    def _call_app(self, f: Callable[..., Any], *args: Any) -> None:
        try:
            f(*args)
        except Exception:
            self._hooks.crash(Failure())

    # -- IWakeSource -------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._queue and self._output.state is Output.OPEN

    # -- output --------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self._queued < HIGH_WATER and not self._hooks.paused and self._output.state is not Output.CLOSED

    @property
    def closed(self) -> bool:
        return self._output.state is Output.CLOSED

    def put(self, data: bytes) -> bool:
        if type(data) is not bytes:
            raise InvalidBody(f"put() takes bytes, not {type(data).__name__}")
        if self._finish_called:
            raise AlreadyFinished("put() after finish()")
        if get_ident() == threadable.ioThread:
            if data and self._output.state is Output.OPEN:
                self._put_here(data)
            # After the exchange ended the bytes were dropped: say so (False).
            return self.writable
        # Counted here, not when the reactor queues the bytes: a producer in
        # another thread must see its own puts at once, or it could put
        # without limit before the reactor catches up.
        with self._lock:
            queued = self._queued
            if self._output.state is not Output.CLOSED:
                self._queued = queued + len(data)
            if data:
                self._pending += 1
        if data:
            self._hooks.reactor.callFromThread(self._put, data)
        return (
            queued + len(data) < HIGH_WATER
            and not self._hooks.paused
            and self._output.state is not Output.CLOSED
        )

    def _put_here(self, data: bytes) -> None:
        """
        A put in the reactor thread: straight to the response when the
        engine sleeps on an empty queue (no reactor turn per chunk), else
        queued for the engine; behind puts of other threads still on their
        way, so it cannot overtake them.
        """
        if self._pending:
            with self._lock:
                self._queued += len(data)
                self._pending += 1
            self._hooks.reactor.callFromThread(self._put, data)
            return
        if not self._queue:
            busy, self._busy = self._busy, True
            try:
                if self._hooks.deliver(self, data):
                    return
            finally:
                self._busy = busy
        with self._lock:
            self._queued += len(data)
        self._enqueue(data)

    def _put(self, data: bytes) -> None:
        """
        A put from another thread reaches the reactor (in put order: the
        thread-call queue is first in, first out).
        """
        with self._lock:
            self._pending -= 1
            state = self._output.state
            if state is not Output.OPEN:
                if state is not Output.CLOSED:
                    self._queued -= len(data)
                return
            direct = not self._queue
        if direct and self._hooks.deliver(self, data):
            with self._lock:
                self._queued -= len(data)
            if self._drain:
                self.check_drain()
            return
        self._enqueue(data)

    def _enqueue(self, data: bytes) -> None:
        """
        Queue C{data} for the engine and wake it.
        """
        with self._lock:
            queue = self._queue
            if queue is None:
                self._queue = [data]
            else:
                queue.append(data)
        self._hooks.wake()

    def finish(self) -> None:
        if self._finish_called:
            raise AlreadyFinished("finish() called twice")
        self._finish_called = True
        if get_ident() == threadable.ioThread and not self._pending:
            self._finish()
            return
        # Through the reactor's thread-call queue: puts that other threads
        # made before this call wait in that queue, and must not be dropped
        # by an end applied first.
        self._hooks.reactor.callFromThread(self._finish)

    def _finish(self) -> None:
        if self._output.state is Output.OPEN:
            self._output.to(Output.FINISHED)
            self._hooks.wake()

    def __iter__(self) -> "Controller":
        return self

    def __next__(self) -> bytes:
        queue = self._queue
        if queue:
            with self._lock:
                data = queue[0] if len(queue) == 1 else b"".join(queue)
                queue.clear()
                # Bytes put from another thread may be counted, not queued yet.
                self._queued -= len(data)
            if self._drain:
                self._in_reactor(self._check_drain_soon)
            return data
        if self._output.state is Output.OPEN:
            return b""
        raise StopIteration

    def on_drain(self, callback: Callable[[], Any]) -> None:
        self._in_reactor(self._on_drain, callback)

    def _on_drain(self, callback: Callable[[], Any]) -> None:
        if self._output.state is Output.CLOSED:
            return
        if self._drain is None:
            self._drain = [callback]
        else:
            self._drain.append(callback)
        self._check_drain_soon()

    def check_drain(self) -> None:
        """
        Call the drain callbacks now if the controller is writable again:
        the transport resumed (the engine calls this), so the application
        refills it at once, as a pull producer would, not a reactor turn
        later.  Never inside the application's own C{put()}, nor inside
        another drain callback.
        """
        if self._drain and self.writable:
            if self._busy:
                self._check_drain_soon()
                return
            callbacks, self._drain = self._drain, None
            self._busy = True
            try:
                for callback in callbacks:
                    self._call_app(self._drained, callback)
            finally:
                self._busy = False

    def _check_drain_soon(self) -> None:
        """
        L{check_drain} for calls that the application may be inside of:
        the callbacks run from the reactor, later.
        """
        if self._drain and self.writable:
            callbacks, self._drain = self._drain, None
            for callback in callbacks:
                self._soon(self._drained, callback)

    def _drained(self, callback: Callable[[], Any]) -> None:
        # Scheduled while writable; the exchange may have ended since (the
        # client left): no callback runs after on_close.
        if self._output.state is not Output.CLOSED:
            callback()

    def fail(self, reason: Optional[Any] = None) -> None:
        """
        End the exchange with an error the application met asynchronously:
        a 500 if nothing was sent (the traceback goes to the log), else a cut
        connection.  C{reason} defaults to the exception being handled.
        """
        if isinstance(reason, Failure):
            failure = reason
        else:
            failure = Failure(reason) if reason is not None else Failure()
        self._in_reactor(self._hooks.crash, failure)

    # -- input ---------------------------------------------------------------

    def on_get(self, length: int, callback: Callable[[bytes], Any], errback: Optional[Callable[[BaseException], Any]] = None) -> None:
        if type(length) is not int or length < 1:
            raise ValueError(f"on_get() length must be a positive int, not {length!r}")
        if self._get_pending:
            raise GetPending("on_get() called again before its callback ran")
        environ = self._environ  # dropped when the exchange ends
        if environ is not None and environ.get("wsgi.input") is not self._body.file:
            raise InputReplaced("on_get() refused: middleware replaced wsgi.input")
        self._get_pending = True
        self._in_reactor(self._body.request, length, self._make_got(callback), self._make_lost(errback))

    def _make_got(self, callback: Callable[[bytes], Any]) -> Callable[[bytes], None]:
        def got(data: bytes) -> None:
            self._get_pending = False
            if self._output.state is not Output.CLOSED:
                self._call_app(callback, data)

        return got

    def _make_lost(self, errback: Optional[Callable[[BaseException], Any]]) -> Callable[[BaseException], None]:
        def lost(reason: BaseException) -> None:
            self._get_pending = False
            if errback is not None and self._output.state is not Output.CLOSED:
                self._call_app(errback, reason)

        return lost

    # -- server shutdown -----------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def on_shutdown(self, callback: Callable[[], Any]) -> None:
        self._in_reactor(self._on_shutdown, callback)

    def _on_shutdown(self, callback: Callable[[], Any]) -> None:
        if self._output.state is Output.CLOSED:
            return
        if self._shutting_down:
            self._soon(self._shutdown_callback, callback)
        else:
            if self._shutdown is None:
                self._shutdown = [callback]
            else:
                self._shutdown.append(callback)

    def server_shutting_down(self) -> None:
        """
        Called by the exchange, in the reactor, once: the server began a
        graceful shutdown.  Runs the C{on_shutdown} callbacks soon.
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        callbacks, self._shutdown = self._shutdown, None
        for callback in callbacks or ():
            self._soon(self._shutdown_callback, callback)

    def _shutdown_callback(self, callback: Callable[[], Any]) -> None:
        if self._output.state is not Output.CLOSED:
            callback()

    # -- the end ---------------------------------------------------------------

    def on_close(self, callback: Callable[[Optional[BaseException]], Any]) -> None:
        self._in_reactor(self._on_close, callback)

    def _on_close(self, callback: Callable[[Optional[BaseException]], Any]) -> None:
        if self._output.state is Output.CLOSED:
            self._soon(callback, self._reason)
        else:
            if self._close is None:
                self._close = [callback]
            else:
                self._close.append(callback)

    def exchange_ended(self, reason: Optional[BaseException]) -> None:
        """
        Called by the exchange, in the reactor, when it ends: C{reason} is
        L{None} after a delivered response, else why it was cut short.
        """
        if self._output.state is Output.CLOSED:
            return
        self._output.to(Output.CLOSED)
        self._reason = reason
        with self._lock:
            self._drop_queue()
        # The environ holds this exchange's controller factory: keeping it
        # would make a reference cycle.  A closed controller needs it no more.
        self._environ = None
        self._drain = None
        self._shutdown = None
        callbacks, self._close = self._close, None
        for callback in callbacks or ():
            try:
                callback(reason)
            except Exception:
                self._log.failure("Error in a controller on_close callback")

    def _drop_queue(self) -> None:
        # Emptied in place: a pull in another thread may hold the list.
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.clear()
        self._queued = 0

    def close(self) -> None:
        """
        PEP 3333 C{close()}: the server is done with this iterable.
        """
        with self._lock:
            self._drop_queue()


__all__ = ["Controller", "ControllerHooks", "Hooks", "HIGH_WATER", "BodyTruncated", "ClientDisconnected"]
