"""
L{AWSGISite}: a Twisted site that streams request bodies to AWSGI resources.

Twisted reads every request body into memory or a temporary file before any
resource runs.  An L{AWSGISite} looks at the resource a request reaches as
soon as its headers are in: if that resource provides L{IAWSGIResource} and
a body is coming, the request is dispatched right away and the body is fed
to it as it arrives, with backpressure.  Every other resource in the tree
keeps Twisted's buffered behaviour.

HTTP/2 streams (Twisted's C{H2Connection}) keep the buffered behaviour too:
Twisted's HTTP/2 code does not expose the request head before the body.
"""

from __future__ import annotations

import copy
import fcntl
import termios
from enum import auto
from io import BytesIO
from typing import Any, Optional, cast

from twisted.internet.interfaces import IHalfCloseableDescriptor, IPushProducer, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import basic
from twisted.python.failure import Failure
from twisted.web import http, resource as _resource, server
from twisted.web.http import (  # (not through the module: a deprecation proxy)
    _ChunkedTransferDecoder,
    _IdentityTransferDecoder,
    datetimeToString,
    parse_qs,
    unquote,
)
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import implementer

from txawsgi.input import Body, IBodyFlow, IBodySink
from txawsgi.interfaces import IAWSGIResource
from txawsgi.states import Machine, State, edges
from txawsgi.wire import DIRECT, fields_of, http_date, parse_plain_head, send_head, set_fields
from txawsgi.limits import (
    DEFAULT_LIMITS,
    ChunkedDecoder,
    Head,
    Limits,
    MalformedChunk,
    Refused,
    guard_proxy_protocol,
    refusal,
)

# For sites behind haproxy: endpoints (see guard_proxy_protocol).
guard_proxy_protocol()

try:
    from twisted.web.http import _GenericHTTPChannelProtocol
except ImportError:  # pragma: no cover - a Twisted that moved it
    _GenericHTTPChannelProtocol = None  # type: ignore[misc,assignment]

#: Whether the channel may take plain heads whole and skip Twisted's
#: per-request steps that change nothing for them (see L{txawsgi.wire});
#: needs the HTTPChannel internals it stands in for.
_FAST = (
    DIRECT
    and hasattr(http.HTTPChannel, "_HTTPChannel__first_line")
    and hasattr(http.HTTPChannel, "_finishRequestBody")
)

_SERVER_VERSION: bytes = server.version

#: A connection the server closes (after a response that ends it, one that
#: ended before its request body did, a refusal, a timeout) shuts its write
#: half once the response is out and keeps reading and discarding, so the
#: client sees the response, not a reset, before it is closed: until the
#: client closes, or has sent nothing for C{LINGER} seconds once the response
#: is out (Apache's lingering close).  A client still sending (the rest of a
#: body it sends before it reads anything, as C{requests} does) is read for
#: as long as it sends, up to C{LINGER_MAX} seconds.  A client that said it
#: was done and left nothing unread is closed at once (see
#: L{AWSGIChannel.loseConnection}).
LINGER = 2.0
#: The most a lingering connection is read for while its client keeps
#: sending (nginx's C{lingering_time}).
LINGER_MAX = 30.0


def _unread(transport: Any) -> int:
    """
    How many received bytes wait in the kernel for C{transport}'s socket
    (C{FIONREAD}); C{-1} when that cannot be told.
    """
    try:
        return int.from_bytes(fcntl.ioctl(transport.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little", signed=True)
    except (AttributeError, OSError, ValueError):
        return -1


class Teardown(State):
    """
    How a connection the server closes gets there (see L{LINGER}).
    """

    #: Serving requests.
    OPEN = auto()
    #: The close has begun: the last response is still going out (the write
    #: half shuts once it is); what the client sends is read and dropped.
    FLUSHING = auto()
    #: The write half is shut (the response is all with the kernel); what
    #: the client sends is read and dropped until it closes or goes quiet.
    LINGERING = auto()
    #: The socket is closed, or closing without lingering.
    CLOSED = auto()


_TEARDOWN_EDGES = edges(
    Teardown,
    {
        Teardown.OPEN: {Teardown.FLUSHING, Teardown.CLOSED},
        Teardown.FLUSHING: {Teardown.LINGERING, Teardown.CLOSED},
        Teardown.LINGERING: {Teardown.CLOSED},
        Teardown.CLOSED: set(),
    },
)


@implementer(IPushProducer)
class _Valve:
    """
    The transport's reading, paused while anyone wants it paused: the channel
    (its own pipelining and write-side backpressure) or a streamed body (its
    high-water mark).  Each party's pause is a reason, not a count.
    """

    __slots__ = ("_producer", "_reasons")

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._reasons: set[str] = set()

    def hold(self, reason: str) -> None:
        if not self._reasons:
            self._producer.pauseProducing()
        self._reasons.add(reason)

    def release(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                self._producer.resumeProducing()

    # What HTTPChannel calls on its network producer:
    def pauseProducing(self) -> None:
        self.hold("channel")

    def resumeProducing(self) -> None:
        if self._reasons:
            self.release("channel")

    def stopProducing(self) -> None:
        self._producer.stopProducing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


@implementer(IBodyFlow)
class AWSGIRequest(server.Request):
    """
    A request that can be dispatched when its headers are in.

    @ivar body_sink: where the body goes once dispatched (set by the resource
        that took the request).
    """

    _log = Logger()

    channel: "AWSGIChannel"
    dispatched_at_headers = False
    body_sink: Optional[IBodySink] = None
    _body_complete = False
    _continue_sent = False
    #: The channel refused this request's body after dispatching it (and
    #: answered for it): nothing the application writes goes out.
    _refused = False

    def dispatch_at_headers(self, command: bytes, uri: bytes, version: bytes) -> bool:
        """
        Find the resource for this request before its body arrives; if it is
        an AWSGI resource, render it now and return C{True}.  Otherwise leave
        the request as it was (Twisted will process it once the body is in).
        """
        self.method, self.uri, self.clientproto = command, uri, version
        path, _, query = uri.partition(b"?")
        self.path = path
        self.site = self.channel.site
        self.prepath = []
        self.postpath = list(map(unquote, path[1:].split(b"/")))
        try:
            resource = self.site.getResourceFor(self)
        except Exception:
            resource = None
        if resource is None or not IAWSGIResource.providedBy(resource) or path == b"*":
            del self.method, self.uri, self.clientproto, self.path, self.prepath, self.postpath
            return False
        self.args = parse_qs(query, 1) if query else {}
        self.dispatched_at_headers = True
        self.setHeader(b"Server", _SERVER_VERSION)
        self.setHeader(b"Date", datetimeToString())
        try:
            self.render(resource)
        except Exception:
            self.processingFailed(Failure())
        return True

    def handleContentChunk(self, data: bytes) -> None:
        if not self.dispatched_at_headers:
            super().handleContentChunk(data)
        elif self.body_sink is not None:
            self.body_sink.feed(data)

    def gotLength(self, length: Optional[int]) -> None:
        if length == 0 and getattr(getattr(self.channel, "site", None), "getContentFile", None) is None:
            # What Twisted would pick, without its AttributeError.
            self.content = BytesIO()
            return
        super().gotLength(length)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.dispatched_at_headers:
            content = self.content
            if not _FAST or content is None or content.tell():
                super().requestReceived(command, path, version)
                return
            # No body: nothing for Twisted to rewind or parse as a form.
            self.method, self.uri, self.clientproto = command, path, version
            self.path, query_mark, query = path.partition(b"?")
            self.args = parse_qs(query, 1) if query_mark else {}
            self.process()
            return
        self._body_complete = True
        if self.body_sink is not None:
            self.body_sink.end()

    def process(self) -> None:
        """
        Twisted's C{process}, with the default C{Server} and C{Date} headers
        put straight into the response headers (the date formatted once a
        second) and paths without C{%} left as they are.
        """
        if not _FAST:
            super().process()
            return
        site = self.site = self.channel.site
        fields = fields_of(self.responseHeaders)
        fields[b"Server"] = [_SERVER_VERSION]
        fields[b"Date"] = [http_date()]
        self.prepath = []
        path = self.path
        segments = path[1:].split(b"/")
        self.postpath = list(map(unquote, segments)) if b"%" in path else segments
        if path == b"*":
            self._handleStar()
            return
        try:
            found = site.getResourceFor(self)
            if _resource._IEncodingResource.providedBy(found):
                encoder = found.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(found)
        except BaseException:
            self.processingFailed(Failure())

    def connectionLost(self, reason: Failure) -> None:
        if self.dispatched_at_headers and not self._body_complete and self.body_sink is not None:
            self.body_sink.lose(cast(BaseException, reason.value))
        super().connectionLost(reason)

    def write(self, data: bytes) -> None:
        if self._refused:
            return
        if not self.startedWriting and self.dispatched_at_headers and self._ends_before_body():
            # The connection will close after this response (see finish):
            # say so in it (RFC 9112 section 9.6), so the client does not
            # reuse it.
            self.channel.persistent = False
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        if self.startedWriting or not send_head(self, data):
            super().write(data)

    def _ends_before_body(self) -> bool:
        """
        Whether a response starting now will almost surely end before the
        request body does: the body is still coming but the application
        never asked for it, or it was refused (too large).
        """
        if not self.dispatched_at_headers or self._body_complete or self.channel is None:
            return False
        sink = self.body_sink
        return not self._continue_sent or sink is None or getattr(sink, "state", Body.OPEN) is not Body.OPEN

    def finish(self) -> None:
        if self.dispatched_at_headers and not self._body_complete and self.channel is not None:
            # Answered before the body ended: the rest of the body must never
            # be parsed as a request.  Let the client read the response, then
            # close.
            self.channel.linger_after(self)
        if (
            not _FAST
            or self._encoder is not None
            or self.finished
            or self._disconnected
            or self.queued
            or self.producer is not None
        ):
            super().finish()
            return
        # Twisted's finish, in one frame rather than four: end a chunked
        # body, log, hand the channel its next request, release the body
        # file, fire notifyFinish.
        if not self.startedWriting:
            self.write(b"")
        channel = self.channel
        if self.chunked:
            channel.write(b"0\r\n\r\n")
        factory = getattr(channel, "factory", None)
        if factory is not None:
            factory.log(self)
        self.finished = 1
        channel.requestDone(self)
        del self.channel
        content = self.content
        if content is not None:
            try:
                content.close()
            except OSError:
                pass
            del self.content
        if self.notifications:
            for finished in self.notifications:
                finished.callback(None)
            self.notifications = []

    # -- IBodyFlow ------------------------------------------------------------

    def pause_reading(self) -> None:
        if self.channel is not None:
            self.channel.valve.hold("body")

    def resume_reading(self) -> None:
        if self.channel is not None:
            self.channel.valve.release("body")

    def send_continue(self) -> None:
        if self._continue_sent or self.startedWriting or self.channel is None:
            return
        self._continue_sent = True
        expect = self.requestHeaders.getRawHeaders(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self.clientproto == b"HTTP/1.1":
            self.channel._send100Continue()


class AWSGIChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that lets an L{AWSGIRequest} take its body as it
    arrives and decide when to send C{100 Continue}.

    It also checks each request head against its site's L{Limits} and the
    rules of L{txawsgi.limits} before Twisted's parser sees it, decodes
    chunked bodies strictly, and answers what it refuses (and what Twisted's
    parser refuses) with a precise status, then closes.
    """

    #: Set by the site that built the channel.
    site: server.Site
    #: A TCP, TLS or UNIX transport (abortConnection, loseWriteConnection).
    transport: Any
    valve: _Valve
    limits: Limits = DEFAULT_LIMITS
    _teardown: Machine[Teardown]
    _lingering_request: Optional[AWSGIRequest] = None
    _linger_call: Any = None
    #: Bytes dropped since the linger timer last ran, and how often it ran.
    _linger_got = 0
    _linger_ticks = 0
    _head: Optional[Head] = None
    _authority: Optional[bytes] = None
    _refused = False
    #: The client said it sends nothing after the current request
    #: (L{checkPersistence}).
    _client_done = False
    # Twisted's own head limits, set from ours (L{_apply_limits}) so they
    # never trip before ours (which count more).
    MAX_LENGTH = DEFAULT_LIMITS.line_buffer
    totalHeadersSize = DEFAULT_LIMITS.head
    maxHeaders = DEFAULT_LIMITS.fields + 1

    def _apply_limits(self, limits: Limits) -> None:
        self.limits = limits
        self.MAX_LENGTH = limits.line_buffer
        self.totalHeadersSize = limits.head
        self.maxHeaders = limits.fields + 1 if limits.fields else limits.head

    def connectionMade(self) -> None:
        limits = getattr(getattr(self, "site", None), "limits", None)
        if isinstance(limits, Limits) and limits is not self.limits and limits != self.limits:
            self._apply_limits(limits)
        self._teardown = Machine(Teardown.OPEN, _TEARDOWN_EDGES)
        super().connectionMade()
        self.valve = self._networkProducer = _Valve(self._networkProducer)

    @property
    def _lingering(self) -> bool:
        """
        Whether the server is closing this connection, reading and dropping
        what the client still sends (L{Teardown}).
        """
        state = self._teardown.state
        return state is Teardown.FLUSHING or state is Teardown.LINGERING

    # -- request-head hardening (txawsgi.limits) -------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self._whole_head_received(data):
            super().dataReceived(data)
        if self._refused or not self.line_mode:
            return
        partial = len(self._buffer)
        head = self._head
        if head is None and not partial:
            # Between requests: every head so far came whole (the usual).
            return
        if not self.paused:
            # A line still without its end may already be over its limit.
            limits = self.limits
            if head is None:
                if limits.request_line and partial > limits.request_line + 1 and self.persistent:
                    self.refuse(Refused(414, b"URI Too Long", f"request line over the limit of {limits.request_line} bytes"))
            elif (limits.field_size and partial > limits.field_size - 1) or head.size + partial > limits.head:
                self.refuse(Refused(431, b"Request Header Fields Too Large", "a header field or the head over its limit"))
        if not self._refused:
            self.head_incomplete()

    def head_incomplete(self) -> None:
        """
        Called after data is read while a request head has begun but is not
        complete (not for heads that arrive whole): for subclasses that time
        heads (L{txawsgi.server.ServerChannel}).
        """

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        head = self._head
        if head is None and line and _FAST and self.persistent and self._plain_head(line):
            return
        try:
            if head is None:
                if line and self.persistent:
                    head = self._head = Head(self.limits)
                    line = head.request_line(line)
                # (Else Twisted eats one empty line before a request, or
                # drops what follows a request that ends the connection.)
            elif line:
                checked = head.field_line(line)
                if checked is None:
                    return
                line = checked
            else:
                self._head = None
                head.end()
                self._authority = head.authority
        except Refused as refused:
            self.refuse(refused)
            return
        super().lineReceived(line)

    def _whole_head_received(self, data: bytes) -> bool:
        """
        The common case, without C{LineReceiver}'s loop: C{data} starts a
        request and holds its whole head, which is plain.  Take it (as
        L{_plain_head} does) and return C{True}; anything that followed it
        is then read as C{LineReceiver} would.  Otherwise change nothing and
        return C{False}.
        """
        if not (
            _FAST
            and self.line_mode
            and not self._busyReceiving
            and not self._buffer
            and self._head is None
            and self.persistent
            and not self._refused
            and not self.paused
        ):
            return False
        end = data.find(b"\r\n")
        if end <= 0:
            return False
        self.resetTimeout()
        self._busyReceiving = True
        try:
            self._buffer = data[end + 2 :]
            if not self._plain_head(data[:end]):
                self._buffer = b""
                return False
        finally:
            self._busyReceiving = False
        transport = self.transport
        if self._buffer and not (transport is not None and transport.disconnecting):
            basic.LineReceiver.dataReceived(self, b"")
        return True

    def _plain_head(self, line: bytes) -> bool:
        """
        Take a request head whole, if it is complete in the buffer after its
        request line C{line} and plain (L{parse_plain_head}): the state
        Twisted's parser would reach line by line, in one step.  Return
        whether it did.
        """
        buffered = self._buffer
        parsed = parse_plain_head(line, buffered, self.limits)
        if parsed is None:
            return False
        command, target, version, fields, length, used = parsed
        self._buffer = buffered[used:]
        factory = self.requestFactory
        if INonQueuedRequestFactory.providedBy(factory):
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        self._command, self._path, self._version = command, target, version
        set_fields(request.requestHeaders, fields)
        if length:
            self.length = length
            self._transferDecoder = _IdentityTransferDecoder(
                length, request.handleContentChunk, self._finishRequestBody
            )
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()
        return True

    def lineLengthExceeded(self, line: bytes) -> None:
        limits = self.limits
        if self._head is None:
            self.refuse(Refused(414, b"URI Too Long", f"request line over the limit of {limits.line_buffer} bytes"))
        else:
            self.refuse(
                Refused(431, b"Request Header Fields Too Large", f"a header field over the limit of {limits.line_buffer} bytes")
            )

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's parser refused something txawsgi's checks let through.
        self.refuse(Refused(400, b"Bad Request", "malformed request"))

    def refuse(self, refused: Refused) -> None:
        """
        Answer a request that must not be served, then close the connection
        (lingering, so the client reads the answer rather than a reset).  A
        request the application already has (its body went bad) loses its
        body at once; if its response has started, the connection is cut.
        """
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._head = None
        self.clearLineBuffer()
        self._log.info(
            "Refused a request from {peer}: {refused}",
            peer=str(self.transport.getPeer()),
            refused=str(refused),
        )
        request = self.requests[-1] if self.requests else None
        if isinstance(request, AWSGIRequest) and request.dispatched_at_headers:
            sink = request.body_sink
            if sink is not None and not request._body_complete:
                request._body_complete = True
                sink.lose(ValueError(refused.reason))
            if request.startedWriting:
                self.persistent = False
                self.transport.abortConnection()
                return
            request._refused = True
        self.transport.write(refusal(refused.code, refused.phrase, refused.reason))
        self.persistent = False
        self.loseConnection()

    #: Both ends' addresses, asked of the transport once per connection
    #: (one attribute, not two: see L{getPeer}).
    _addresses: Any = None

    def getPeer(self) -> Any:
        """
        The peer's address, asked of the transport once per connection (each
        request records it; transports build a new address object per call).
        """
        addresses = self._addresses
        if addresses is None:
            # (Each request asks for both; fewer instance attributes keep
            # the channel's __dict__ a small key-sharing one.)
            addresses = self._addresses = (self.transport.getPeer(), self.transport.getHost())
        return addresses[0]

    def getHost(self) -> Any:
        """
        This end's address, asked of the transport once per connection.
        """
        addresses = self._addresses
        if addresses is None:
            addresses = self._addresses = (self.transport.getPeer(), self.transport.getHost())
        return addresses[1]

    _secure: Optional[bool] = None

    def isSecure(self) -> bool:
        """
        Whether the connection is TLS: asked per request, answered once per
        connection (Twisted adapts the transport to an interface each time).
        """
        secure = self._secure
        if secure is None:
            # (What Twisted asks, without its adapter lookup: TLS
            # transports provide the interface themselves.)
            secure = self._secure = ISSLTransport.providedBy(self.transport)
        return secure

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # Twisted keeps a connection alive unless the client asked for its
        # end: "Connection: close", or HTTP/1.0 (whose client then knows
        # not to reuse it).  A server deciding to close (draining) does not
        # get here, and lingers as for any other close.
        persistent: bool = super().checkPersistence(request, version)
        if not persistent:
            self._client_done = True
        return persistent

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        authority = self._authority
        if authority is not None:
            # (Set only for an absolute-form target.)
            self._authority = None
            # RFC 9112 section 3.2.2: an absolute-form target's authority is
            # the request's host, whatever Host says.
            request.requestHeaders.setRawHeaders(b"Host", [authority])
        decoder = self._transferDecoder
        if isinstance(decoder, _ChunkedTransferDecoder):
            self._transferDecoder = ChunkedDecoder(decoder.dataCallback, decoder.finishCallback, self.limits)
        fields = fields_of(request.requestHeaders) if DIRECT else None
        if fields is None or b"Cookie" in fields:
            request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        if (
            self.length != 0
            and isinstance(request, AWSGIRequest)
            and request.dispatch_at_headers(self._command, self._path, self._version)
        ):
            return
        request.gotLength(self.length)
        if fields is not None and b"Expect" not in fields:
            return
        expect = request.requestHeaders.getRawHeaders(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()

    def allContentReceived(self) -> None:
        requests = self.requests
        if not requests:
            # The request was answered before its body ended and the
            # connection is closing: swallow the rest.
            self._handlingRequest = True
            self._transferDecoder = None
            self.setRawMode()
            return
        if not _FAST:
            super().allContentReceived()
            return
        # HTTPChannel.allContentReceived, but for the idle timer: Twisted
        # stops it before processing the request and starts a new one when
        # it is done; most requests are answered before this returns, so
        # it is stopped only if the request outlives this call.
        command, path, version = self._command, self._path, self._version
        self.length = 0
        self._receivedHeaderCount = 0
        self._receivedHeaderSize = 0
        self._HTTPChannel__first_line = 1
        self._transferDecoder = None
        del self._command, self._path, self._version
        self._handlingRequest = True
        self.setRawMode()
        request = requests[-1]
        request.requestReceived(command, path, version)
        if self.timeOut and not request.finished:
            self._savedTimeOut = self.setTimeout(None)

    def rawDataReceived(self, data: bytes) -> None:
        if self._lingering or self._refused:
            return
        try:
            super().rawDataReceived(data)
        except MalformedChunk as malformed:
            self.refuse(malformed.refused)

    def requestDone(self, request: Any) -> None:
        if not _FAST:
            super().requestDone(request)
            return
        # HTTPChannel.requestDone, without its Python-level Request.__ne__
        # and the join of an empty pipelining buffer.
        requests = self.requests
        if requests[0] is not request:
            raise TypeError
        del requests[0]
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        if not self.persistent:
            self.loseConnection()
            return
        self._handlingRequest = False
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)
        buffered = self._dataBuffer
        if buffered:
            self._dataBuffer = []
            self.setLineMode(b"".join(buffered))
        else:
            self.line_mode = 1

    def linger_after(self, request: AWSGIRequest) -> None:
        """
        C{request} was answered before its body ended: close the connection
        once the response is out, reading (and dropping) what the client
        still sends meanwhile, so it sees the response rather than a reset.
        """
        self.persistent = False
        self._lingering_request = request

    def loseConnection(self) -> None:
        # Every close the server starts on a socket lingers: a client still
        # sending (a pipelined request after "Connection: close", the rest
        # of a body, a refused head) would otherwise get a reset that
        # destroys the response it has not read yet.  Not when the client
        # said it was done and nothing it sent is left unread, the usual
        # "Connection: close" request: then there is nothing to reset it.
        # (Transports that cannot half-close linger only where a body is
        # known to follow.)
        teardown = self._teardown
        if teardown.state is not Teardown.OPEN:
            return
        transport = self.transport
        if transport is None or (
            self._lingering_request is None
            and not self._refused
            and (not IHalfCloseableDescriptor.providedBy(transport) or self._nothing_follows())
        ):
            teardown.to(Teardown.CLOSED)
            super().loseConnection()
            return
        self._lingering_request = None
        teardown.to(Teardown.FLUSHING)
        self.dataReceived = self._discard  # type: ignore[method-assign]
        self.valve.unregisterProducer()
        self.valve.release("body")
        self.valve.release("channel")
        try:
            # Shuts the write half once the response is out.
            transport.loseWriteConnection()
        except AttributeError:
            teardown.to(Teardown.CLOSED)
            transport.loseConnection()
            return
        self._linger_got = self._linger_ticks = 0
        self._linger_call = self.callLater(LINGER, self._linger_tick)

    def _nothing_follows(self) -> bool:
        """
        Whether the client said it sends nothing more and nothing it sent
        is unread, here or in the kernel: a plain close cannot reset it.
        """
        return (
            self._client_done
            and not self._buffer
            and not self._dataBuffer
            and not self._transferDecoder
            and _unread(self.transport) == 0
        )

    def _discard(self, data: bytes) -> None:
        # What the client sends while the connection closes.
        self._linger_got += len(data)

    def _linger_tick(self) -> None:
        """
        Every L{LINGER} seconds while closing: close once the response is
        out and the client has sent nothing for a whole period, or once it
        has sent for L{LINGER_MAX} seconds.  A response still going out to a
        quiet client (a slow reader) is left to go out.
        """
        self._linger_call = None
        transport = self.transport
        teardown = self._teardown
        if transport is None or not transport.connected or not self._lingering:
            return
        got, self._linger_got = self._linger_got, 0
        self._linger_ticks += 1
        over = self._linger_ticks * LINGER >= LINGER_MAX
        if teardown.state is Teardown.FLUSHING and getattr(transport, "_writeDisconnected", True):
            teardown.to(Teardown.LINGERING)
        if teardown.state is Teardown.LINGERING:
            if not got or over:
                teardown.to(Teardown.CLOSED)
                transport.loseConnection()
                return
        elif got and over:
            # Sending for ever, reading nothing of the response.
            teardown.to(Teardown.CLOSED)
            transport.abortConnection()
            return
        self._linger_call = self.callLater(LINGER, self._linger_tick)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        call, self._linger_call = self._linger_call, None
        if call is not None and call.active():
            call.cancel()
        teardown = getattr(self, "_teardown", None)
        if teardown is not None and teardown.state is not Teardown.CLOSED:
            teardown.to(Teardown.CLOSED)
        super().connectionLost(reason)
        # Hold nothing of the requests (Twisted leaves them listed, and a
        # body cut short its decoder, whose callback is the request, whose
        # sink is the exchange): a channel kept after its connection (by a
        # tracker, a log) must not keep their applications' objects alive.
        self.requests = []
        self._transferDecoder = None
        self._lingering_request = None


def _channel_protocol(factory: http.HTTPFactory) -> Any:
    """
    The protocol of an L{AWSGISite}: Twisted's HTTP/1.1-or-HTTP/2 switch
    around an L{AWSGIChannel}.
    """
    if _GenericHTTPChannelProtocol is None:  # pragma: no cover
        return AWSGIChannel()
    return _GenericHTTPChannelProtocol(AWSGIChannel())


class AWSGISite(server.Site):
    """
    A L{server.Site} whose requests to AWSGI resources stream their bodies.

    Use it wherever you would use a C{Site}: C{AWSGISite(resource)}.  Other
    resources in the tree are served exactly as by a plain C{Site}.
    """

    requestFactory = AWSGIRequest
    protocol = _channel_protocol
    #: The request-head limits its connections apply (see L{Limits}); set
    #: an instance's before it listens.
    limits: Limits = DEFAULT_LIMITS

    def getResourceFor(self, request: Any) -> Any:
        # Site.getResourceFor, without copy.copy's dispatch for a list.
        request.site = self
        prepath = request.prepath
        request.sitepath = prepath.copy() if type(prepath) is list else copy.copy(prepath)
        return _resource.getChildForRequest(self.resource, request)


__all__ = ["AWSGISite", "AWSGIRequest", "AWSGIChannel"]
