"""
Test WSGI applications served by txawsgi deterministically, in memory.

An L{AppClient} serves an application (or an L{AWSGIResource}) from an
L{AWSGISite} over in-memory connections (L{twisted.test.iosim}) and talks to
talks to it as an HTTP/1.1 client that parses each response as it arrives,
all driven by a controllable clock (L{MemoryReactor}).  Nothing happens until the test says so: L{AppClient.pump}
moves bytes and runs what is due now, L{AppClient.advance} moves time
forward.  So a long-poll, a server-sent-event stream or an upload handler
can be tested step by step, without sockets and without sleeping::

    from twisted.trial.unittest import SynchronousTestCase
    from txawsgi.testing import AppClient

    class LongPollTests(SynchronousTestCase):
        def test_wakes_up(self):
            client = AppClient(make_app())
            waiting = client.get(b"/wait")          # sent, served, pumped
            self.assertIsNone(waiting.status)       # no answer yet
            client.post(b"/publish", body=b"hi")
            self.assertEqual(waiting.status, 200)
            self.assertEqual(waiting.body(), b"hi")

        def test_times_out(self):
            client = AppClient(make_app())
            waiting = client.get(b"/wait")
            client.advance(30)                      # the app's callLater fires
            self.assertEqual(waiting.status, 204)

A request body can be sent in pieces (C{stream=True}), and the response read
as it arrives (L{AppResponse.body_so_far}, L{AppResponse.take})::

    client = AppClient(upload_app, stream_input=True)
    upload = client.post(b"/upload", stream=True)     # chunked, no body yet
    upload.send_body_piece(b"x" * 1000)
    self.assertEqual(upload.take(), b"received 1000\\n")   # a progress line
    upload.finish_body()
    self.assertTrue(upload.complete)

For simple request/response tests, U{treq<https://treq.readthedocs.io/>}'s
C{treq.testing.StubTreq} works too, given an L{AWSGIResource} built on a
L{MemoryReactor}; L{settle} runs the application's scheduled calls and
flushes the stub until both are quiet::

    from treq.testing import StubTreq

    clock = MemoryReactor()
    treq = StubTreq(AWSGIResource(clock, app))
    d = treq.get("http://example.com/hello")
    settle(clock, treq)
    response = self.successResultOf(d)

Limits of the simulation: in-memory transports never push back, so
C{ctrl.writable} only reflects the controller's own queue and a paused
request body does not stop the client from sending; applications run in the
reactor thread (the default) or in greenlets, not in a threadpool, whose
threads would make the order of events nondeterministic.
"""

from __future__ import annotations

import itertools
import json
from enum import Enum, auto
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Site

from txawsgi.exchange import WSGIApplication
from txawsgi.resource import AWSGIResource
from txawsgi.site import AWSGISite

__all__ = ["AppClient", "AppResponse", "IncompleteResponse", "MemoryReactor", "ProtocolError", "settle"]

#: How many rounds L{AppClient.pump} and L{settle} make before deciding the
#: application is spinning (e.g. rescheduling itself with C{callLater(0)}).
MAX_ROUNDS = 10000

HeadersLike = Union[Headers, Mapping[Union[str, bytes], Union[str, bytes, Sequence[Union[str, bytes]]]], None]


class MemoryReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that an L{AWSGIResource} can serve from: it also
    has C{callFromThread}, which (as every call into this reactor happens in
    the test's thread) schedules the call for the next L{advance}.

    Time only moves when the test calls C{advance(seconds)}.  Like a real
    reactor, and unlike L{Clock.advance}, a call scheduled with
    C{callLater(0)} by a call that is running does not run in the same
    round, so a call that keeps rescheduling itself is reported
    (L{RuntimeError}) rather than looped on forever.
    """

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.callLater(0, callable, *args, **kwargs)

    def advance(self, amount: float) -> None:
        """
        Move time forward by C{amount} seconds and run the calls that fall
        due, round by round, until none is due.

        @raise RuntimeError: if calls are still due after L{MAX_ROUNDS}
            rounds.
        """
        self.rightNow += amount
        for _ in range(MAX_ROUNDS):
            if not _run_due(self):
                return
        raise RuntimeError(_SPINNING)

    def due(self) -> bool:
        """
        Whether a delayed call is due now (would run on C{advance(0)}).
        """
        return _due(self)


_SPINNING = f"still busy after {MAX_ROUNDS} rounds: is something rescheduling itself with callLater(0)?"


def _due(reactor: Any) -> bool:
    now = reactor.seconds()
    return any(call.getTime() <= now for call in reactor.getDelayedCalls())


def _run_due(reactor: Any) -> bool:
    """
    One reactor round: run the calls of C{reactor} (a L{Clock}) that are due
    now, but not those they schedule; whether there were any.
    """
    now = reactor.seconds()
    due = [call for call in reactor.getDelayedCalls() if call.getTime() <= now]
    for call in due:
        if call.active():
            reactor.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)
    return bool(due)


def settle(reactor: Any, *stubs: Any, max_rounds: int = MAX_ROUNDS) -> None:
    """
    Run C{reactor}'s due calls and C{flush()} each of C{stubs} (e.g. a
    C{treq.testing.StubTreq}) until neither has anything left to do now.

    @param reactor: the L{MemoryReactor} the resource under test was built
        with.
    @raise RuntimeError: if it is still busy after C{max_rounds} rounds.
    """
    for _ in range(max_rounds):
        ran = _run_due(reactor)
        for stub in stubs:
            stub.flush()
        if not ran and not _due(reactor):
            return
    raise RuntimeError(_SPINNING)


class IncompleteResponse(AssertionError):
    """
    L{AppResponse.body} was asked for a response whose body has not ended
    (or that failed).
    """


def _to_headers(headers: HeadersLike) -> Headers:
    if isinstance(headers, Headers):
        return headers
    result = Headers()
    for name, value in (headers or {}).items():
        values = [value] if isinstance(value, (str, bytes)) else list(value)
        result.setRawHeaders(
            name.encode("latin-1") if isinstance(name, str) else name,
            [v.encode("latin-1") if isinstance(v, str) else v for v in values],
        )
    return result


class _Parse(Enum):
    HEAD = auto()
    LENGTH = auto()
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_END = auto()
    TRAILERS = auto()
    UNTIL_CLOSE = auto()
    DONE = auto()


class ProtocolError(Exception):
    """
    The server's response could not be parsed as HTTP/1.1.
    """


class _ClientProtocol(Protocol):
    """
    The client side of one connection: writes one request as the test says,
    parses its response as it arrives.
    """

    def __init__(self, response: "AppResponse") -> None:
        self._response = response
        self._buffer = b""
        self._state = _Parse.HEAD
        self._remaining = 0

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._buffer and self._step():
                pass
        except ProtocolError:
            self._response._failed(Failure())
            if self.transport is not None:
                self.transport.loseConnection()

    def _step(self) -> bool:
        """
        Parse what the buffer holds for the current state; whether to go on.
        """
        state = self._state
        buffer = self._buffer
        if state is _Parse.HEAD:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, self._buffer = buffer[:end], buffer[end + 4 :]
            self._head(head)
            return True
        if state is _Parse.LENGTH or state is _Parse.CHUNK_DATA:
            piece, self._buffer = buffer[: self._remaining], buffer[self._remaining :]
            self._remaining -= len(piece)
            self._response._received(piece)
            if not self._remaining:
                self._state = _Parse.DONE if state is _Parse.LENGTH else _Parse.CHUNK_END
                if self._state is _Parse.DONE:
                    self._response._complete()
            return True
        if state is _Parse.UNTIL_CLOSE:
            self._buffer = b""
            self._response._received(buffer)
            return False
        if state is _Parse.DONE:
            self._buffer = b""
            return False
        end = buffer.find(b"\r\n")
        if end < 0:
            return False
        line, self._buffer = buffer[:end], buffer[end + 2 :]
        if state is _Parse.CHUNK_SIZE:
            try:
                self._remaining = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line!r}") from None
            self._state = _Parse.CHUNK_DATA if self._remaining else _Parse.TRAILERS
        elif state is _Parse.CHUNK_END:
            if line:
                raise ProtocolError(f"chunk not followed by CRLF: {line[:50]!r}")
            self._state = _Parse.CHUNK_SIZE
        elif state is _Parse.TRAILERS and not line:
            self._state = _Parse.DONE
            self._response._complete()
        return True

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0]!r}")
        code = int(parts[1])
        headers = Headers()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ProtocolError(f"bad header line {line!r}")
            headers.addRawHeader(name.strip(), value.strip())
        if 100 <= code < 200:
            self._response.interim.append(code)
            return
        self._response._head(code, parts[2] if len(parts) > 2 else b"", headers)
        te = b",".join(headers.getRawHeaders(b"transfer-encoding", [])).lower()
        length = headers.getRawHeaders(b"content-length")
        if self._response.method == b"HEAD" or code in (204, 304):
            self._state = _Parse.DONE
        elif b"chunked" in te:
            self._state = _Parse.CHUNK_SIZE
        elif length:
            try:
                self._remaining = int(length[0])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {length[0]!r}") from None
            self._state = _Parse.LENGTH if self._remaining else _Parse.DONE
        else:
            self._state = _Parse.UNTIL_CLOSE
        if self._state is _Parse.DONE:
            self._response._complete()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self._state is _Parse.UNTIL_CLOSE:
            self._state = _Parse.DONE
            self._response._complete()
        self._response._connection_lost(reason)


class AppResponse:
    """
    One request sent by an L{AppClient} on its own connection, and its
    response as it arrives.

    Everything reflects what the client has received so far: pump or advance
    the L{AppClient} to move things along.

    @ivar method: the request method.  @ivar path: the request target.
    @ivar status: the response status code, or L{None} until the response
        head has arrived (txawsgi sends it with the first body bytes).
    @ivar phrase: the reason phrase (L{bytes}), or L{None}.
    @ivar headers: the response L{Headers}, or L{None} until they arrive.
    @ivar interim: the codes of interim (1xx) responses received, e.g.
        C{[100]} once the server sent C{100 Continue}.
    @ivar chunks: the body as the client received it, piece by piece
        (chunked framing removed).
    @ivar complete: the body has ended as its framing said.
    @ivar failure: why the response could not be completed (the connection
        closed early, e.g. after L{disconnect}), or L{None}.
    @ivar connected: the connection is still open.
    """

    def __init__(self, client: "AppClient", method: bytes, path: bytes, chunked: bool) -> None:
        self._client = client
        self.method = method
        self.path = path
        self._chunked = chunked
        self._streamed = False
        self._body_finished = False
        self.status: Optional[int] = None
        self.phrase: Optional[bytes] = None
        self.headers: Optional[Headers] = None
        self.interim: List[int] = []
        self.chunks: List[bytes] = []
        self.complete = False
        self.failure: Optional[Failure] = None
        self.connected = True
        self._taken = 0
        self._size = 0
        self._connection: Optional[_Connection] = None

    def __repr__(self) -> str:
        state = "complete" if self.complete else "failed" if self.failure else "open"
        return f"<AppResponse {self.method.decode()} {self.path.decode()} status={self.status} {state} {self._size}B>"

    # -- what arrived --------------------------------------------------------

    @property
    def ended(self) -> bool:
        """
        Whether nothing more will arrive: the body is complete, or failed.
        """
        return self.complete or self.failure is not None

    def header(self, name: str) -> Optional[str]:
        """
        The first value of response header C{name} as text, or L{None}.
        """
        if self.headers is None:
            return None
        values = self.headers.getRawHeaders(name.encode("latin-1"))
        return values[0].decode("latin-1") if values else None

    def body_so_far(self) -> bytes:
        """
        Every body byte received so far.
        """
        return b"".join(self.chunks)

    def take(self) -> bytes:
        """
        The body bytes received since the last C{take()} (all of them, the
        first time): read a stream a step at a time.
        """
        data = self.body_so_far()[self._taken :]
        self._taken += len(data)
        return data

    def body(self) -> bytes:
        """
        The whole body.

        @raise IncompleteResponse: the body has not ended, or failed.
        """
        if not self.complete:
            why = f"failed: {self.failure.getErrorMessage()}" if self.failure else "still open (pump or advance the client?)"
            raise IncompleteResponse(f"{self!r}: the response body is {why}; received so far: {self.body_so_far()[:500]!r}")
        return self.body_so_far()

    def text(self, encoding: str = "utf-8") -> str:
        """
        L{body} decoded.
        """
        return self.body().decode(encoding)

    def json(self) -> Any:
        """
        L{body} parsed as JSON.
        """
        return json.loads(self.body())

    # -- the request side --------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._connection is not None and self.connected:
            self._connection.client_transport.write(data)

    def send_body_piece(self, data: bytes) -> None:
        """
        Send more of the request body (made with C{stream=True}; as one
        chunk if it is chunked), then pump.  Once the connection is closed
        the bytes go nowhere.
        """
        if not self._streamed or self._body_finished:
            raise ValueError("no request body is open: make the request with stream=True, and before finish_body()")
        if data:
            self._write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        self._client.pump()

    def finish_body(self) -> None:
        """
        End the request body (made with C{stream=True}): the last chunk of
        a chunked body; nothing to send for a declared length.  Then pump.
        """
        if not self._streamed or self._body_finished:
            raise ValueError("no request body is open: make the request with stream=True, and before finish_body()")
        self._body_finished = True
        if self._chunked:
            self._write(b"0\r\n\r\n")
        self._client.pump()

    def disconnect(self) -> None:
        """
        Close the client's side of the connection now, as a browser does
        when the user navigates away, then pump: the server sees the
        connection lost.
        """
        if self._connection is not None:
            self._connection.client_transport.loseConnection()
        self._client.pump()

    # -- from the client protocol ------------------------------------------

    def _head(self, code: int, phrase: bytes, headers: Headers) -> None:
        self.status = code
        self.phrase = phrase
        self.headers = headers

    def _received(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            self._size += len(data)

    def _complete(self) -> None:
        if not self.ended:
            self.complete = True

    def _failed(self, reason: Failure) -> None:
        if not self.ended:
            self.failure = reason

    def _connection_lost(self, reason: Failure) -> None:
        self.connected = False
        self._failed(reason)


class _Connection:
    def __init__(self, pump: iosim.IOPump, client_transport: iosim.FakeTransport, server_transport: iosim.FakeTransport) -> None:
        self.pump = pump
        self.client_transport = client_transport
        self.server_transport = server_transport

    @property
    def closed(self) -> bool:
        return bool(self.client_transport.disconnected and self.server_transport.disconnected)


class AppClient:
    """
    Serve an application in memory and send it requests, one connection per
    request.  See the module docstring.

    The thread that makes the first L{AppClient} is registered as the
    reactor thread (L{threadable.registerAsIOThread}) unless one already
    is, as a real reactor does when it starts.

    @param app: a WSGI application (served by an L{AWSGIResource} built
        here with C{resource_options}) or any L{IResource}, e.g. an
        L{AWSGIResource} you built on a L{MemoryReactor}.
    @param reactor: the L{MemoryReactor} serving it (default: the one C{app},
        an L{AWSGIResource}, was built with, else a new one).
    @param site: the server factory, built on the same reactor (default:
        an L{AWSGISite} around the resource, so request bodies stream).
    @param resource_options: keyword arguments for L{AWSGIResource}
        (C{stream_input}, C{max_body}, C{greenlets}, ...).

    @ivar reactor: the clock and reactor of the whole simulation.
    @ivar resource: the resource served.  @ivar site: the server factory.
    @ivar responses: every L{AppResponse}, in the order the requests were
        made.
    """

    #: The C{Host} header sent unless the request has one.
    host = b"localhost"

    def __init__(
        self,
        app: Union[WSGIApplication, IResource],
        *,
        reactor: Optional[MemoryReactorClock] = None,
        site: Optional[Site] = None,
        **resource_options: Any,
    ) -> None:
        resource: Any = None
        if IResource.providedBy(app):
            if resource_options:
                raise TypeError("resource options apply to an application, not to a resource")
            resource = app
            if reactor is None and isinstance(app, AWSGIResource):
                reactor = app._container.reactor
                if not isinstance(reactor, MemoryReactorClock):
                    raise ValueError(
                        "this AWSGIResource serves from a real reactor: build it with a "
                        "txawsgi.testing.MemoryReactor to drive it from a test"
                    )
        if reactor is None:
            reactor = MemoryReactor()
        if not hasattr(reactor, "callFromThread"):
            raise ValueError("the reactor needs callFromThread: use txawsgi.testing.MemoryReactor")
        if resource is None:
            resource = AWSGIResource(reactor, cast(WSGIApplication, app), **resource_options)
        if threadable.ioThread is None:
            # What a real reactor does as it starts: txawsgi tells the
            # reactor's thread (where waits switch greenlets, and calls need
            # no hop) from the others by it.
            threadable.registerAsIOThread()
        self.reactor: Any = reactor
        self.resource = resource
        self.site = site if site is not None else AWSGISite(resource, reactor=reactor)
        self.responses: List[AppResponse] = []
        self._connections: List[_Connection] = []
        self._ports = itertools.count(40000)

    # -- requests ----------------------------------------------------------

    def request(
        self,
        method: Union[bytes, str],
        path: Union[bytes, str],
        headers: HeadersLike = None,
        body: Optional[bytes] = None,
        *,
        stream: bool = False,
        length: Optional[int] = None,
    ) -> AppResponse:
        """
        Open a connection, send a request on it, then L{pump}.

        @param method: e.g. C{b"GET"}.
        @param path: the request target, with its query string
            (C{b"/wait?id=3"}).
        @param headers: request headers.  C{Host: localhost},
            C{Connection: close} and the body's framing are added unless
            given.
        @param body: the request body; with C{stream}, its first piece.
        @param stream: keep the body open, to send it in pieces with
            L{AppResponse.send_body_piece} and end it with
            L{AppResponse.finish_body}.
        @param length: with C{stream}, the C{Content-Length} to declare;
            L{None} sends the body chunked.
        @return: the response, as far as it has arrived.
        """
        if isinstance(method, str):
            method = method.encode("ascii")
        if isinstance(path, str):
            path = path.encode("utf-8")
        if length is not None and not stream:
            raise ValueError("length only applies with stream=True")
        sent = _to_headers(headers)
        chunked = stream and length is None and not sent.hasHeader(b"content-length")
        if not sent.hasHeader(b"host"):
            sent.setRawHeaders(b"Host", [self.host])
        if not sent.hasHeader(b"connection"):
            sent.setRawHeaders(b"Connection", [b"close"])
        if chunked:
            sent.setRawHeaders(b"Transfer-Encoding", [b"chunked"])
        elif stream and length is not None:
            sent.setRawHeaders(b"Content-Length", [b"%d" % length])
        elif body is not None or method in (b"POST", b"PUT", b"PATCH"):
            sent.setRawHeaders(b"Content-Length", [b"%d" % len(body or b"")])
        head = [b"%s %s HTTP/1.1" % (method, path)]
        for name, values in sent.getAllRawHeaders():
            head.extend(b"%s: %s" % (name, value) for value in values)
        response = AppResponse(self, method, path, chunked)
        self.responses.append(response)
        self._connect(response)
        response._write(b"\r\n".join(head) + b"\r\n\r\n")
        if stream:
            response._streamed = True
            if body:
                response._write(b"%x\r\n%s\r\n" % (len(body), body) if chunked else body)
        elif body:
            response._write(body)
        self.pump()
        return response

    def get(self, path: Union[bytes, str], headers: HeadersLike = None) -> AppResponse:
        """
        C{request(b"GET", path, headers)}.
        """
        return self.request(b"GET", path, headers)

    def post(
        self,
        path: Union[bytes, str],
        body: Optional[bytes] = None,
        headers: HeadersLike = None,
        *,
        stream: bool = False,
        length: Optional[int] = None,
    ) -> AppResponse:
        """
        C{request(b"POST", path, headers, body, stream=..., length=...)}.
        """
        return self.request(b"POST", path, headers, body, stream=stream, length=length)

    # -- the latest request, for short tests -------------------------------

    def _latest(self) -> AppResponse:
        if not self.responses:
            raise ValueError("no request was made")
        return self.responses[-1]

    def send_body_piece(self, data: bytes) -> None:
        """
        L{AppResponse.send_body_piece} on the latest request.
        """
        self._latest().send_body_piece(data)

    def finish_body(self) -> None:
        """
        L{AppResponse.finish_body} on the latest request.
        """
        self._latest().finish_body()

    def disconnect(self) -> None:
        """
        L{AppResponse.disconnect} on the latest request.
        """
        self._latest().disconnect()

    # -- time and I/O --------------------------------------------------------

    def pump(self, max_rounds: int = MAX_ROUNDS) -> None:
        """
        Run what is due now and move bytes both ways, until nothing more
        happens without time passing.

        @raise RuntimeError: if it is still busy after C{max_rounds} rounds.
        """
        for _ in range(max_rounds):
            ran = _run_due(self.reactor)
            moved = False
            for connection in list(self._connections):
                if connection.pump.pump(advanceClock=False):
                    moved = True
            if not (ran or moved or _due(self.reactor)):
                self._connections = [c for c in self._connections if not c.closed]
                return
        raise RuntimeError(_SPINNING)

    def advance(self, seconds: float, step: Optional[float] = None) -> None:
        """
        Move the clock forward C{seconds}, running the calls that fall due,
        then pump.  With C{step}, move in increments of C{step} seconds and
        pump after each (e.g. to see each tick of a one-second timer).
        """
        if step is None or step <= 0:
            self.reactor.advance(seconds)
            self.pump()
            return
        remaining = seconds
        while remaining > 1e-9:
            increment = min(step, remaining)
            self.reactor.advance(increment)
            self.pump()
            remaining -= increment

    def close(self) -> None:
        """
        Disconnect every open connection and pump (e.g. in a cleanup).
        """
        for connection in self._connections:
            connection.client_transport.loseConnection()
        self.pump()

    @property
    def open_connections(self) -> int:
        """
        How many connections are not yet closed on both sides.
        """
        return sum(1 for c in self._connections if not c.closed)

    # -- the in-memory network -----------------------------------------------

    def _connect(self, response: AppResponse) -> None:
        server_address = IPv4Address("TCP", "127.0.0.1", 80)
        client_address = IPv4Address("TCP", "127.0.0.1", next(self._ports))
        server = self.site.buildProtocol(client_address)
        if server is None:
            raise RuntimeError("the site refused the connection")
        client = _ClientProtocol(response)
        server_transport = iosim.FakeTransport(server, isServer=True, hostAddress=server_address, peerAddress=client_address)
        client_transport = iosim.FakeTransport(client, isServer=False, hostAddress=client_address, peerAddress=server_address)
        pump = iosim.connect(server, server_transport, client, client_transport, greet=False, clock=self.reactor)
        connection = _Connection(pump, client_transport, server_transport)
        self._connections.append(connection)
        response._connection = connection
