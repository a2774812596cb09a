"""
Shared helpers for txawsgi's trial tests: real sockets on 127.0.0.1 (or a
UNIX socket), real clients, nothing that blocks the reactor.

Everything that returns a L{Deferred} is meant to be awaited from a
C{twisted.trial.unittest.TestCase} test method (C{async def} tests are not
supported by trial; use C{@inlineCallbacks} or return
C{Deferred.fromCoroutine(...)}).  Everything that opens a socket or starts a
process registers a cleanup on the test case, so trial's dirty-reactor check
stays clean as long as the code under test itself leaves nothing behind.

Run with the checkout on C{sys.path} (the C{trial} script does not add the
current directory): C{PYTHONPATH=. /tmp/v/bin/trial tests}.

Overview::

    server = yield listen(self, resource)           # Server
    resp = yield request(server, "POST", "/x", body=b"hi")
    client = yield RawClient.connect(server, rcvbuf=4096)
    client.send(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    [r] = yield client.wait_for_responses(1)
    code, out, err = yield run_curl(["-N", server.url("/stream")])
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import socket
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)
from wsgiref.validate import WSGIWarning, validator

from zope.interface import implementer

from twisted.internet import error as ierror
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ClientFactory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    PartialDownloadError,
    ResponseDone,
    URI,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer
from twisted.web.resource import IResource
from twisted.web.server import Site

__all__ = [
    "PROJECT_ROOT",
    "BodyStream",
    "ClosedBeforeMatch",
    "ParseError",
    "ParsedResponse",
    "ProcessHandle",
    "RawClient",
    "RequestTimeout",
    "Response",
    "Server",
    "WaitTimeout",
    "WSGIValidation",
    "assert_no_wsgi_warnings",
    "check_validator_clean",
    "curl_available",
    "eventually",
    "free_port",
    "listen",
    "listen_unix",
    "parse_response",
    "project_env",
    "request",
    "run_curl",
    "sleep",
    "spawn",
    "twistd_argv",
    "validated",
]

#: The repository root (the directory holding C{txawsgi/} and C{tests/}).
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HeadersLike = Union[
    Headers, Mapping[str, Union[str, Sequence[str]]], Sequence[Tuple[str, str]]
]


def _reactor() -> Any:
    """
    The global reactor, imported late so trial's C{--reactor} choice wins.
    """
    from twisted.internet import reactor

    return reactor


# ---------------------------------------------------------------------------
# Errors and waiting
# ---------------------------------------------------------------------------


class WaitTimeout(TimeoutError):
    """
    A C{wait_*} helper gave up; the message shows what had arrived.
    """


class ClosedBeforeMatch(AssertionError):
    """
    The connection (or process) ended before the awaited data showed up.
    """


class RequestTimeout(TimeoutError):
    """
    L{request} did not complete in time (the connection was aborted).
    """


def _preview(data: bytes, limit: int = 2000) -> str:
    """
    C{repr} of C{data}, eliding the middle of long buffers.
    """
    if len(data) <= limit:
        return repr(bytes(data))
    half = limit // 2
    return (
        f"{bytes(data[:half])!r} ...[{len(data) - 2 * half} bytes elided]... "
        f"{bytes(data[-half:])!r}"
    )


class _Waiter:
    def __init__(
        self,
        check: Callable[[], Tuple[bool, Any]],
        describe: str,
        deferred: Deferred[Any],
    ) -> None:
        self.check = check
        self.describe = describe
        self.deferred = deferred
        self.timer: Optional[IDelayedCall] = None


class _WaitSet:
    """
    Pending C{wait_*} Deferreds over a growing buffer.  C{poll} is called
    whenever the buffer grows; C{end} when no more data can arrive.
    """

    def __init__(self, snapshot: Callable[[], bytes], what: str) -> None:
        self._snapshot = snapshot
        self._what = what
        self._waiters: List[_Waiter] = []

    def add(
        self,
        check: Callable[[], Tuple[bool, Any]],
        describe: str,
        timeout: Optional[float],
        ended: Optional[str],
        hint: Callable[[], str] = lambda: "",
    ) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        waiter = _Waiter(check, describe, d)
        if self._try(waiter):
            return d
        if ended is not None:
            self._endOne(waiter, ended)
            return d
        if timeout is not None:

            def expire() -> None:
                waiter.timer = None
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                data = self._snapshot()
                d.errback(
                    WaitTimeout(
                        f"timed out after {timeout}s waiting for {describe}; "
                        f"{self._what} so far ({len(data)} bytes): "
                        f"{_preview(data)}{hint()}"
                    )
                )

            waiter.timer = _reactor().callLater(timeout, expire)
        self._waiters.append(waiter)
        return d

    def _try(self, waiter: _Waiter) -> bool:
        try:
            done, value = waiter.check()
        except BaseException:
            self._finish(waiter)
            waiter.deferred.errback()
            return True
        if done:
            self._finish(waiter)
            waiter.deferred.callback(value)
        return done

    def _finish(self, waiter: _Waiter) -> None:
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def poll(self) -> None:
        for waiter in list(self._waiters):
            if waiter in self._waiters:
                self._try(waiter)

    def _endOne(self, waiter: _Waiter, why: str) -> None:
        self._finish(waiter)
        data = self._snapshot()
        waiter.deferred.errback(
            ClosedBeforeMatch(
                f"{why} before {waiter.describe}; {self._what} "
                f"({len(data)} bytes): {_preview(data)}"
            )
        )

    def end(self, why: str) -> None:
        """
        No more data will come: re-check everyone once, fail the rest.
        """
        for waiter in list(self._waiters):
            if waiter in self._waiters and not self._try(waiter):
                self._endOne(waiter, why)


def _matcher(
    expected: Union[bytes, Callable[[bytes], Any]],
    buffer: Callable[[], bytearray],
    snapshot: Callable[[], bytes],
    after: int,
) -> Tuple[Callable[[], Tuple[bool, Any]], str]:
    """
    A C{check} for L{_WaitSet.add}: C{expected} is bytes to find (at or
    after offset C{after}) or a predicate over the whole buffer.
    """
    if isinstance(expected, (bytes, bytearray, memoryview)):
        pattern = bytes(expected)
        state = {"start": after}

        def check() -> Tuple[bool, Any]:
            buf = buffer()
            if buf.find(pattern, state["start"]) >= 0:
                return True, snapshot()
            state["start"] = max(after, len(buf) - len(pattern) + 1)
            return False, None

        return check, repr(pattern) + (f" after offset {after}" if after else "")
    if callable(expected):

        def checkPredicate() -> Tuple[bool, Any]:
            result = expected(snapshot())
            return bool(result), result

        return checkPredicate, f"predicate {getattr(expected, '__name__', expected)!r}"
    raise TypeError(f"expected bytes or a callable, not {expected!r}")


def read_to_eof(sock: socket.socket, timeout: float = 10) -> bytes:
    """
    Everything the blocking socket C{sock} receives until the peer's FIN
    (call it in a thread); the socket stays open.
    """
    sock.settimeout(timeout)
    received = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return received
        received += data


def eventually(
    predicate: Callable[[], Any], timeout: float = 5, interval: float = 0.01
) -> Deferred[Any]:
    """
    Poll C{predicate()} every C{interval} seconds until it returns something
    truthy; fire with that value.  An C{AssertionError} raised by the
    predicate counts as "not yet" (so the predicate may use asserts); any
    other exception fails at once.  After C{timeout} seconds errback with
    L{WaitTimeout} chained to the last C{AssertionError}, if any.
    """
    reactor = _reactor()
    d: Deferred[Any] = Deferred()
    deadline = reactor.seconds() + timeout
    last: List[Optional[AssertionError]] = [None]

    def attempt() -> None:
        try:
            result = predicate()
        except AssertionError as e:
            last[0] = e
            result = None
        except BaseException:
            d.errback()
            return
        if result:
            d.callback(result)
        elif reactor.seconds() >= deadline:
            name = getattr(predicate, "__name__", repr(predicate))
            why = f": last assertion: {last[0]}" if last[0] is not None else ""
            exc = WaitTimeout(f"{name} not true after {timeout}s{why}")
            exc.__cause__ = last[0]
            d.errback(exc)
        else:
            reactor.callLater(interval, attempt)

    attempt()
    return d


def sleep(seconds: float) -> Deferred[None]:
    """
    A Deferred that fires with L{None} after C{seconds} of reactor time.
    """
    return deferLater(_reactor(), seconds, lambda: None)


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (for subprocess tests;
    in-process servers should use L{listen}, which binds port 0 itself).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class Server:
    """
    A L{Site} listening for one test; see L{listen} / L{listen_unix}.

    @ivar host: C{'127.0.0.1'} (TCP) or L{None} (UNIX).
    @ivar port: the TCP port number, or L{None} for UNIX sockets.
    @ivar unix_path: the socket path for UNIX servers.
    @ivar listening_port: the L{IListeningPort}.
    @ivar connections: live server-side protocols (as built by the Site,
        normally C{_GenericHTTPChannelProtocol}; see L{channels}), in accept
        order.  Entries leave the list in C{connectionLost}.
    @ivar accepted: how many connections were accepted in total.
    @ivar lost: C{(protocol, reason)} for every server-side connection that
        ended, in order.
    """

    testcase: TestCase
    site: Site
    kind: str
    host: Optional[str] = None
    port: Optional[int] = None
    unix_path: Optional[str] = None
    listening_port: Optional[IListeningPort] = None
    connections: List[IProtocol] = field(default_factory=list)
    accepted: int = 0
    lost: List[Tuple[IProtocol, Failure]] = field(default_factory=list)
    sndbuf: Optional[int] = None
    _transports: Dict[int, Any] = field(default_factory=dict)
    _lostDeferreds: Dict[int, Deferred[None]] = field(default_factory=dict)

    def url(self, path: str = "/") -> str:
        """
        An C{http://} URL for C{path} on this server.  For UNIX servers the
        authority is C{localhost} (use L{request} or L{curl_args}, which know
        how to reach the socket).
        """
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        if self.kind == "unix":
            return "http://localhost" + path
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def curl_args(self, path: str = "/") -> List[str]:
        """
        The curl arguments that reach C{path} on this server (adds
        C{--unix-socket} for UNIX servers).
        """
        if self.kind == "unix":
            assert self.unix_path is not None
            return ["--unix-socket", self.unix_path, self.url(path)]
        return [self.url(path)]

    @property
    def channels(self) -> List[Any]:
        """
        The live L{twisted.web.http.HTTPChannel}s (unwrapped from the
        generic protocol the Site builds).
        """
        return [getattr(p, "_channel", p) for p in self.connections]

    def transport_of(self, proto: IProtocol) -> Any:
        """
        The server-side transport of one of L{connections}.
        """
        return self._transports[id(proto)]

    def client_endpoint(self) -> IStreamClientEndpoint:
        """
        A client endpoint that connects to this server.
        """
        reactor = _reactor()
        if self.kind == "unix":
            return UNIXClientEndpoint(reactor, self.unix_path, timeout=5)
        if self.host and ":" in self.host:
            return TCP6ClientEndpoint(reactor, self.host, self.port, timeout=5)
        return TCP4ClientEndpoint(reactor, self.host, self.port, timeout=5)

    # -- instrumentation --

    def _instrument(self) -> None:
        site = self.site
        if getattr(site, "_support_server", None) is not None:
            raise ValueError("this Site is already listening via tests.support")
        site._support_server = self  # type: ignore[attr-defined]
        original = site.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            proto = original(addr)
            if proto is not None:
                self._track(proto)
            return proto

        site.buildProtocol = buildProtocol  # type: ignore[method-assign]

    def _track(self, proto: Any) -> None:
        key = id(proto)
        self.accepted += 1
        self.connections.append(proto)
        self._lostDeferreds[key] = Deferred()
        originalMake = proto.makeConnection
        originalLost = proto.connectionLost

        def makeConnection(transport: Any) -> None:
            self._transports[key] = transport
            handle = getattr(transport, "getHandle", lambda: None)()
            if handle is not None and self.sndbuf is not None:
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            originalMake(transport)

        def connectionLost(reason: Failure) -> None:
            try:
                originalLost(reason)
            finally:
                if proto in self.connections:
                    self.connections.remove(proto)
                self.lost.append((proto, reason))
                self._transports.pop(key, None)
                lostD = self._lostDeferreds.pop(key, None)
                if lostD is not None:
                    lostD.callback(None)

        proto.makeConnection = makeConnection
        proto.connectionLost = connectionLost

    async def shutdown(self, timeout: float = 5) -> None:
        """
        Stop listening, abort every live server-side connection and wait for
        their C{connectionLost}.  Registered as a cleanup by L{listen}; safe
        to call twice.
        """
        port, self.listening_port = self.listening_port, None
        if port is not None:
            await maybeDeferred(port.stopListening)
        pending = list(self._lostDeferreds.values())
        for key, transport in list(self._transports.items()):
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()
        if pending:
            waiting = gatherResults(pending)
            waiting.addTimeout(timeout, _reactor())
            try:
                await waiting
            except CancelledError:
                raise AssertionError(
                    f"{len(self.connections)} server connection(s) did not "
                    f"close within {timeout}s of being aborted"
                ) from None


def listen(
    testcase: TestCase,
    resource_or_site: Union[IResource, Site],
    endpoint: Union[str, IStreamServerEndpoint, None] = None,
    *,
    sndbuf: Optional[int] = None,
) -> Deferred[Server]:
    """
    Listen C{resource_or_site} (a bare resource is wrapped in a L{Site}) on
    C{endpoint} (default C{tcp:0:interface=127.0.0.1}; a string for
    L{serverFromString} or an endpoint object) and fire with a L{Server}.

    The cleanup registered on C{testcase} stops listening, aborts every
    server-side connection still open and waits for them to be lost.

    @param sndbuf: if set, C{SO_SNDBUF} for every accepted socket (small
        values make the server see backpressure sooner).
    """
    site = resource_or_site if isinstance(resource_or_site, Site) else Site(resource_or_site)
    reactor = _reactor()
    if endpoint is None:
        endpoint = "tcp:0:interface=127.0.0.1"
    ep = serverFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint
    server = Server(testcase=testcase, site=site, kind="tcp", sndbuf=sndbuf)
    server._instrument()

    def listening(port: IListeningPort) -> Server:
        server.listening_port = port
        testcase.addCleanup(lambda: Deferred.fromCoroutine(server.shutdown()))
        address = port.getHost()
        if getattr(address, "type", None) in ("TCP",):
            server.host = address.host
            server.port = address.port
        else:
            server.kind = "unix"
            name = address.name
            server.unix_path = name.decode() if isinstance(name, bytes) else name
        return server

    return ep.listen(site).addCallback(listening)


def listen_unix(
    testcase: TestCase,
    resource_or_site: Union[IResource, Site],
    *,
    sndbuf: Optional[int] = None,
) -> Deferred[Server]:
    """
    Like L{listen}, on a UNIX socket in a fresh temporary directory (under
    the system temp dir, since C{_trial_temp} paths can exceed the 108-byte
    C{sun_path} limit).  The directory is removed at cleanup.
    """
    tmp = tempfile.mkdtemp(prefix="txawsgi-")
    testcase.addCleanup(shutil.rmtree, tmp, True)
    path = os.path.join(tmp, "s")
    return listen(testcase, resource_or_site, f"unix:{path}:lockfile=0", sndbuf=sndbuf)


# ---------------------------------------------------------------------------
# Agent requests
# ---------------------------------------------------------------------------


@dataclass
class Response:
    """
    A fully read response from L{request}.

    @ivar headers: the response headers I{minus} the connection-control
        ones, which Twisted's client consumes: C{Content-Length},
        C{Transfer-Encoding}, C{Connection}, C{Keep-Alive}, C{TE},
        C{Trailers}, C{Upgrade}, C{Proxy-Connection}.  Use L{RawClient} to
        assert on those.
    @ivar length: the declared C{Content-Length}, or L{None} (chunked or
        close-delimited).
    @ivar complete: C{False} only with C{allow_partial=True}, when the body
        did not end cleanly; C{failure} then says why.
    """

    code: int
    phrase: str
    headers: Headers
    body: bytes
    length: Optional[int] = None
    version: Tuple[bytes, int, int] = (b"HTTP", 1, 1)
    complete: bool = True
    failure: Optional[Failure] = None

    def header_values(self, name: str) -> List[str]:
        """
        Every value of header C{name} (case-insensitive), in order.
        """
        return list(self.headers.getRawHeaders(name, []))

    def header(self, name: str) -> Optional[str]:
        """
        Header C{name}, or L{None} if absent; several occurrences are joined
        with C{", "}.
        """
        values = self.header_values(name)
        return ", ".join(values) if values else None


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A body producer for a bytes request body (known length, written at once).
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._body:
            consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IBodyProducer)
class BodyStream:
    """
    A streamed request body for L{request}, fed by the test::

        body = BodyStream()                 # chunked; or BodyStream(length=n)
        d = request(server, "POST", "/", body=body)
        yield body.started                  # Agent began sending the body
        body.write(b"part 1")
        ...
        body.finish()
        response = yield d

    Writes before C{started} fires are buffered.  C{paused} / C{pauses}
    record the Agent's flow control; C{stopped} is set if the Agent gave up.
    """

    def __init__(self, length: Any = UNKNOWN_LENGTH) -> None:
        self.length = length
        self.started: Deferred[None] = Deferred()
        self.paused = False
        self.pauses = 0
        self.stopped = False
        self._consumer: Optional[IConsumer] = None
        self._pending: List[bytes] = []
        self._done: Optional[Deferred[None]] = None
        self._finished = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        for chunk in self._pending:
            consumer.write(chunk)
        self._pending = []
        done = self._done
        if self._finished:
            self._done = None
            done.callback(None)
        self.started.callback(None)
        return done

    def write(self, data: bytes) -> None:
        """
        Send C{data} as (part of) the request body.
        """
        if self._finished:
            raise RuntimeError("BodyStream.write after finish")
        if self._consumer is None:
            self._pending.append(data)
        elif not self.stopped:
            self._consumer.write(data)

    def finish(self) -> None:
        """
        End the request body.
        """
        self._finished = True
        done, self._done = self._done, None
        if done is not None:
            done.callback(None)

    def fail(self, reason: Optional[BaseException] = None) -> None:
        """
        Abandon the request body (the Agent aborts the request).
        """
        self._finished = True
        done, self._done = self._done, None
        if done is not None:
            done.errback(reason or RuntimeError("BodyStream.fail"))

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True
        self._done = None


class _BodyCollector(Protocol):
    """
    Like C{readBody}'s protocol, but keeps partial data: fires (never
    errbacks) with C{(body, reason)}.
    """

    def __init__(self, done: Deferred[Tuple[bytes, Failure]]) -> None:
        self._chunks: List[bytes] = []
        self._done = done

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self._done.callback((b"".join(self._chunks), reason))


class _ClientTracker:
    """
    Client endpoints that record their protocols so L{request} can wait for
    (or force) the end of its connections.
    """

    def __init__(self) -> None:
        self.transports: List[Any] = []
        self.lost: List[Deferred[None]] = []

    def wrap(self, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
        return _TrackingEndpoint(endpoint, self)

    def abort(self) -> None:
        for transport in self.transports:
            transport.abortConnection()

    async def wait(self, timeout: float) -> None:
        if not self.lost:
            return
        waiting = gatherResults(list(self.lost))
        waiting.addTimeout(timeout, _reactor())
        try:
            await waiting
        except CancelledError:
            self.abort()
            await gatherResults(list(self.lost))


@implementer(IStreamClientEndpoint)
class _TrackingEndpoint:
    def __init__(self, inner: IStreamClientEndpoint, tracker: _ClientTracker) -> None:
        self._inner = inner
        self._tracker = tracker

    def connect(self, factory: Any) -> Deferred[Any]:
        def connected(proto: Any) -> Any:
            lost: Deferred[None] = Deferred()
            self._tracker.lost.append(lost)
            self._tracker.transports.append(proto.transport)
            original = proto.connectionLost

            def connectionLost(reason: Failure) -> None:
                try:
                    original(reason)
                finally:
                    lost.callback(None)

            proto.connectionLost = connectionLost
            return proto

        return self._inner.connect(factory).addCallback(connected)


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    def __init__(self, server: Optional[Server], tracker: _ClientTracker) -> None:
        self._server = server
        self._tracker = tracker

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        reactor = _reactor()
        if self._server is not None:
            inner = self._server.client_endpoint()
        else:
            if uri.scheme != b"http":
                raise ValueError(f"only http:// URLs are supported, not {uri.scheme!r}")
            host = uri.host.decode("ascii")
            if re.fullmatch(r"[0-9.]+", host):
                inner = TCP4ClientEndpoint(reactor, host, uri.port, timeout=5)
            elif ":" in host:
                inner = TCP6ClientEndpoint(reactor, host, uri.port, timeout=5)
            else:
                inner = HostnameEndpoint(reactor, host, uri.port, timeout=5)
        return self._tracker.wrap(inner)


def _toHeaders(headers: Optional[HeadersLike]) -> Headers:
    if headers is None:
        return Headers()
    if isinstance(headers, Headers):
        return headers.copy()
    result = Headers()
    items: Iterable[Tuple[str, Any]] = (
        headers.items() if isinstance(headers, Mapping) else headers
    )
    for name, value in items:
        values = [value] if isinstance(value, (str, bytes)) else list(value)
        for v in values:
            result.addRawHeader(name, v)
    return result


def request(
    server_or_url: Union[Server, str],
    method: str = "GET",
    path: str = "/",
    headers: Optional[HeadersLike] = None,
    body: Union[bytes, IBodyProducer, None] = None,
    *,
    timeout: float = 10,
    allow_partial: bool = False,
) -> Deferred[Response]:
    """
    Make one request with L{Agent} on a fresh, non-persistent connection and
    read the whole body.  The Deferred fires only after the client connection
    is closed, so nothing leaks into the next test.

    @param server_or_url: a L{Server} (then C{path} is used, TCP or UNIX) or
        a full C{http://} URL string (then C{path} must be left alone).
    @param headers: a L{Headers}, a mapping of name to value(s), or a list of
        C{(name, value)} pairs.  The Agent adds C{Host} and
        C{Connection: close}.
    @param body: L{None} (no body), bytes (sent with C{Content-Length}) or any
        L{IBodyProducer}, e.g. a L{BodyStream} (C{UNKNOWN_LENGTH} means
        chunked).
    @param timeout: abort the connection and errback with L{RequestTimeout}
        after this many seconds.
    @param allow_partial: if the body does not end cleanly (truncated
        Content-Length or chunked body, or a body delimited only by the close
        of the connection) fire with C{Response(complete=False, failure=...)}
        instead of errbacking.  Without it such responses errback like
        C{readBody}: L{PartialDownloadError} for close-delimited bodies, the
        C{ResponseFailed} otherwise.
    """
    return Deferred.fromCoroutine(
        _request(server_or_url, method, path, headers, body, timeout, allow_partial)
    )


async def _request(
    server_or_url: Union[Server, str],
    method: str,
    path: str,
    headers: Optional[HeadersLike],
    body: Union[bytes, IBodyProducer, None],
    timeout: float,
    allow_partial: bool,
) -> Response:
    reactor = _reactor()
    tracker = _ClientTracker()
    if isinstance(server_or_url, Server):
        url = server_or_url.url(path)
        factory = _EndpointFactory(server_or_url, tracker)
    else:
        if path != "/":
            raise TypeError("pass either a Server and a path, or a full URL")
        url = server_or_url
        factory = _EndpointFactory(None, tracker)
    agent = Agent.usingEndpointFactory(
        reactor, factory, HTTPConnectionPool(reactor, persistent=False)
    )
    if isinstance(body, (bytes, bytearray)):
        producer: Optional[IBodyProducer] = _BytesProducer(bytes(body))
    else:
        producer = body
    state: Dict[str, Any] = {"current": None, "timedOut": False}

    def onTimeout() -> None:
        state["timedOut"] = True
        tracker.abort()
        current = state["current"]
        if current is not None and not current.called:
            current.cancel()

    timer = reactor.callLater(timeout, onTimeout)
    try:
        try:
            d = agent.request(
                method.encode("ascii"), url.encode("ascii"), _toHeaders(headers), producer
            )
            state["current"] = d
            response = await d
            collected: Deferred[Tuple[bytes, Failure]] = Deferred()
            state["current"] = collected
            response.deliverBody(_BodyCollector(collected))
            data, reason = await collected
        finally:
            if timer.active():
                timer.cancel()
            await tracker.wait(timeout=5)
    except Exception as e:
        if state["timedOut"]:
            raise RequestTimeout(
                f"{method} {url} did not complete within {timeout}s"
            ) from e
        raise
    if state["timedOut"] and not reason.check(ResponseDone):
        raise RequestTimeout(f"{method} {url}: body not complete within {timeout}s")
    result = Response(
        code=response.code,
        phrase=response.phrase.decode("latin-1"),
        headers=response.headers,
        body=data,
        length=None if response.length is UNKNOWN_LENGTH else response.length,
        version=response.version,
    )
    if not reason.check(ResponseDone):
        if not allow_partial:
            if reason.check(PotentialDataLoss):
                raise PartialDownloadError(response.code, response.phrase, data)
            reason.raiseException()
        result.complete = False
        result.failure = reason
    return result


# ---------------------------------------------------------------------------
# Raw byte-level client
# ---------------------------------------------------------------------------


class _SockoptClient:
    """
    Mixin for L{twisted.internet.tcp.Client}: apply the connector's socket
    options before C{connect()}, so e.g. a small C{SO_RCVBUF} also shrinks
    the window scale negotiated in the SYN.
    """

    def createInternetSocket(self) -> socket.socket:
        s = super().createInternetSocket()  # type: ignore[misc]
        for level, option, value in self.connector._sockopts:  # type: ignore[attr-defined]
            s.setsockopt(level, option, value)
        return s


def _connectTCP(
    host: str, port: int, factory: ClientFactory, timeout: float, sockopts: List[Tuple[int, int, int]]
) -> bool:
    """
    Connect with C{sockopts} applied before C{connect()} when the reactor
    uses L{twisted.internet.tcp}; returns False if the options must be set
    after connecting instead.
    """
    reactor = _reactor()
    from twisted.internet import tcp
    from twisted.internet.posixbase import PosixReactorBase

    if not sockopts or not isinstance(reactor, PosixReactorBase):
        reactor.connectTCP(host, port, factory, timeout)
        return not sockopts

    class Client(_SockoptClient, tcp.Client):
        pass

    class Connector(tcp.Connector):
        _sockopts = sockopts

        def _makeTransport(self) -> tcp.Client:
            return Client(self.host, self.port, self.bindAddress, self, self.reactor)

    Connector(host, port, factory, timeout, None, reactor).connect()
    return True


class _RawFactory(ClientFactory):
    def __init__(self, client: "RawClient", connected: Deferred["RawClient"]) -> None:
        self._client = client
        self._connected = connected

    def buildProtocol(self, addr: Any) -> "RawClient":
        self._client.factory = self
        return self._client

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._connected.errback(reason)


class RawClient(Protocol):
    """
    A byte-level client over a real connection, for byte-exact tests.

    Create with C{client = yield RawClient.connect(server)}.  The cleanup
    registered on the test case aborts the connection if still open and
    waits for it to be lost.

    @ivar received: every byte received so far.
    @ivar closed: whether the connection has ended.
    @ivar closed_reason: L{None} while open; then C{'clean'} (FIN from the
        peer, or our own L{close}), C{'reset'} (the peer reset/aborted the
        connection, e.g. its C{abortConnection()}), or C{'aborted'} (we
        called L{abort}).
    @ivar close_failure: the L{Failure} given to C{connectionLost}.
    @ivar paused: whether reading is paused (L{pause_reading}).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cache: Optional[bytes] = b""
        self.closed = False
        self.closed_reason: Optional[str] = None
        self.close_failure: Optional[Failure] = None
        self.paused = False
        self._waits = _WaitSet(lambda: self.received, "received")
        self._closeWaiters: List[Tuple[Deferred[str], Optional[IDelayedCall]]] = []
        self._connected: Optional[Deferred[RawClient]] = None

    @classmethod
    def connect(
        cls,
        server: Union[Server, Tuple[str, int], str],
        *,
        testcase: Optional[TestCase] = None,
        rcvbuf: Optional[int] = None,
        sndbuf: Optional[int] = None,
        nodelay: bool = True,
        timeout: float = 5,
    ) -> Deferred["RawClient"]:
        """
        Connect to C{server}: a L{Server} (TCP or UNIX), a C{(host, port)}
        tuple or a UNIX socket path (those two need C{testcase}).

        @param rcvbuf: C{SO_RCVBUF} for the client socket, set before
            connecting (TCP) so a paused reader closes the TCP window fast.
            Linux doubles the value and enforces a minimum (~2 KiB).
        @param sndbuf: C{SO_SNDBUF} for the client socket.
        @param nodelay: C{TCP_NODELAY} (default on, so each L{send} leaves at
            once instead of waiting on Nagle/delayed-ACK).
        """
        if testcase is None:
            if not isinstance(server, Server):
                raise TypeError("testcase= is required unless connecting to a Server")
            testcase = server.testcase
        client = cls()
        connected: Deferred[RawClient] = Deferred()
        client._connected = connected
        factory = _RawFactory(client, connected)
        sockopts: List[Tuple[int, int, int]] = []
        if rcvbuf is not None:
            sockopts.append((socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf))
        if sndbuf is not None:
            sockopts.append((socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf))
        lateOpts: List[Tuple[int, int, int]] = []
        if isinstance(server, Server) and server.kind == "unix":
            server = server.unix_path  # type: ignore[assignment]
        if isinstance(server, Server):
            assert server.host is not None and server.port is not None
            host, port = server.host, server.port
        elif isinstance(server, tuple):
            host, port = server
        else:
            host = None
        if host is not None:
            if nodelay:
                sockopts.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
            if not _connectTCP(host, port, factory, timeout, sockopts):
                lateOpts = sockopts
        else:
            _reactor().connectUNIX(server, factory, timeout)
            lateOpts = sockopts

        def ready(client: RawClient) -> RawClient:
            handle = client.transport.getHandle()
            for level, option, value in lateOpts:
                handle.setsockopt(level, option, value)
            testcase.addCleanup(client._cleanup)
            return client

        return connected.addCallback(ready)

    # -- Protocol --

    def connectionMade(self) -> None:
        connected, self._connected = self._connected, None
        if connected is not None:
            connected.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        self._cache = None
        self._waits.poll()

    def connectionLost(self, reason: Failure = Failure(ierror.ConnectionDone())) -> None:
        self.closed = True
        self.close_failure = reason
        if reason.check(ierror.ConnectionAborted):
            self.closed_reason = "aborted"
        elif reason.check(ierror.ConnectionDone):
            self.closed_reason = "clean"
        else:
            self.closed_reason = "reset"
        waiters, self._closeWaiters = self._closeWaiters, []
        for d, timer in waiters:
            if timer is not None and timer.active():
                timer.cancel()
            d.callback(self.closed_reason)
        self._waits.end(f"connection closed ({self.closed_reason})")

    # -- API --

    @property
    def received(self) -> bytes:
        if self._cache is None:
            self._cache = bytes(self._buf)
        return self._cache

    def send(self, data: bytes) -> None:
        """
        Write C{data} to the connection.
        """
        if self.closed:
            raise RuntimeError(f"send on a closed connection ({self.closed_reason})")
        self.transport.write(data)

    def clear(self) -> bytes:
        """
        Forget (and return) everything received so far; later offsets and
        predicates see only new data.
        """
        data = self.received
        self._buf = bytearray()
        self._cache = b""
        return data

    def wait_for(
        self,
        expected: Union[bytes, Callable[[bytes], Any]],
        timeout: float = 5,
        *,
        after: int = 0,
    ) -> Deferred[Any]:
        """
        Fire when C{received} contains C{expected} (searching from offset
        C{after}) -- firing with C{received} -- or when C{expected(received)}
        is truthy -- firing with that value.  Errback with L{WaitTimeout}
        after C{timeout} seconds, or with L{ClosedBeforeMatch} as soon as the
        connection ends without a match; both messages show what arrived.
        An exception raised by the predicate errbacks at once.
        """
        check, describe = _matcher(expected, lambda: self._buf, lambda: self.received, after)
        return self._waits.add(
            check, describe, timeout, self._endedWhy(), self._pausedHint
        )

    def wait_for_length(self, n: int, timeout: float = 5) -> Deferred[bytes]:
        """
        Fire with C{received} once at least C{n} bytes have arrived.
        """
        return self._waits.add(
            lambda: (len(self._buf) >= n, self.received if len(self._buf) >= n else None),
            f"{n} bytes",
            timeout,
            self._endedWhy(),
            self._pausedHint,
        )

    def wait_for_responses(
        self, n: int, timeout: float = 5, *, methods: Optional[Sequence[str]] = None
    ) -> Deferred[List["ParsedResponse"]]:
        """
        Fire with L{parse_response}C{(received)} once it holds C{n} complete
        final (non-1xx) responses.  A L{ParseError} errbacks at once.  When
        the connection closes, the buffer is parsed with C{eof=True} (so a
        close-delimited body counts as complete).
        """

        def check() -> Tuple[bool, Any]:
            parsed = parse_response(self.received, methods=methods, eof=self.closed)
            final = [r for r in parsed if not r.interim and r.complete]
            return len(final) >= n, parsed

        return self._waits.add(
            check, f"{n} complete response(s)", timeout, self._endedWhy(), self._pausedHint
        )

    def wait_closed(self, timeout: float = 5) -> Deferred[str]:
        """
        Fire with L{closed_reason} once the connection has ended.  Note that
        a paused reader (L{pause_reading}) does not notice the peer closing.
        """
        if self.closed:
            assert self.closed_reason is not None
            return succeed(self.closed_reason)
        d: Deferred[str] = Deferred()
        entry: List[Any] = [d, None]

        def expire() -> None:
            self._closeWaiters = [w for w in self._closeWaiters if w[0] is not d]
            d.errback(
                WaitTimeout(
                    f"connection still open after {timeout}s; received "
                    f"({len(self._buf)} bytes): {_preview(self.received)}"
                    f"{self._pausedHint()}"
                )
            )

        entry[1] = _reactor().callLater(timeout, expire)
        self._closeWaiters.append((d, entry[1]))
        return d

    def pause_reading(self) -> None:
        """
        Stop reading from the socket (C{transport.pauseProducing()}): the
        kernel buffers fill and the server sees TCP backpressure.
        """
        self.paused = True
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """
        Undo L{pause_reading}.
        """
        self.paused = False
        self.transport.resumeProducing()

    def close_write(self) -> None:
        """
        Half-close: send FIN but keep reading.
        """
        self.transport.loseWriteConnection()

    def close(self, timeout: float = 5) -> Deferred[str]:
        """
        Close cleanly (FIN after pending writes); fire with L{closed_reason}.
        """
        if not self.closed:
            self.transport.loseConnection()
        return self.wait_closed(timeout)

    def abort(self, timeout: float = 5) -> Deferred[str]:
        """
        Abort (RST, dropping pending writes); fire with L{closed_reason}.
        """
        if not self.closed:
            self.transport.abortConnection()
        return self.wait_closed(timeout)

    def _endedWhy(self) -> Optional[str]:
        return f"connection closed ({self.closed_reason})" if self.closed else None

    def _pausedHint(self) -> str:
        return " (reading is paused)" if self.paused else ""

    def _cleanup(self) -> Optional[Deferred[str]]:
        if self.closed:
            return None
        self.transport.abortConnection()
        return self.wait_closed()


# ---------------------------------------------------------------------------
# HTTP/1.1 response parser
# ---------------------------------------------------------------------------


class ParseError(AssertionError):
    """
    The bytes are not a well-formed sequence of HTTP/1.x responses.
    (An C{AssertionError}, so a malformed response fails the test.)
    """


@dataclass
class ParsedResponse:
    """
    One response parsed by L{parse_response}.

    @ivar headers: C{(name, value)} pairs in wire order, duplicates kept,
        names as sent (value OWS stripped).
    @ivar body: the body, de-chunked; for an incomplete response, whatever
        body bytes arrived.
    @ivar framing: C{'content-length'}, C{'chunked'}, C{'close'} (read to
        end of stream), C{'none'} (1xx, 204, 304, HEAD) or C{'upgrade'} (101:
        C{body} holds every byte after the header section).
    @ivar complete: the body ended as its framing says (for C{'chunked'},
        the C{0\\r\\n\\r\\n} terminator, trailers included, was present).
    @ivar chunks: for chunked bodies, each complete chunk's data in order.
    @ivar trailers: for chunked bodies, the trailer fields.
    @ivar raw: the exact bytes this response occupied.
    """

    version: str
    code: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes = b""
    framing: str = "none"
    complete: bool = True
    chunks: List[bytes] = field(default_factory=list)
    trailers: List[Tuple[str, str]] = field(default_factory=list)
    raw: bytes = b""

    @property
    def interim(self) -> bool:
        """
        Whether this is a 1xx response.
        """
        return 100 <= self.code < 200

    def header_values(self, name: str) -> List[str]:
        """
        Every value of header C{name} (case-insensitive), in order.
        """
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def header(self, name: str) -> Optional[str]:
        """
        Header C{name}, or L{None}; several occurrences joined with C{", "}.
        """
        values = self.header_values(name)
        return ", ".join(values) if values else None


_STATUS_RE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3}) ([\t\x20-\x7e\x80-\xff]*)")
_HEADER_RE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*"
)
_CHUNK_RE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")


class _Incomplete(Exception):
    pass


def _line(data: bytes, pos: int) -> Tuple[bytes, int]:
    end = data.find(b"\n", pos)
    if end < 0:
        if b"\r" in data[pos:-1]:
            raise ParseError(f"bare CR at offset {pos}: {_preview(data[pos:], 200)}")
        raise _Incomplete()
    if end == pos or data[end - 1 : end] != b"\r":
        raise ParseError(f"bare LF at offset {end}: {_preview(data[pos:end + 1], 200)}")
    line = data[pos : end - 1]
    if b"\r" in line:
        raise ParseError(f"bare CR in line {line!r}")
    return line, end + 1


def _fields(data: bytes, pos: int) -> Tuple[List[Tuple[str, str]], int]:
    result: List[Tuple[str, str]] = []
    while True:
        line, pos = _line(data, pos)
        if not line:
            return result, pos
        if line[:1] in (b" ", b"\t"):
            raise ParseError(f"obsolete line folding: {line!r}")
        m = _HEADER_RE.fullmatch(line)
        if m is None:
            raise ParseError(f"malformed header line {line!r}")
        result.append((m.group(1).decode("ascii"), m.group(2).decode("latin-1")))


def _tokens(resp: ParsedResponse, name: str) -> List[str]:
    return [
        t.strip().lower()
        for v in resp.header_values(name)
        for t in v.split(",")
        if t.strip()
    ]


def parse_response(
    data: bytes, *, methods: Optional[Sequence[str]] = None, eof: bool = True
) -> List[ParsedResponse]:
    """
    Strictly parse every HTTP/1.x response in C{data} (a connection's
    received bytes), in order; 1xx responses are separate entries.

    Raises L{ParseError} (an C{AssertionError}) for malformed status lines or
    header fields (bare LF/CR, obs-fold, bad names), bad chunk framing,
    C{Transfer-Encoding} together with C{Content-Length}, repeated or invalid
    C{Content-Length}, and bytes after a complete response that said
    C{Connection: close}.

    A response cut short is returned with C{complete=False} and is the last
    entry.  With C{eof=True} (default: C{data} is everything the connection
    will ever deliver) a body without framing runs to the end and is
    complete, and a truncated status line/header section is a L{ParseError};
    with C{eof=False} (still streaming) those are incomplete/left out.

    @param methods: the request method of each final response in order
        (default C{GET}); a C{HEAD} response has no body.
    """
    data = bytes(data)
    out: List[ParsedResponse] = []
    pos = 0
    final = 0
    while pos < len(data):
        start = pos
        try:
            status, pos = _line(data, pos)
            m = _STATUS_RE.fullmatch(status)
            if m is None:
                raise ParseError(f"malformed status line {status!r} at offset {start}")
            headers, pos = _fields(data, pos)
        except _Incomplete:
            if eof:
                raise ParseError(
                    f"truncated status line/header section at offset {start}: "
                    f"{_preview(data[start:], 400)}"
                ) from None
            break
        resp = ParsedResponse(
            version=f"HTTP/{m.group(1).decode()}.{m.group(2).decode()}",
            code=int(m.group(3)),
            reason=m.group(4).decode("latin-1"),
            headers=headers,
        )
        out.append(resp)
        if resp.code == 101:
            resp.framing = "upgrade"
            resp.body = data[pos:]
            resp.raw = data[start:]
            break
        if resp.interim:
            resp.raw = data[start:pos]
            continue
        method = (
            methods[final].upper() if methods is not None and final < len(methods) else "GET"
        )
        final += 1
        codings = _tokens(resp, "transfer-encoding")
        lengths = resp.header_values("content-length")
        if method == "HEAD" or resp.code in (204, 304):
            resp.framing = "none"
        elif codings:
            if lengths:
                raise ParseError(
                    f"response {resp.code} has both Transfer-Encoding and Content-Length"
                )
            if codings[-1] == "chunked":
                if codings.count("chunked") > 1:
                    raise ParseError(f"chunked applied twice: {codings}")
                resp.framing = "chunked"
            else:
                resp.framing = "close"
        elif lengths:
            if len(lengths) > 1 or not re.fullmatch(r"[0-9]+", lengths[0]):
                raise ParseError(f"invalid Content-Length {lengths!r}")
            resp.framing = "content-length"
        else:
            resp.framing = "close"

        if resp.framing == "content-length":
            n = int(lengths[0])
            resp.body = data[pos : pos + n]
            resp.complete = len(resp.body) == n
            pos += len(resp.body)
        elif resp.framing == "chunked":
            pos = _parseChunked(data, pos, resp)
        elif resp.framing == "close":
            resp.body = data[pos:]
            resp.complete = eof
            pos = len(data)
        resp.raw = data[start:pos]
        if not resp.complete or resp.framing == "close":
            break
        if pos < len(data) and "close" in _tokens(resp, "connection"):
            raise ParseError(
                f"{len(data) - pos} bytes after a 'Connection: close' response: "
                f"{_preview(data[pos:], 200)}"
            )
    return out


def _parseChunked(data: bytes, pos: int, resp: ParsedResponse) -> int:
    body: List[bytes] = []
    resp.complete = False
    try:
        while True:
            line, pos = _line(data, pos)
            m = _CHUNK_RE.fullmatch(line)
            if m is None:
                raise ParseError(f"malformed chunk-size line {line!r}")
            size = int(m.group(1), 16)
            if size == 0:
                resp.trailers, pos = _fields(data, pos)
                resp.complete = True
                return pos
            chunk = data[pos : pos + size]
            tail = data[pos + size : pos + size + 2]
            if tail != b"\r\n"[: len(tail)]:
                raise ParseError(f"chunk of {size} bytes not followed by CRLF: {tail!r}")
            if len(chunk) < size or len(tail) < 2:
                body.append(chunk)
                raise _Incomplete()
            body.append(chunk)
            resp.chunks.append(chunk)
            pos += size + 2
    except _Incomplete:
        return len(data)
    finally:
        resp.body = b"".join(body)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def _exitCode(reason: Failure) -> int:
    value = reason.value
    code = getattr(value, "exitCode", None)
    if code is not None:
        return int(code)
    sig = getattr(value, "signal", None)
    return -int(sig) if sig is not None else 0


def _executable(argv: Sequence[str]) -> str:
    if not argv:
        raise ValueError("empty argv")
    if os.sep in argv[0]:
        return argv[0]
    found = shutil.which(argv[0])
    if found is None:
        raise FileNotFoundError(f"{argv[0]!r} not found on PATH")
    return found


def project_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """
    C{os.environ} plus L{PROJECT_ROOT} first on C{PYTHONPATH} (so children
    import this checkout's C{txawsgi} and see its C{twisted/plugins}
    dropin), updated with C{extra}.
    """
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PROJECT_ROOT + (os.pathsep + old if old else "")
    env.update(extra or {})
    return env


def twistd_argv(*args: str) -> List[str]:
    """
    argv running C{twistd} with this interpreter, e.g.
    C{twistd_argv("-n", "awsgi", "--port", ...)}.
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args]


class _Collect(ProcessProtocol):
    def __init__(self, stdin: Optional[bytes]) -> None:
        self._stdin = stdin
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(_exitCode(reason))


def spawn(
    argv: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    path: Optional[str] = None,
    *,
    stdin: Optional[bytes] = None,
    timeout: float = 30,
) -> Deferred[Tuple[int, bytes, bytes]]:
    """
    Run C{argv} to completion; fire with C{(exitcode, stdout, stderr)}.
    The exit code is negative (C{-signum}) if a signal killed it.

    C{argv[0]} is looked up on C{PATH}.  C{env=None} inherits C{os.environ}
    (unlike C{spawnProcess}'s default of an empty environment); see
    L{project_env}.  C{stdin} is written then closed (closed at once if
    L{None}).  After C{timeout} seconds the process is killed and the
    Deferred errbacks with L{WaitTimeout} showing its output.
    """
    proto = _Collect(stdin)
    reactor = _reactor()
    reactor.spawnProcess(
        proto,
        _executable(argv),
        list(argv),
        env=dict(env) if env is not None else None,
        path=path,
    )
    timedOut: List[bool] = []

    def kill() -> None:
        timedOut.append(True)
        try:
            proto.transport.signalProcess("KILL")
        except ierror.ProcessExitedAlready:
            pass

    timer = reactor.callLater(timeout, kill)

    def ended(code: int) -> Tuple[int, bytes, bytes]:
        if timer.active():
            timer.cancel()
        out, err = b"".join(proto.out), b"".join(proto.err)
        if timedOut:
            raise WaitTimeout(
                f"{list(argv)!r} still running after {timeout}s, killed; "
                f"stdout: {_preview(out)}; stderr: {_preview(err)}"
            )
        return code, out, err

    return proto.ended.addCallback(ended)


def curl_available() -> bool:
    """
    Whether a C{curl} executable is on C{PATH}.
    """
    return shutil.which("curl") is not None


def run_curl(
    args: Sequence[str], *, timeout: float = 30, env: Optional[Mapping[str, str]] = None
) -> Deferred[Tuple[int, bytes, bytes]]:
    """
    Run C{curl -q --noproxy '*' -sS <args>}: no C{.curlrc}, no proxy from the
    environment, no progress meter but errors on stderr.  Fires with
    C{(exitcode, stdout, stderr)}.  Tests should C{raise SkipTest} unless
    L{curl_available}().
    """
    return spawn(["curl", "-q", "--noproxy", "*", "-sS", *args], env=env, timeout=timeout)


class ProcessHandle(ProcessProtocol):
    """
    A long-running child process (e.g. C{twistd -n ...}) for one test::

        proc = ProcessHandle.start(self, twistd_argv("-n", "awsgi", ...),
                                   env=project_env())
        yield proc.wait_for_output(b"Site starting", timeout=10)
        ...
        code = yield proc.terminate()

    The cleanup registered on the test case terminates it if still running
    (SIGTERM, then SIGKILL after 5 s).

    @ivar out: stdout so far.  @ivar err: stderr so far.
    @ivar output: stdout and stderr interleaved in arrival order.
    @ivar exit_code: L{None} while running, then as for L{spawn}.
    """

    def __init__(self) -> None:
        self.argv: List[str] = []
        self._out = bytearray()
        self._err = bytearray()
        self._all = bytearray()
        self.exit_code: Optional[int] = None
        self.ended: Deferred[int] = Deferred()
        self._enders: List[Deferred[int]] = []
        self._waits = _WaitSet(lambda: self.output, "output")

    @classmethod
    def start(
        cls,
        testcase: TestCase,
        argv: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        path: Optional[str] = None,
    ) -> "ProcessHandle":
        """
        Spawn C{argv} (C{env}/C{path} as for L{spawn}; stdin stays open,
        see L{write} / L{close_stdin}).
        """
        handle = cls()
        handle.argv = list(argv)
        _reactor().spawnProcess(
            handle,
            _executable(argv),
            list(argv),
            env=dict(env) if env is not None else None,
            path=path,
        )
        testcase.addCleanup(handle._cleanup)
        return handle

    @property
    def pid(self) -> Optional[int]:
        return self.transport.pid if self.transport is not None else None

    @property
    def out(self) -> bytes:
        return bytes(self._out)

    @property
    def err(self) -> bytes:
        return bytes(self._err)

    @property
    def output(self) -> bytes:
        return bytes(self._all)

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def outReceived(self, data: bytes) -> None:
        self._out += data
        self._all += data
        self._waits.poll()

    def errReceived(self, data: bytes) -> None:
        self._err += data
        self._all += data
        self._waits.poll()

    def processEnded(self, reason: Failure) -> None:
        self.exit_code = _exitCode(reason)
        self._waits.end(f"process exited with {self.exit_code}")
        for d in self._enders:
            d.callback(self.exit_code)
        self._enders = []
        self.ended.callback(self.exit_code)

    def wait_for_output(
        self,
        expected: Union[bytes, Callable[[bytes], Any]],
        timeout: float = 10,
        *,
        after: int = 0,
    ) -> Deferred[Any]:
        """
        Like L{RawClient.wait_for}, over L{output}; fails at once with
        L{ClosedBeforeMatch} if the process exits first.
        """
        check, describe = _matcher(expected, lambda: self._all, lambda: self.output, after)
        ended = None if self.running else f"process exited with {self.exit_code}"
        return self._waits.add(check, describe, timeout, ended)

    def wait_exit(self, timeout: float = 10) -> Deferred[int]:
        """
        Fire with the exit code once the process ends by itself.
        """
        if not self.running:
            assert self.exit_code is not None
            return succeed(self.exit_code)
        d: Deferred[int] = Deferred()
        self._enders.append(d)
        d.addTimeout(timeout, _reactor())
        return d

    def write(self, data: bytes) -> None:
        """
        Write to the child's stdin.
        """
        self.transport.write(data)

    def close_stdin(self) -> None:
        self.transport.closeStdin()

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{"TERM"}, C{"INT"}, C{"HUP"}, C{"KILL"}...);
        ignored if the process has already exited.
        """
        try:
            self.transport.signalProcess(name)
        except ierror.ProcessExitedAlready:
            pass

    def terminate(self, timeout: float = 5) -> Deferred[int]:
        """
        SIGTERM, then SIGKILL if still running after C{timeout} seconds; fire
        with the exit code.  Note C{-15} does not mean "unclean": current
        C{twistd} shuts down cleanly on SIGTERM and then re-raises the
        signal, so a clean twistd shutdown also ends with C{-15} (check the
        output for C{"Server Shut Down."}); C{-9} means it had to be killed.
        """
        if not self.running:
            assert self.exit_code is not None
            return succeed(self.exit_code)
        d: Deferred[int] = Deferred()
        self._enders.append(d)
        self.signal("TERM")
        timer = _reactor().callLater(timeout, self.signal, "KILL")

        def done(code: int) -> int:
            if timer.active():
                timer.cancel()
            return code

        return d.addCallback(done)

    def _cleanup(self) -> Optional[Deferred[int]]:
        return None if not self.running else self.terminate()


# ---------------------------------------------------------------------------
# WSGI validation
# ---------------------------------------------------------------------------


def validated(app: Callable[..., Any]) -> Callable[..., Any]:
    """
    C{app} wrapped in C{wsgiref.validate.validator}.  Use it together with
    L{assert_no_wsgi_warnings} (or L{check_validator_clean}), which turn the
    validator's complaints into test failures::

        def test_x(self):
            assert_no_wsgi_warnings(self)          # FIRST: its cleanup must
            server = yield listen(self, AWSGIResource(reactor, validated(app)))
            ...                                    # run after the server's

    The validator reports problems three ways:
     - C{AssertionError} raised inside the app/start_response/write/iterator
       calls: the container sees an app exception (and should log it, which
       trial turns into a test error);
     - C{WSGIWarning}s via C{warnings.warn}: trial collects them, and
       L{check_validator_clean} fails on them;
     - an iterator garbage-collected without C{close()}: an unraisable
       C{AssertionError} in C{__del__}, caught by L{assert_no_wsgi_warnings}.

    Caveats: the validator hides the app's iterable behind its own wrapper
    (type checks and C{wsgi.file_wrapper} identity no longer work), requires
    C{wsgi.input.read()} to get exactly one argument, and forbids
    C{wsgi.input.close()}.
    """
    return validator(app)


def check_validator_clean(testcase: TestCase) -> None:
    """
    C{gc.collect()}, then fail C{testcase} if any C{WSGIWarning} was emitted
    during the test.  Other warnings are re-emitted so trial still reports
    them.
    """
    gc.collect()
    flushed = testcase.flushWarnings()
    bad = []
    for w in flushed:
        if issubclass(w["category"], WSGIWarning):
            bad.append(w)
        else:
            warnings.warn_explicit(w["message"], w["category"], w["filename"], w["lineno"])
    if bad:
        testcase.fail(
            "wsgiref.validate warnings:\n"
            + "\n".join(f"  {w['filename']}:{w['lineno']}: {w['message']}" for w in bad)
        )


class WSGIValidation:
    """
    Made by L{assert_no_wsgi_warnings}: collects validator complaints that
    Python would otherwise only print (unraisable exceptions from
    C{wsgiref.validate}'s C{__del__}).

    @ivar unraisable: messages collected so far.
    """

    def __init__(self, testcase: TestCase) -> None:
        self.testcase = testcase
        self.unraisable: List[str] = []
        self._previous: Optional[Callable[[Any], Any]] = None

    def install(self) -> None:
        self._previous = sys.unraisablehook
        sys.unraisablehook = self._hook

    def uninstall(self) -> None:
        if self._previous is not None:
            sys.unraisablehook = self._previous
            self._previous = None

    def _hook(self, unraisable: Any) -> None:
        tb = unraisable.exc_traceback
        fromValidator = False
        while tb is not None:
            if tb.tb_frame.f_globals.get("__name__") == "wsgiref.validate":
                fromValidator = True
            tb = tb.tb_next
        if fromValidator:
            self.unraisable.append(f"{unraisable.exc_type.__name__}: {unraisable.exc_value}")
        elif self._previous is not None:
            self._previous(unraisable)

    def check(self) -> None:
        """
        Collect garbage, then fail the test on any WSGIWarning or collected
        unraisable validator error.  Resets what it reported.
        """
        gc.collect()
        found, self.unraisable = self.unraisable, []
        check_validator_clean(self.testcase)
        if found:
            self.testcase.fail("wsgiref.validate errors:\n  " + "\n  ".join(found))

    def _cleanup(self) -> None:
        try:
            self.check()
        finally:
            self.uninstall()


def assert_no_wsgi_warnings(testcase: TestCase) -> WSGIValidation:
    """
    Make every C{wsgiref.validate} complaint during this test a failure: at
    cleanup, collect garbage and fail on C{WSGIWarning}s and on unraisable
    validator errors (unclosed iterators).  Call it at the very start of the
    test, before L{listen}, so that (cleanups being LIFO) the check runs
    after the server and its connections have been shut down.
    """
    validation = WSGIValidation(testcase)
    validation.install()
    testcase.addCleanup(validation._cleanup)
    return validation
