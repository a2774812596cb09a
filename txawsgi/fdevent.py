"""
C{x-wsgiorg.fdevent}: suspend an application until a file descriptor is
ready (Christopher Stawarz's AWSGI proposal, as specified on wsgi.org).

An application calls C{environ['x-wsgiorg.fdevent.readable'](fd, timeout)}
(or C{.writable}), then yields C{b''}; it is resumed when C{fd} is ready,
errors or hangs up, or when C{timeout} seconds pass, and then
C{environ['x-wsgiorg.fdevent.timeout']} tells which.  The watch is a reactor
reader or writer, not a select loop, and the suspension is the engine's:
the app is woken out-of-band, so middleware that passes C{b''} through works.

Eby's objection that the server cannot know which environ the application
holds is answered by making the timeout flag one shared object whose truth
changes: a copy of the environ made by middleware holds the same flag.
"""

from __future__ import annotations

from enum import auto
from typing import Any, Optional, Union

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from txawsgi.errors import ExtensionMisuse
from txawsgi.interfaces import IWakeSource
from txawsgi.states import Machine, State, edges

FileDescriptor = Union[int, Any]


class TimeoutFlag:
    """
    C{environ['x-wsgiorg.fdevent.timeout']}: true after a resume caused by
    the timeout, false after one caused by the descriptor.
    """

    __slots__ = ("timed_out",)

    def __init__(self) -> None:
        self.timed_out = False

    def __bool__(self) -> bool:
        return self.timed_out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, bool):
            return self.timed_out is other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.timed_out)

    def __repr__(self) -> str:
        return repr(self.timed_out)


class Watch(State):
    """
    The state of a request's descriptor watch.
    """

    #: Nothing is watched.
    NONE = auto()
    #: A descriptor is watched; the application must yield C{b''} next.
    WATCHING = auto()


_WATCH_EDGES = edges(Watch, {Watch.NONE: {Watch.WATCHING}, Watch.WATCHING: {Watch.NONE}})


def _fileno(fd: FileDescriptor) -> int:
    if isinstance(fd, int):
        number = fd
    else:
        fileno = getattr(fd, "fileno", None)
        if fileno is None:
            raise TypeError(f"fdevent takes an int or an object with fileno(), not {type(fd).__name__}")
        number = fileno()
    if not isinstance(number, int) or number < 0:
        raise ValueError(f"not a file descriptor: {number!r}")
    return number


@implementer(IReadDescriptor, IWriteDescriptor)
class _Descriptor:
    """
    The reactor's view of the application's descriptor: ready, lost or
    errored all resume the application.
    """

    __slots__ = ("_number", "_events")

    def __init__(self, number: int, events: "FdEvents") -> None:
        self._number = number
        self._events = events

    def fileno(self) -> int:
        return self._number

    def logPrefix(self) -> str:
        return "txawsgi.fdevent"

    def doRead(self) -> None:
        self._events.ready(timed_out=False)

    def doWrite(self) -> None:
        self._events.ready(timed_out=False)

    def connectionLost(self, reason: Failure) -> None:
        self._events.ready(timed_out=False)


@implementer(IWakeSource)
class FdEvents:
    """
    One request's C{x-wsgiorg.fdevent} extension.

    @param arm: tells the engine the application must yield C{b''} next
        (C{arm(source)}; a non-empty chunk then fails the request).
    """

    __slots__ = ("_reactor", "_wake", "_arm", "_machine", "_descriptor", "_writing", "_timer", "flag")

    def __init__(self, reactor: Any, wake: Any, arm: Any, flag: Optional[TimeoutFlag] = None) -> None:
        self._reactor = reactor
        self._wake = wake
        self._arm = arm
        self._machine = Machine(Watch.NONE, _WATCH_EDGES)
        self._descriptor: Optional[_Descriptor] = None
        self._writing = False
        self._timer: Any = None
        self.flag = flag if flag is not None else TimeoutFlag()

    @property
    def idle(self) -> bool:
        return self._machine.state is Watch.WATCHING

    def readable(self, fd: FileDescriptor, timeout: Optional[float] = None) -> str:
        """
        Resume the application when C{fd} is readable (or C{timeout} passes).
        Yield C{b''} right after calling this.
        """
        return self._watch(fd, timeout, writing=False)

    def writable(self, fd: FileDescriptor, timeout: Optional[float] = None) -> str:
        """
        Resume the application when C{fd} is writable (or C{timeout} passes).
        Yield C{b''} right after calling this.
        """
        return self._watch(fd, timeout, writing=True)

    def _watch(self, fd: FileDescriptor, timeout: Optional[float], writing: bool) -> str:
        if self._machine.state is Watch.WATCHING:
            raise ExtensionMisuse("x-wsgiorg.fdevent called again before the application yielded b''")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ValueError(f"timeout must be None or a non-negative number, not {timeout!r}")
        descriptor = _Descriptor(_fileno(fd), self)
        # Register first: a descriptor the reactor refuses (closed, a
        # regular file) raises here and leaves nothing armed or watched.
        if writing:
            self._reactor.addWriter(descriptor)
        else:
            self._reactor.addReader(descriptor)
        self._arm(self)
        self._machine.to(Watch.WATCHING)
        self._descriptor = descriptor
        self._writing = writing
        self.flag.timed_out = False
        if timeout is not None:
            self._timer = self._reactor.callLater(timeout, self.ready, True)
        return ""

    def ready(self, timed_out: bool) -> None:
        """
        The descriptor is ready (or lost), or the timeout passed: stop
        watching and resume the application.
        """
        if self._machine.state is not Watch.WATCHING:
            return
        self._unwatch()
        self.flag.timed_out = timed_out
        self._wake()

    def _unwatch(self) -> None:
        self._machine.to(Watch.NONE)
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            if self._writing:
                self._reactor.removeWriter(descriptor)
            else:
                self._reactor.removeReader(descriptor)
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def close(self) -> None:
        """
        The exchange is over: stop watching.
        """
        if self._machine.state is Watch.WATCHING:
            self._unwatch()
