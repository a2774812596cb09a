"""
Where application code runs: inline in the reactor thread, in a threadpool,
or in a greenlet of its own.

The engine and the exchange call the application (the callable, each step
of its iterable, C{close()}) through a runner, and blocking operations the
application performs (a C{wsgi.input} read, the C{write()} callable) wait
through the runner's L{waiter}: a worker thread blocks, a greenlet switches
back to the reactor, the reactor thread itself may not wait at all.  One
engine, three ways to run.

When the client leaves, the engine tells the runner (L{IRunner.interrupt}):
a greenlet still waiting then gets L{ClientDisconnected} from its wait, so
the application unwinds instead of staying parked on something that may
never fire.  The request timeout does the same with L{RequestTimedOut}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from txawsgi.errors import ClientDisconnected, WouldBlock


class IRunner(Interface):
    """
    Runs application code for an exchange.
    """

    inline = Attribute("Whether call() returns the value itself, not a Deferred.")
    multithread = Attribute("The environ's wsgi.multithread for this runner.")

    def call(f: Callable[..., Any], *args: Any, owner: Any = None) -> Any:
        """
        Run C{f(*args)}: an inline runner returns its value (or raises); the
        others return a L{Deferred}.

        @param owner: what the call is done for (the exchange's engine), so
            that L{interrupt} can find it; L{None}: never interrupted.
        """

    def interrupt(owner: Any, reason: Optional[BaseException] = None) -> None:
        """
        The client of C{owner}'s exchange left (or the exchange was ended
        from outside, e.g. by the request timeout): a wait in a call made
        for C{owner} that is still waiting once what the ending itself
        released has run (a truncated body's readers, a released C{write()})
        raises C{reason} (default: L{ClientDisconnected}), if the runner can
        interrupt it.
        """

    def wait(make: Callable[[], Optional[Deferred[Any]]]) -> Any:
        """
        From application code: block the application (not the reactor)
        until the L{Deferred} C{make()} returns (in the reactor thread)
        fires, and return its result.  C{make()} may return L{None}: nothing
        to wait for.

        @raise WouldBlock: where the application cannot be suspended.
        """

    def can_wait() -> bool:
        """
        Whether the code calling this may wait (it is a worker thread, or
        one of this runner's greenlets).
        """


@implementer(IRunner)
class ReactorRunner:
    """
    Run the application in the reactor thread.  It must never block: waits
    raise L{WouldBlock}.
    """

    inline = True
    multithread = False

    def call(self, f: Callable[..., Any], *args: Any, owner: Any = None) -> Any:
        return f(*args)

    def interrupt(self, owner: Any, reason: Optional[BaseException] = None) -> None:
        """
        Nothing waits in the reactor thread.
        """

    def wait(self, make: Callable[[], Optional[Deferred[Any]]]) -> Any:
        waiting = make()
        if waiting is None:
            return None
        if waiting.called:
            return _unwrap(waiting)
        raise WouldBlock("this would block the reactor; use the controller, a threadpool or greenlets")

    def can_wait(self) -> bool:
        return False


@implementer(IRunner)
class ThreadRunner:
    """
    Run the application in a threadpool; waits block the worker thread.
    """

    inline = False
    multithread = True

    def __init__(self, reactor: Any, pool: ThreadPool) -> None:
        self._reactor = reactor
        self.pool = pool

    def call(self, f: Callable[..., Any], *args: Any, owner: Any = None) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self.pool, f, *args)

    def interrupt(self, owner: Any, reason: Optional[BaseException] = None) -> None:
        """
        A blocked worker cannot be interrupted: the body and the engine
        release what waits on them (a C{wsgi.input} read raises the reason
        the exchange ended for), a wait on another L{Deferred} lasts.
        """

    def wait(self, make: Callable[[], Optional[Deferred[Any]]]) -> Any:
        if isInIOThread():
            return _REACTOR.wait(make)
        return blockingCallFromThread(self._reactor, make)

    def can_wait(self) -> bool:
        return not isInIOThread()


def _unwrap(done: Deferred[Any]) -> Any:
    box: list[Any] = []
    done.addBoth(box.append)
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


@implementer(IRunner)
class GreenletRunner:
    """
    Run each call into the application in a greenlet on the reactor thread;
    a wait switches back to the reactor and resumes the greenlet when the
    awaited L{Deferred} fires.  So an unmodified application that reads its
    upload with C{wsgi.input.read()} and writes with C{write()} suspends only
    itself.  Needs the C{greenlet} package (C{pip install txawsgi[greenlet]}).

    A greenlet whose client left is not left waiting: L{interrupt} resumes
    it with L{ClientDisconnected}, and what it waited on no longer matters.
    """

    inline = False
    multithread = False

    def __init__(self, reactor: Any = None) -> None:
        """
        @param reactor: schedules interruptions (default: the global one).
        """
        from greenlet import greenlet, getcurrent

        self._greenlet = greenlet
        self._getcurrent = getcurrent
        self._reactor = reactor
        # Live greenlets and their owners; each owner's latest call (an
        # exchange makes its calls one after the other).
        self._ours: dict[Any, Any] = {}
        self._owned: dict[Any, Any] = {}
        # Each waiting greenlet: what it waits on, and its call's result.
        self._parked: dict[Any, tuple[Deferred[Any], Deferred[Any]]] = {}

    @property
    def parked(self) -> int:
        """
        How many greenlets are waiting.
        """
        return len(self._parked)

    def call(self, f: Callable[..., Any], *args: Any, owner: Any = None) -> Deferred[Any]:
        result: Deferred[Any] = Deferred()

        def body() -> tuple[bool, Any]:
            try:
                return True, f(*args)
            except BaseException:
                return False, Failure()

        child = self._greenlet(body)
        child.txawsgi_runner = self
        self._ours[child] = owner
        if owner is not None:
            self._owned[owner] = child
        self._resume(child, result, ())
        return result

    def _resume(self, child: Any, result: Deferred[Any], args: tuple[Any, ...]) -> None:
        # Switch back, on its next wait or its end, to whoever resumes it
        # now: usually the reactor's greenlet, but a Deferred fired by code
        # in another request's greenlet resumes this one from there.
        child.parent = self._getcurrent()
        out = child.switch(*args)
        if child.dead:
            owner = self._ours.pop(child)
            if owner is not None and self._owned.get(owner) is child:
                del self._owned[owner]
            ok, value = out
            if ok:
                result.callback(value)
            else:
                result.errback(value)
            return
        waiting: Deferred[Any] = out
        self._parked[child] = (waiting, result)
        waiting.addBoth(self._fired, child, waiting)

    def _fired(self, outcome: Any, child: Any, waiting: Deferred[Any]) -> None:
        """
        What C{child} waits on fired: resume it, unless it was interrupted
        meanwhile (it waits on something else now, or has ended).
        """
        parked = self._parked.get(child)
        if parked is not None and parked[0] is waiting:
            del self._parked[child]
            self._resume(child, parked[1], (outcome,))

    def interrupt(self, owner: Any, reason: Optional[BaseException] = None) -> None:
        """
        Two reactor turns from now, if C{owner}'s latest call still waits,
        resume it with C{reason} (default: L{ClientDisconnected}).  Not at
        once: never inside the engine's or the connection's code, and wakes
        the ending has already scheduled (a truncated body's readers get the
        more precise L{BodyTruncated}) go first.
        """
        if owner not in self._owned:
            return  # nothing runs for it (and close() calls have no owner)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        reactor.callLater(0, reactor.callLater, 0, self._interrupt_now, owner, reason)

    def _interrupt_now(self, owner: Any, reason: Optional[BaseException]) -> None:
        child = self._owned.get(owner)
        parked = None if child is None else self._parked.pop(child, None)
        if parked is not None:
            if reason is None:
                reason = ClientDisconnected("the client went away")
            self._resume(child, parked[1], (Failure(reason),))

    def wait(self, make: Callable[[], Optional[Deferred[Any]]]) -> Any:
        current = self._getcurrent()
        if current not in self._ours:
            return _REACTOR.wait(make)
        waiting = make()
        if waiting is None:
            return None
        if waiting.called:
            return _unwrap(waiting)
        outcome = current.parent.switch(waiting)
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome

    def can_wait(self) -> bool:
        return self._getcurrent() in self._ours


_REACTOR = ReactorRunner()


def wait(deferred: Deferred[Any]) -> Any:
    """
    In greenlet mode: suspend the calling request (only it) until
    C{deferred} fires, and return its result or raise its failure.  Lets
    ordinary-looking application code use any Twisted API::

        from txawsgi.runners import wait
        page = wait(treq.get("http://backend/").addCallback(treq.content))

    @raise WouldBlock: outside a request's greenlet (e.g. in the reactor
        thread proper, where waiting would block the server).
    """
    try:
        from greenlet import getcurrent
    except ImportError:
        return _REACTOR.wait(lambda: deferred)
    runner = getattr(getcurrent(), "txawsgi_runner", None)
    if runner is None:
        return _REACTOR.wait(lambda: deferred)
    return runner.wait(lambda: deferred)


__all__ = ["IRunner", "ReactorRunner", "ThreadRunner", "GreenletRunner", "wait"]
