"""
L{ServerSite}: the site C{twistd awsgi} serves, an L{AWSGISite} plus the
policies of a production server, each kept in its own module:

 - L{txawsgi.timeouts}: keep-alive idle and request-head limits on every
   connection (the request limit is an exchange observer, set up by the
   tap);
 - L{txawsgi.proxy}: client address, scheme and host from trusted proxies,
   and a fixed C{SCRIPT_NAME} prefix (C{--root-path});
 - L{txawsgi.accesslog}: exactly one line per routed request, when its
   response has ended or was cut short;
 - L{txawsgi.shutdown}: the live connections, for a graceful drain.

Embedders may use it like any L{twisted.web.server.Site}.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from txawsgi.accesslog import AccessLog, twisted_log_formatter
from txawsgi.mounts import parse_prefix
from txawsgi.proxy import ProxyHeaders
from txawsgi.shutdown import Connections
from txawsgi.site import AWSGIChannel, AWSGIRequest, AWSGISite, _GenericHTTPChannelProtocol
from txawsgi.timeouts import REQUEST_TIMED_OUT, Timeouts, guard_h2_idle

__all__ = ["ServerChannel", "ServerRequest", "ServerSite"]


class ServerRequest(AWSGIRequest):
    """
    A request that knows when it was routed, so it is logged exactly once:
    when it finishes (L{ServerSite.log}) or when its connection is lost
    first (L{connectionLost}).

    @ivar routed_at: when the site routed it (L{None}: never routed, e.g.
        its head was incomplete when the connection went).
    """

    routed_at: Optional[float] = None
    _proxied = False
    _logged = False

    def connectionLost(self, reason: Failure) -> None:
        site = getattr(self, "site", None)
        super().connectionLost(reason)
        if not self.finished and isinstance(site, ServerSite):
            site.request_ended(self, aborted=True)


class ServerChannel(AWSGIChannel):
    """
    An L{AWSGIChannel} with a request-head deadline, with its keep-alive
    idle timer off while the application owns a request, and that can be
    told to close after its current request (graceful shutdown).

    @ivar served: how many request heads it has received (a graceful
        shutdown spares a fresh connection that has had none yet).
    """

    site: "ServerSite"
    served = 0
    _closing = False
    _head_timer: Optional[IDelayedCall] = None

    def head_incomplete(self) -> None:
        # A head begun but not complete once this data is read (its first
        # byte came now, or with earlier data, then with the timer already
        # set): time it.  Most heads arrive whole, and need no timer.
        if self._head_timer is None and not self._lingering:
            timeouts = getattr(self.site, "timeouts", None)
            limit = timeouts.header if timeouts is not None else None
            if limit:
                self._head_timer = self.callLater(limit, self._head_timed_out)

    def allHeadersReceived(self) -> None:
        if self._head_timer is not None:
            self._cancel_head_timer()
        self.served += 1
        super().allHeadersReceived()
        if self.length != 0 and self.timeOut and self.requests:
            # (Only a request with a body may be dispatched at its head.)
            request = self.requests[-1]
            if getattr(request, "dispatched_at_headers", False) and not request.finished:
                # The application owns the connection until it answers, and
                # paces the body: the idle timer waits, as it does for a
                # request Twisted buffered.
                self._savedTimeOut = self.setTimeout(None)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self._closing:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def close_after_request(self) -> None:
        """
        Serve no request after the current one (the server is draining):
        its response says C{Connection: close} if it has not started.
        """
        self._closing = True
        if self.requests:
            # Its persistence may be decided already.  (Not otherwise:
            # Twisted drops the next request line of a connection that is
            # not persistent, and checkPersistence will say no.)
            self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._lingering:
            return
        self._log.info(
            "Request head not complete within {limit:g}s from {peer}; closing",
            limit=self.site.timeouts.header,
            peer=str(self.transport.getPeer()),
        )
        self.transport.write(REQUEST_TIMED_OUT)
        self.timeoutConnection()

    def _cancel_head_timer(self) -> None:
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_head_timer()
        super().connectionLost(reason)


class ServerProtocol(_GenericHTTPChannelProtocol):  # type: ignore[misc, valid-type]
    """
    Twisted's HTTP/1.1-or-HTTP/2 switch, registered with its site's
    L{Connections} while connected.
    """

    _tracked: Optional[Connections] = None
    _h2_guarded = False

    def makeConnection(self, transport: Any) -> None:
        # The proxied makeConnection calls the channel's connectionMade, not
        # this object's.
        super().makeConnection(transport)
        site = self._site
        if isinstance(site, ServerSite) and self._channel.transport is not None:
            self._tracked = site.connections
            site.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is not None:
            # Negotiated (with the first data): Twisted's dataReceived
            # would only pass it on.
            self._channel.dataReceived(data)
            return
        super().dataReceived(data)
        if not self._h2_guarded and self._negotiatedProtocol == b"h2":
            self._h2_guarded = True
            guard_h2_idle(self._channel)

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            tracked, self._tracked = self._tracked, None
            if tracked is not None:
                tracked.remove(self)


def _server_protocol(factory: Any) -> ServerProtocol:
    return ServerProtocol(ServerChannel())


class ServerSite(AWSGISite):
    """
    An L{AWSGISite} with timeouts, trusted proxy headers, a root path, an
    access log and connection tracking for graceful shutdown.

    @param resource: the root resource.
    @param timeouts: the keep-alive and request-head limits.
    @param proxy: rewrite requests from trusted proxies, or L{None}.
    @param root_path: a C{SCRIPT_NAME} prefix under which a proxy serves
        this site (e.g. C{/app}); a request path that already starts with
        it is routed as if it did not.
    @param access_log: where to log requests; L{None} keeps Twisted's own
        request log (long fields cut as in L{txawsgi.accesslog}).
    @param log_requests: C{False} to log no requests at all (neither to
        C{access_log} nor to Twisted's log).
    """

    requestFactory = ServerRequest
    protocol = _server_protocol

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: Any = None,
        timeouts: Timeouts = Timeouts(),
        proxy: Optional[ProxyHeaders] = None,
        root_path: str = "",
        access_log: Optional[AccessLog] = None,
        log_requests: bool = True,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        super().__init__(resource, timeout=timeouts.keep_alive, reactor=reactor, logFormatter=twisted_log_formatter)
        self.timeouts = timeouts
        self.proxy = proxy
        self.root_path = parse_prefix(root_path) if root_path else ()
        self.access_log = access_log if log_requests else None
        self.log_requests = log_requests
        self.connections = Connections(reactor)

    def getResourceFor(self, request: IRequest) -> Any:
        # (With none of these configured, routing is the AWSGISite's.)
        if self.access_log is not None and isinstance(request, ServerRequest) and request.routed_at is None:
            # Only the access log uses it (Twisted's logs when it is done).
            request.routed_at = self.reactor.seconds()
        if self.proxy is not None and isinstance(request, ServerRequest) and not request._proxied:
            request._proxied = True
            self.proxy.apply(request)
        root = self.root_path
        if root:
            postpath = request.postpath
            if tuple(postpath[: len(root)]) == root:
                del postpath[: len(root)]
            request.prepath = list(root)
        return super().getResourceFor(request)

    def log(self, request: http.Request) -> None:
        """
        Called by Twisted when a response finishes.
        """
        if not self.log_requests:
            return
        if self.access_log is None:
            super().log(request)
        else:
            self.request_ended(request, aborted=False)

    def request_ended(self, request: http.Request, *, aborted: bool) -> None:
        """
        Log C{request} once, if it was routed: its response finished, or
        (C{aborted}) its connection was lost first.
        """
        access_log = self.access_log
        if access_log is None or not isinstance(request, ServerRequest):
            return
        if request._logged or request.routed_at is None:
            return
        request._logged = True
        access_log.log(request, when=request.routed_at, aborted=aborted)
