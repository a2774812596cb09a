"""
Where application code runs: inline in the reactor thread, in a threadpool,
or in a greenlet of its own.

The engine and the exchange call the application (the callable, each step
of its iterable, C{close()}) through a runner, and blocking operations the
application performs (a C{wsgi.input} read, the C{write()} callable) wait
through the runner's L{waiter}: a worker thread blocks, a greenlet switches
back to the reactor, the reactor thread itself may not wait at all.  One
engine, three ways to run.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from txawsgi.errors import WouldBlock


class IRunner(Interface):
    """
    Runs application code for an exchange.
    """

    inline = Attribute("Whether call() returns the value itself, not a Deferred.")
    multithread = Attribute("The environ's wsgi.multithread for this runner.")

    def call(f: Callable[..., Any], *args: Any) -> Any:
        """
        Run C{f(*args)}: an inline runner returns its value (or raises); the
        others return a L{Deferred}.
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

    def call(self, f: Callable[..., Any], *args: Any) -> Any:
        return f(*args)

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

    def call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self.pool, f, *args)

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
    """

    inline = False
    multithread = False

    def __init__(self) -> None:
        from greenlet import greenlet, getcurrent

        self._greenlet = greenlet
        self._getcurrent = getcurrent
        self._ours: "set[Any]" = set()

    def call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        result: Deferred[Any] = Deferred()

        def body() -> tuple[bool, Any]:
            try:
                return True, f(*args)
            except BaseException:
                return False, Failure()

        child = self._greenlet(body)
        child.txawsgi_runner = self
        self._ours.add(child)
        self._resume(child, result, ())
        return result

    def _resume(self, child: Any, result: Deferred[Any], args: tuple[Any, ...]) -> None:
        # Switch back, on its next wait or its end, to whoever resumes it
        # now: usually the reactor's greenlet, but a Deferred fired by code
        # in another request's greenlet resumes this one from there.
        child.parent = self._getcurrent()
        out = child.switch(*args)
        if child.dead:
            self._ours.discard(child)
            ok, value = out
            if ok:
                result.callback(value)
            else:
                result.errback(value)
            return
        waiting: Deferred[Any] = out
        waiting.addBoth(lambda outcome: self._resume(child, result, (outcome,)))

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
