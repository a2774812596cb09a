"""
The iteration engine: drives an application's iterable into a response.

One engine per exchange.  It is a task for a L{twisted.internet.task.Cooperator},
so an app that produces many chunks shares the reactor fairly; a push
producer for the transport, so it stops pulling chunks while the client is
slow; and the one suspension mechanism every asynchronous extension reuses:
when the app yields C{b''} the engine sleeps until L{Engine.wake} is called
(out-of-band, so it works through middleware that wraps the iterable), or,
if no wake source is waiting, retries with an exponentially growing delay.

Each call to C{__next__} is one step: pull one chunk and handle it.  A step
returns L{None} (go on), a L{Deferred} (the cooperator waits for it), or
raises L{StopIteration} (the exchange is over).
"""

from __future__ import annotations

from enum import auto
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txawsgi.errors import (
    BodyTooLarge,
    BodyTruncated,
    ClientDisconnected,
    ExtensionMisuse,
    InvalidBody,
    RequestTimedOut,
)
from txawsgi.response import Response
from txawsgi.runners import IRunner, ReactorRunner
from txawsgi.states import Machine, State, edges

#: Steps run at once in C{start()}, before handing over to the cooperator:
#: a short response is written within the request's own reactor turn.
EAGER_STEPS = 8

#: First and longest retry delay (seconds) for an iterable that yields
#: C{b''} with no wake source waiting.
BACKOFF_INITIAL = 0.001
BACKOFF_MAX = 1.0

_END = object()

#: Iterables whose whole body is already in memory.
_SEQUENCES = (list, tuple)

#: What the server raises into an application that waits when its exchange
#: ends under it (the client left, the body was cut, the request timed
#: out): an application that lets one escape is unwinding, not failing.
_UNWINDING = (ClientDisconnected, BodyTruncated, RequestTimedOut)


class Run(State):
    """
    Where an engine is in iterating the application's iterable.
    """

    #: The application callable is running; there is no iterable yet.
    CALLING = auto()
    #: Ready to pull the next chunk.
    RUNNING = auto()
    #: A call to the iterable's C{__next__} is in progress (in this thread or
    #: in a worker).
    PULLING = auto()
    #: The app yielded C{b''}; asleep until woken or the backoff timer fires.
    WAITING = auto()
    #: The client went away, or a callback crashed, while a pull was in
    #: progress; ending waits for that pull to return.
    CANCELLING = auto()
    #: The iterable is exhausted and the response finished.
    DONE = auto()
    #: The application raised; the response failed.
    FAILED = auto()
    #: The client went away or the producer was stopped.
    ABORTED = auto()


_RUN_EDGES = edges(
    Run,
    {
        Run.CALLING: {Run.RUNNING, Run.FAILED, Run.ABORTED},
        Run.RUNNING: {Run.PULLING, Run.DONE, Run.FAILED, Run.ABORTED},
        Run.PULLING: {Run.RUNNING, Run.WAITING, Run.DONE, Run.FAILED, Run.CANCELLING},
        Run.WAITING: {Run.RUNNING, Run.FAILED, Run.ABORTED},
        Run.CANCELLING: {Run.FAILED, Run.ABORTED},
        Run.DONE: set(),
        Run.FAILED: set(),
        Run.ABORTED: set(),
    },
)

FINAL = frozenset({Run.DONE, Run.FAILED, Run.ABORTED})


class Flow(State):
    """
    Whether the transport is accepting data (push-producer state).
    """

    FLOWING = auto()
    PAUSED = auto()


_FLOW_EDGES = edges(
    Flow,
    {Flow.FLOWING: {Flow.PAUSED}, Flow.PAUSED: {Flow.FLOWING}},
)

#: The states as module names, for the per-request paths: on Python 3.11
#: each C{Run.X} goes through C{EnumType}'s C{__getattr__} hook (a
#: method-wrapper call, ten times the cost of a global).
_CALLING, _RUNNING, _PULLING, _WAITING = Run.CALLING, Run.RUNNING, Run.PULLING, Run.WAITING
_CANCELLING, _DONE, _FAILED, _ABORTED = Run.CANCELLING, Run.DONE, Run.FAILED, Run.ABORTED
_FLOWING, _PAUSED = Flow.FLOWING, Flow.PAUSED


@implementer(IPushProducer)
class Engine:
    """
    Iterate one application iterable into one L{Response}.

    @ivar sources: wake sources (L{IWakeSource}) of this exchange; while any
        is idle, an empty chunk puts the engine to sleep until L{wake}.
    @ivar resumed: called (no arguments) when the transport resumes.
    """

    _log = Logger()

    __slots__ = (
        "_reactor",
        "_cooperator",
        "_runner",
        "_armed",
        "_iterable",
        "_next",
        "_response",
        "_ended",
        "_run",
        "_flow",
        "_woken",
        "_delay",
        "_timer",
        "_sleeping",
        "_unpaused",
        "_first",
        "_parked",
        "_cancel",
        "_waiting_on",
        "sources",
        "resumed",
    )

    def __init__(
        self,
        reactor: IReactorTime,
        cooperator: Cooperator,
        response: Response,
        ended: Optional[Callable[[Run], None]],
        runner: IRunner = ReactorRunner(),
    ) -> None:
        """
        @param ended: called once with the final L{Run} state, after the
            response is finished or failed and before the iterable is closed
            (then forgotten, with the wake sources: an ended engine keeps no
            reference back to its exchange).
        @param runner: where the iterable's C{__next__} and C{close} run:
            inline in the reactor thread (the default), in a threadpool, or
            in greenlets.
        """
        self._reactor = reactor
        self._cooperator = cooperator
        self._runner = runner
        self._armed: Any = None
        self._iterable: Iterable[bytes] = ()
        self._next: Optional[Callable[[], Any]] = None
        self._response = response
        self._ended = ended
        self._run = Machine(_CALLING, _RUN_EDGES)
        self._flow = Machine(_FLOWING, _FLOW_EDGES)
        self._woken = False
        self._delay = BACKOFF_INITIAL
        self._timer: Any = None
        self._sleeping: Optional[Deferred[None]] = None
        self._unpaused: Optional[Deferred[None]] = None
        self._first: Optional[Deferred[Any]] = None
        self._parked = False
        self._cancel: Optional[Failure] = None
        self._waiting_on: Any = None
        self.sources: list[Any] = []
        self.resumed: Optional[Callable[[], None]] = None

    @property
    def state(self) -> Run:
        return self._run.state

    @property
    def reactor(self) -> IReactorTime:
        """
        The reactor this engine runs in (for L{ControllerHooks}).
        """
        return self._reactor

    @property
    def paused(self) -> bool:
        """
        Whether the transport has asked us to stop producing.
        """
        return self._flow.state is _PAUSED

    # -- driving ---------------------------------------------------------

    def start(self, iterable: Iterable[bytes]) -> None:
        """
        The application returned C{iterable}: iterate it, a few steps now,
        the rest under the cooperator.  If the exchange already ended (the
        client left, or a controller callback failed, while the application
        callable ran in a worker), just close it.
        """
        self._iterable = iterable
        if self._run.state in FINAL:
            self._close()
            return
        self._run.to(_RUNNING)
        if self._runner.inline and iterable.__class__ in _SEQUENCES:
            self._write_all(iterable)  # type: ignore[arg-type]
            return
        try:
            self._next = iter(self._iterable).__next__
        except Exception:
            self._fail(Failure())
            return
        waiting: Optional[Deferred[Any]] = None
        for _ in range(EAGER_STEPS):
            try:
                waiting = self.__next__()
            except StopIteration:
                return
            if waiting is not None:
                break
        if waiting is not None and waiting is self._sleeping:
            # Asleep already (a long-poll): parked until woken
            # (L{_resume_sleeper}), with no cooperator task, no Deferred
            # callbacks and no producer registration (Twisted adds two
            # attributes to the request for it) while it is held.
            self._sleeping = None
            self._parked = True
            return
        # Outlived the eager steps: follow the transport's pace from now on.
        self._response.attach(self)
        self._first = waiting
        self._cooperator.cooperate(self)

    def _write_all(self, chunks: "list[bytes] | tuple[bytes, ...]") -> None:
        """
        The application returned a list or tuple: its body is already in
        memory, so write it in one go.  Empty strings in it mean nothing
        here (no one will wake the engine), so they are skipped.
        """
        response = self._response
        try:
            for chunk in chunks:
                if chunk.__class__ is not bytes:
                    if not isinstance(chunk, bytes):
                        raise InvalidBody(
                            f"application iterable yielded {type(chunk).__name__}, not bytes: {chunk!r:.80}"
                        )
                    chunk = bytes(chunk)
                if chunk:
                    response.write(chunk)
                    if response.overflowed:
                        break
        except Exception:
            self._fail(Failure())
            return
        self._complete()

    def __iter__(self) -> "Engine":
        return self

    def __next__(self) -> Optional[Deferred[Any]]:
        first = self._first
        if first is not None:
            self._first = None
            return first
        state = self._run.state
        if state is not _RUNNING:
            # WAITING cannot be seen here: the cooperator waits for the
            # Deferred that ends it.  Anything else is final.
            raise StopIteration
        if self._flow.state is _PAUSED:
            if self._unpaused is None:
                self._unpaused = Deferred()
            return self._unpaused
        self._run.to(_PULLING)
        if not self._runner.inline:
            pulled = self._runner.call(self._pull, owner=self)
            pulled.addCallbacks(self._handle, self._handle_failure)
            return pulled
        try:
            chunk = self._pull()
        except Exception:
            return self._handle_failure(Failure())
        return self._handle(chunk)

    def _pull(self) -> Any:
        try:
            return self._next()  # type: ignore[misc]
        except StopIteration:
            return _END

    def _handle(self, chunk: Any) -> Optional[Deferred[None]]:
        """
        Act on what one pull produced.  Runs in the reactor thread.
        """
        run = self._run
        if run.state is _CANCELLING:
            self._end_cancelled()
            return None
        try:
            if chunk.__class__ is bytes:
                if chunk:
                    if self._armed is not None:
                        raise ExtensionMisuse(
                            f"{type(self._armed).__name__}: the application must yield b'' "
                            f"right after suspending, not {chunk!r:.40}"
                        )
                    run.to(_RUNNING)
                    self._delay = BACKOFF_INITIAL
                    response = self._response
                    response.write(chunk)
                    if response.overflowed:
                        self._complete()
                    return None
                return self._sleep()
            if chunk is _END:
                self._complete()
                return None
            if isinstance(chunk, bytes):
                run.to(_RUNNING)
                self._response.write(bytes(chunk))
                return None
            raise InvalidBody(
                f"application iterable yielded {type(chunk).__name__}, not bytes: {chunk!r:.80}"
            )
        except Exception:
            return self._handle_failure(Failure())

    def _handle_failure(self, reason: Failure) -> None:
        if self._run.state is _CANCELLING:
            if not self._unwound(reason):
                self._log.failure("Application error after the exchange was cancelled", reason)
            self._end_cancelled()
            return None
        self._fail(reason)
        return None

    # -- sleeping and waking -----------------------------------------------

    def _sleep(self) -> Optional[Deferred[None]]:
        """
        The app yielded C{b''}: go on at once if woken meanwhile, sleep until
        woken if a wake source is idle, else back off.
        """
        run = self._run
        armed, self._armed = self._armed, None
        if armed is not None:
            # The app suspended on one source: only that source resumes it,
            # and a wake that came before the suspension does not count.
            self._woken = False
            if not armed.idle:
                run.to(_RUNNING)
                return None
            run.to(_WAITING)
            self._waiting_on = armed
            sleeping = self._sleeping = Deferred()
            return sleeping
        if self._woken:
            self._woken = False
            run.to(_RUNNING)
            return None
        run.to(_WAITING)
        for source in self.sources:
            if source.idle:
                break
        else:
            delay = self._delay
            self._delay = min(delay * 2, BACKOFF_MAX)
            self._timer = self._reactor.callLater(delay, self.wake)
        sleeping = self._sleeping = Deferred()
        return sleeping

    def arm(self, source: Any) -> None:
        """
        An extension suspended the application on C{source}: its next chunk
        must be C{b''}, and only C{source} (through L{wake}) resumes it.
        """
        if self._run.state in FINAL:
            return  # nothing will iterate again: keep no reference
        self._armed = source
        if source not in self.sources:
            self.sources.append(source)

    def wake(self) -> None:
        """
        Resume iteration out-of-band: a wake source has something for the
        application.  Cheap and idempotent; a wake that arrives while the
        engine is busy makes its next empty chunk not sleep.
        """
        state = self._run.state
        if state is _WAITING:
            waiting_on = self._waiting_on
            if waiting_on is not None and waiting_on.idle:
                # Suspended on one source, which has not fired: another
                # source's wake (a controller put) does not resume it.
                return
            self._run.to(_RUNNING)
            self._resume_sleeper()
        elif state is _RUNNING or state is _PULLING:
            self._woken = True

    def deliver(self, source: Any, data: bytes) -> bool:
        """
        Write C{data}, which the wake source C{source} has for the response,
        now: what waking the engine to pull it would do, minus the reactor
        turns.  Only when that is exactly the same: C{source} is the iterable
        itself (no middleware to see the chunk), the engine sleeps waiting
        for it, the transport accepts data and the response takes the bytes
        whole.  Reactor thread only.

        @return: whether C{data} was taken; if not, queue it and L{wake}.
        """
        if self._parked:
            # About to write: follow the transport's pace (see start()).
            self._response.attach(self)
        if (
            self._run.state is not _WAITING
            or self._iterable is not source
            or self._waiting_on is not None
            or self._flow.state is _PAUSED
            or not self._response.accepts(len(data))
        ):
            return False
        try:
            self._response.write(data)
        except Exception:
            # Not expected (accepts() said yes); end as the engine would,
            # but not inside the caller (the application's put()).
            self._reactor.callLater(0, self.crash, Failure())
        return True

    def _resume_sleeper(self) -> None:
        self._waiting_on = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        sleeping, self._sleeping = self._sleeping, None
        if sleeping is not None:
            sleeping.callback(None)
        elif self._parked:
            self._parked = False
            self._response.attach(self)
            self._cooperator.cooperate(self)

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        if self._flow.state is _FLOWING:
            self._flow.to(_PAUSED)

    def resumeProducing(self) -> None:
        if self._flow.state is _PAUSED:
            self._flow.to(_FLOWING)
            unpaused, self._unpaused = self._unpaused, None
            if unpaused is not None:
                unpaused.callback(None)
            if self.resumed is not None:
                self.resumed()

    def stopProducing(self) -> None:
        self.abort()

    def drained(self) -> Optional[Deferred[None]]:
        """
        L{None} if the transport is accepting data, else a L{Deferred} that
        fires when it resumes (for blocking writers in worker threads).
        """
        state = self._run.state
        if self._flow.state is _FLOWING or state in FINAL or state is _CANCELLING:
            return None
        if self._unpaused is None:
            self._unpaused = Deferred()
        drained: Deferred[None] = Deferred()
        self._unpaused.addCallback(lambda ignored: drained.callback(None))
        return drained

    # -- endings ---------------------------------------------------------

    def abort(self) -> None:
        """
        The client went away: stop iterating and close the iterable (once
        any pull in progress has returned).
        """
        state = self._run.state
        if state in FINAL or state is _CANCELLING:
            return
        # A greenlet still waiting (in the call or a pull) gets ClientDisconnected.
        self._runner.interrupt(self)
        if state is _PULLING:
            self._run.to(_CANCELLING)
            self._release_writer()
            return
        self._abort_now()

    def crash(self, reason: Failure) -> None:
        """
        Something the application runs outside its iterable failed (the
        application callable itself, or one of its controller callbacks):
        fail the response as if the iterable had raised.
        """
        state = self._run.state
        if state in FINAL or state is _CANCELLING:
            if not self._unwound(reason):
                self._log.failure("Application error after the exchange ended", reason)
            return
        if state is _PULLING:
            self._cancel = reason
            self._run.to(_CANCELLING)
            self._release_writer()
            return
        self._fail(reason)

    def cancel(self, reason: Failure) -> None:
        """
        End the exchange from outside (the request timeout): fail the
        response as L{crash} does, and resume a greenlet still waiting (in
        the call or a pull) with C{reason}'s exception, so it unwinds.
        """
        state = self._run.state
        if state in FINAL or state is _CANCELLING:
            return
        self._runner.interrupt(self, reason.value)
        self.crash(reason)

    def _unwound(self, reason: Failure) -> bool:
        """
        The application let an exception escape after its exchange ended:
        if it is one the server raised into it to end a wait (the client
        left, the request timed out), log it quietly, without a traceback:
        the application is unwinding, not failing.

        @return: whether C{reason} was such an exception (and logged).
        """
        if reason.check(*_UNWINDING) is None:
            return False
        if reason.check(RequestTimedOut) is not None:
            self._log.info("Application woken by the request timeout: {reason}", reason=reason.value)
        elif reason.check(BodyTooLarge) is not None:
            self._log.info("Application unwound after its request body was refused: {reason}", reason=reason.value)
        else:
            self._log.info("Client left while the application waited: {reason}", reason=reason.value)
        return True

    def _end_cancelled(self) -> None:
        reason, self._cancel = self._cancel, None
        if reason is None:
            self._abort_now()
        else:
            self._fail(reason)

    def _abort_now(self) -> None:
        self._run.to(_ABORTED)
        self._response.abort()
        self._end(_ABORTED)

    def _complete(self) -> None:
        try:
            self._response.finish()
        except Exception:
            self._fail(Failure())
            return
        self._run.to(_DONE)
        self._end(_DONE)

    def _fail(self, reason: Failure) -> None:
        self._run.to(_FAILED)
        self._response.fail(reason)
        self._end(_FAILED)

    def _end(self, final: Run) -> None:
        self._release()
        ended, self._ended = self._ended, None
        if ended is not None:
            ended(final)
        self._close()

    def _release(self) -> None:
        """
        Wake whatever the cooperator waits on, so the task ends (a parked
        engine has no task), and forget the wake sources: they hold this
        engine (to wake it), and nothing wakes an ended one.
        """
        self._parked = False
        # (Usually nothing waits: skip the calls that would find so.)
        if self._sleeping is not None or self._timer is not None or self._waiting_on is not None:
            self._resume_sleeper()
        if self._unpaused is not None:
            self._release_writer()
        self._armed = None
        self.sources.clear()
        self.resumed = None

    def _release_writer(self) -> None:
        """
        Release a C{write()} blocked on L{drained} (a worker thread, a
        greenlet): the exchange is ending, so the pull it blocks must
        return for the ending to complete.
        """
        unpaused, self._unpaused = self._unpaused, None
        if unpaused is not None:
            unpaused.callback(None)

    def _close(self) -> None:
        """
        Call the iterable's C{close()} (PEP 3333), in the worker pool if the
        app runs there; an error in it is logged, never raised.
        """
        close = getattr(self._iterable, "close", None)
        self._iterable = ()
        self._next = None
        if close is None:
            return
        if not self._runner.inline:
            closing = self._runner.call(close)
            closing.addErrback(lambda f: self._log.failure("Error in the application iterable's close()", f))
            return
        try:
            close()
        except Exception:
            self._log.failure("Error in the application iterable's close()")
