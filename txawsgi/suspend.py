"""
C{x-wsgiorg.suspend}: Manlio Perillo's suspend/resume extension.

C{resume = environ['x-wsgiorg.suspend'](timeout=None)} returns a callable;
the application then yields C{b''} and is not iterated again until
C{resume()} is called (from any thread, any number of times) or C{timeout}
seconds pass.  It is the engine's own sleep, so middleware that passes
C{b''} through does not break it.
"""

from __future__ import annotations

from enum import auto
from typing import Any, Callable, Optional

from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from txawsgi.errors import ExtensionMisuse
from txawsgi.interfaces import IWakeSource
from txawsgi.states import Machine, State, edges


class Suspension(State):
    """
    Whether the application is suspended.
    """

    RUNNING = auto()
    SUSPENDED = auto()


_EDGES = edges(
    Suspension,
    {Suspension.RUNNING: {Suspension.SUSPENDED}, Suspension.SUSPENDED: {Suspension.RUNNING}},
)


@implementer(IWakeSource)
class Suspender:
    """
    One request's C{x-wsgiorg.suspend} extension.
    """

    __slots__ = ("_reactor", "_wake", "_arm", "_machine", "_timer", "_generation", "_closed")

    def __init__(self, reactor: Any, wake: Callable[[], None], arm: Callable[[Any], None]) -> None:
        self._reactor = reactor
        self._wake = wake
        self._arm = arm
        self._machine = Machine(Suspension.RUNNING, _EDGES)
        self._timer: Any = None
        self._generation = 0
        self._closed = False

    @property
    def idle(self) -> bool:
        return self._machine.state is Suspension.SUSPENDED

    def suspend(self, timeout: Optional[float] = None) -> Callable[[], None]:
        """
        Suspend the application at its next C{b''}; return the resume
        callable.
        """
        if self._machine.state is Suspension.SUSPENDED:
            raise ExtensionMisuse("x-wsgiorg.suspend called again before the application yielded b''")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ValueError(f"timeout must be None or a non-negative number, not {timeout!r}")
        self._arm(self)
        self._machine.to(Suspension.SUSPENDED)
        self._generation += 1
        generation = self._generation
        if timeout is not None:
            if isInIOThread():
                self._start_timer(timeout, generation)
            else:
                # An application in a worker thread: the reactor's timers
                # are not thread-safe.
                self._reactor.callFromThread(self._start_timer, timeout, generation)

        def resume() -> None:
            """
            Resume the suspended application; safe from any thread, and
            idempotent.
            """
            if isInIOThread():
                self._resume(generation)
            else:
                self._reactor.callFromThread(self._resume, generation)

        return resume

    def _start_timer(self, timeout: float, generation: int) -> None:
        if self._closed or generation != self._generation or self._machine.state is not Suspension.SUSPENDED:
            return
        self._timer = self._reactor.callLater(timeout, self._resume, generation)

    def _resume(self, generation: int) -> None:
        # A resume callable belongs to one suspension: an old one is a no-op.
        if generation != self._generation or self._machine.state is not Suspension.SUSPENDED:
            return
        self._machine.to(Suspension.RUNNING)
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._wake()

    def close(self) -> None:
        """
        The exchange is over: no timer may outlive it.
        """
        self._closed = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
