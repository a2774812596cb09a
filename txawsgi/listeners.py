"""
Listening sockets shared by worker processes.

The supervisor binds every C{--listen} endpoint itself (so privileged ports,
port 0 and UNIX socket files are dealt with once), keeps the sockets open
without ever accepting on them, and hands them to each worker as inherited
file descriptors; each worker adopts them with
C{IReactorSocket.adoptStreamPort}.  All workers then accept from the same
kernel queue, so a worker that dies loses only the connections it had
accepted, never ones still waiting to be.

Supported endpoint types: C{tcp:}, C{tcp6:}, C{unix:}, C{ssl:} (each worker
wraps its accepted connections in TLS built from the same description) and
C{systemd:} (the socket systemd passed to the supervisor goes on to the
workers).
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import endpoints, tcp, unix
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

__all__ = [
    "HeldSocket",
    "InheritedEndpoint",
    "bind",
    "check_shareable",
    "family_name",
]

_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


def family_name(family: int) -> str:
    for name, value in _FAMILIES.items():
        if value == family:
            return name
    raise ValueError(f"unsupported address family {family!r}")


def _kind(endpoint: Any) -> Optional[str]:
    if isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        return "ssl"
    if isinstance(endpoint, (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint)):
        return "tcp"
    if isinstance(endpoint, endpoints.UNIXServerEndpoint):
        return "unix"
    if isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint):
        return "adopted"
    return None


def check_shareable(reactor: Any, description: str) -> None:
    """
    @raise ValueError: if the listening socket of C{description} cannot be
        handed to worker processes.
    """
    if _kind(endpoints.serverFromString(reactor, description)) is None:
        raise ValueError(
            f"{description!r} cannot be shared by worker processes "
            "(use tcp:, tcp6:, unix:, ssl: or systemd: endpoints)"
        )


class _Held(Factory):
    """
    The factory of a port held for workers; it never accepts.
    """

    noisy = False

    def logPrefix(self) -> str:
        return "txawsgi (for workers)"

    def buildProtocol(self, addr: Any) -> None:
        return None


@dataclass
class HeldSocket:
    """
    A listening socket the supervisor keeps for its workers.

    @ivar fd: its descriptor in the supervisor.
    @ivar family: C{socket.AF_INET}, C{AF_INET6} or C{AF_UNIX}.
    @ivar description: the C{--listen} endpoint it was made from.
    @ivar tls: whether workers wrap it in TLS (C{ssl:}).
    @ivar port: the Twisted port holding it, if the supervisor bound it.
    """

    fd: int
    family: int
    description: str
    tls: bool
    port: Optional[IListeningPort] = None

    def close(self) -> Deferred[None]:
        """
        Stop holding it (a UNIX socket file is removed).
        """
        if self.port is not None:
            port, self.port = self.port, None
            return _maybe(port.stopListening())
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        return succeed(None)


def _maybe(result: Any) -> Deferred[None]:
    return result if isinstance(result, Deferred) else succeed(None)


def bind(reactor: Any, description: str) -> HeldSocket:
    """
    Bind and listen on C{description} now, in this process, without
    accepting: the returned socket is for workers to accept on.

    @raise ValueError: for an endpoint type that cannot be shared.
    @raise twisted.internet.error.CannotListenError: if it cannot listen.
    """
    endpoint = endpoints.serverFromString(reactor, description)
    kind = _kind(endpoint)
    if kind is None:
        check_shareable(reactor, description)
    if kind == "adopted":
        # systemd already bound it: pass it on untouched.
        return HeldSocket(endpoint.fileno, endpoint.addressFamily, description, False)
    listening = endpoint.listen(_Held())
    result: list[Any] = []
    listening.addBoth(result.append)
    if not result:
        raise ValueError(f"{description!r} did not listen at once; it cannot be shared")
    port = result[0]
    if not IListeningPort.providedBy(port):
        port.raiseException()
    # Keep the socket open and listening, but never accept on it here.
    port.stopReading()
    return HeldSocket(port.fileno(), port.addressFamily, description, kind == "ssl", port)


#: Connections a worker accepts per wakeup: the workers woken together
#: take turns, so a burst of connections is shared out rather than taken
#: by the first to wake (Twisted accepts up to 100 at a time).
ACCEPTS_PER_WAKEUP = 1


class _Sharing:
    """
    A listening port that accepts L{ACCEPTS_PER_WAKEUP} connections at a
    time (Twisted's ports adjust C{numberAccepts} themselves: ignored).
    """

    @property
    def numberAccepts(self) -> int:
        return ACCEPTS_PER_WAKEUP

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass


class _SharedTCPPort(_Sharing, tcp.Port):
    """
    A TCP listening socket adopted from the supervisor.
    """


class _SharedUNIXPort(_Sharing, unix.Port):
    """
    A UNIX listening socket adopted from the supervisor, which owns its file:
    stopping it neither removes the file nor changes its mode.
    """

    def connectionLost(self, reason: Any) -> None:
        # unix.Port's would unlink the file: only the supervisor does.
        tcp.Port.connectionLost(self, reason)


def _tls_context(reactor: Any, description: str) -> Any:
    """
    The TLS context factory an C{ssl:} description builds.
    """
    endpoint = endpoints.serverFromString(reactor, description)
    context = getattr(endpoint, "_sslContextFactory", None)
    if context is None:  # pragma: no cover - a Twisted that renamed it
        raise ValueError(f"cannot build the TLS context of {description!r}")
    return context


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """
    Listen on a socket inherited from the supervisor (in a worker).
    """

    def __init__(self, reactor: Any, fd: int, family: int, description: str, tls: bool) -> None:
        self._reactor = reactor
        self.fd = fd
        self.family = family
        self.description = description
        self.tls = tls

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        try:
            if self.tls:
                factory = TLSMemoryBIOFactory(_tls_context(self._reactor, self.description), False, factory)
            os.set_blocking(self.fd, False)
            if self.family == socket.AF_UNIX:
                port = self._adopt_unix(factory)
            else:
                port = _SharedTCPPort._fromListeningDescriptor(self._reactor, self.fd, self.family, factory)
                port.startListening()
            os.close(self.fd)
        except BaseException:
            return fail()
        return succeed(port)

    def _adopt_unix(self, factory: Any) -> IListeningPort:
        port = _SharedUNIXPort._fromListeningDescriptor(self._reactor, self.fd, factory)
        path = port._bindPath
        if path and not path.startswith(b"\0"):
            # startListening sets the file's mode: keep the supervisor's.
            port.mode = stat.S_IMODE(os.stat(path).st_mode)
        port.startListening()
        return port

    def __repr__(self) -> str:
        return f"<InheritedEndpoint fd={self.fd} {self.description}>"
