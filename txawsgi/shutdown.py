"""
Graceful shutdown: stop accepting, let in-flight requests finish for a
grace period, then close what is left.

The steps, run by L{ServingService.stopService} (so C{twistd}/C{twist} run
them on SIGTERM and SIGINT)::

    SERVING --stop--> LISTENERS_STOPPING   the listening ports close
            --------> DRAINING             idle connections close, busy ones
                                           close after their response; apps
                                           hear of it (ctrl.on_shutdown)
            --------> CUTTING              grace period over: abort the rest
            --------> STOPPED              then the other services stop (the
                                           thread pool, the access log)

An HTTP/1.1 connection that is draining answers its current request with
C{Connection: close}; an HTTP/2 connection gets a GOAWAY and is closed once
its open streams are done.
"""

from __future__ import annotations

from enum import auto
from typing import Any, Iterable, Optional, Sequence

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txawsgi.interfaces import IDrainable
from txawsgi.states import Machine, State, edges

__all__ = ["Connections", "GracefulShutdown", "ServingService", "Stage"]

#: How often draining connections are checked for idleness (HTTP/2 streams
#: end without telling the site).
POLL = 0.1

#: After the grace period, how long aborted connections get to go away.
CUT_WAIT = 2.0

#: A connection that has not sent anything yet is left this long after it
#: was accepted before a drain closes it: its request may be on the way.
FRESH = 1.0


def _channel(protocol: Any) -> Any:
    """
    The channel behind a site's protocol (Twisted wraps it to switch to
    HTTP/2 on ALPN).
    """
    return getattr(protocol, "_channel", protocol)


def _is_h2(channel: Any) -> bool:
    return hasattr(channel, "streams") and hasattr(channel, "conn")


def busy(protocol: Any) -> bool:
    """
    Whether a connection has a request in progress (or, for HTTP/2, an open
    stream).
    """
    channel = _channel(protocol)
    if _is_h2(channel):
        return bool(channel.streams)
    return bool(getattr(channel, "requests", None))


class Connections:
    """
    The live connections of a site, and their draining.

    The site's protocol adds itself when connected and removes itself when
    lost; L{drain} closes them as they become idle.
    """

    _log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._live: dict[Any, float] = {}
        self.draining = False
        self._emptied: list[Deferred[None]] = []
        self._poll: Optional[LoopingCall] = None

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Any:
        return iter(list(self._live))

    def add(self, protocol: Any) -> None:
        self._live[protocol] = self._reactor.seconds()
        if self.draining:
            self._wind_down(protocol)

    def remove(self, protocol: Any) -> None:
        self._live.pop(protocol, None)
        if not self._live:
            self._stop_polling()
            emptied, self._emptied = self._emptied, []
            for d in emptied:
                d.callback(None)

    def empty(self) -> Deferred[None]:
        """
        Fire once no connection is left.
        """
        if not self._live:
            return succeed(None)
        d: Deferred[None] = Deferred(canceller=self._emptied.remove)
        self._emptied.append(d)
        return d

    def drain(self) -> Deferred[None]:
        """
        Close idle connections now and every other one once its current
        request is answered; fire once none is left.
        """
        self.draining = True
        for protocol in list(self._live):
            self._wind_down(protocol)
        if self._live and self._poll is None:
            self._poll = LoopingCall(self._close_idle)
            self._poll.clock = self._reactor
            self._poll.start(POLL, now=False)
        return self.empty()

    def abort(self) -> int:
        """
        Abort every connection left; return how many there were.
        """
        live = list(self._live)
        for protocol in live:
            transport = _channel(protocol).transport
            if transport is not None:
                abort = getattr(transport, "abortConnection", None)
                (abort or transport.loseConnection)()
        return len(live)

    def _wind_down(self, protocol: Any) -> None:
        channel = _channel(protocol)
        if not _is_h2(channel):
            closing = getattr(channel, "close_after_request", None)
            if closing is not None:
                closing()
            else:
                channel.persistent = False
        # (An HTTP/2 connection gets its GOAWAY once its streams are done:
        # h2 sends no more data on a connection once GOAWAY is sent.)
        self._close_if_idle(protocol, self._reactor.seconds())

    def _close_idle(self) -> None:
        now = self._reactor.seconds()
        for protocol in list(self._live):
            self._close_if_idle(protocol, now)

    def _close_if_idle(self, protocol: Any, now: float) -> None:
        channel = _channel(protocol)
        fresh = not getattr(channel, "served", 1) and now - self._live.get(protocol, now) < FRESH
        if not fresh and not busy(protocol):
            self._close(protocol)

    def _close(self, protocol: Any) -> None:
        channel = _channel(protocol)
        transport = channel.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return
        if _is_h2(channel):
            try:
                channel.conn.close_connection()
                transport.write(channel.conn.data_to_send())
            except Exception:
                self._log.failure("Could not send GOAWAY to {peer}", peer=transport.getPeer())
            transport.loseConnection()
        else:
            channel.loseConnection()

    def _stop_polling(self) -> None:
        poll, self._poll = self._poll, None
        if poll is not None and poll.running:
            poll.stop()


class Stage(State):
    """
    Where a graceful shutdown is.
    """

    SERVING = auto()
    LISTENERS_STOPPING = auto()
    DRAINING = auto()
    CUTTING = auto()
    STOPPED = auto()


_STAGE_EDGES = edges(
    Stage,
    {
        Stage.SERVING: {Stage.LISTENERS_STOPPING},
        Stage.LISTENERS_STOPPING: {Stage.DRAINING},
        Stage.DRAINING: {Stage.CUTTING, Stage.STOPPED},
        Stage.CUTTING: {Stage.STOPPED},
        Stage.STOPPED: set(),
    },
)


class GracefulShutdown:
    """
    Drain a site's connections and its applications within a grace period.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        connections: Connections,
        drainables: Sequence[IDrainable],
        grace: float,
    ) -> None:
        self._reactor = reactor
        self.connections = connections
        self.drainables = list(drainables)
        self.grace = grace
        self.stage = Machine(Stage.SERVING, _STAGE_EDGES)
        self.cut = 0

    def listeners_stopping(self) -> None:
        self.stage.to(Stage.LISTENERS_STOPPING)

    def drain(self) -> Deferred[None]:
        """
        Run the drain; fire once every connection is gone (cut at the end of
        the grace period if need be).
        """
        self.stage.to(Stage.DRAINING)
        waiting = [self.connections.drain()]
        waiting += [maybeDeferred(d.shutdown) for d in self.drainables]
        busy_now = len(self.connections)
        if busy_now:
            self._log.info(
                "Graceful shutdown: waiting up to {grace:g}s for {count} connection(s)",
                grace=self.grace,
                count=busy_now,
            )
        done: Deferred[None] = Deferred()
        drained = DeferredList(waiting, consumeErrors=True)
        if drained.called:
            # Nothing in flight.
            self.stage.to(Stage.STOPPED)
            return succeed(None)
        timer = self._reactor.callLater(self.grace, self._cut, done)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            if self.stage.state is Stage.DRAINING:
                self._stopped(done)

        drained.addCallback(finished)
        return done

    def _stopped(self, done: Deferred[None]) -> None:
        self.stage.to(Stage.STOPPED)
        done.callback(None)

    def _cut(self, done: Deferred[None]) -> None:
        self.stage.to(Stage.CUTTING)
        self.cut = self.connections.abort()
        self._log.warn(
            "Graceful shutdown: grace period of {grace:g}s over, closed {count} connection(s) still busy",
            grace=self.grace,
            count=self.cut,
        )
        # Aborted connections go on the next reactor turns; exchanges stuck
        # in a worker thread are not waited for.
        gone = self.connections.empty()
        gone.addTimeout(CUT_WAIT, self._reactor)
        gone.addBoth(lambda _: self._stopped(done))


class ServingService(MultiService):
    """
    A L{MultiService} that stops gracefully: its listeners first, then the
    drain of L{GracefulShutdown}, then its other children (in reverse order,
    one after another), so e.g. the thread pool outlives the requests using
    it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[IService] = []
        self.shutdown: Optional[GracefulShutdown] = None

    def add_listener(self, service: IService) -> None:
        self.listeners.append(service)
        service.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        listeners = [s for s in reversed(list(self)) if s in self.listeners]
        others = [s for s in reversed(list(self)) if s not in self.listeners]
        shutdown = self.shutdown
        if shutdown is not None:
            shutdown.listeners_stopping()
        d: Deferred[Any] = DeferredList(
            [maybeDeferred(s.stopService) for s in listeners], consumeErrors=True
        )
        if shutdown is not None:
            d.addCallback(lambda _: shutdown.drain())
        d.addErrback(self._log_failure)
        for service in others:
            d.addCallback(
                lambda _, s: maybeDeferred(s.stopService).addErrback(self._log_failure), service
            )
        d.addCallback(lambda _: None)
        return d

    _log = Logger()

    def _log_failure(self, failure: Any) -> None:
        self._log.failure("Error while stopping", failure)


def drainables(resources: Iterable[Any]) -> list[IDrainable]:
    """
    The L{IDrainable}s among C{resources}.
    """
    return [r for r in resources if IDrainable.providedBy(r)]
