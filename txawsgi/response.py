"""
The response side of PEP 3333: C{start_response}, header validation, body
accounting and Content-Length enforcement.

This is the only module that writes response bytes to the Twisted request, so
every output rule lives here: headers leave with the first non-empty chunk,
never more than the declared Content-Length is sent, a short body closes the
connection, an error before output becomes a 500 and an error after output
aborts the connection so the client sees a truncated response.
"""

from __future__ import annotations

import re
from enum import auto
from typing import Any, Callable, Optional

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from txawsgi.errors import (
    BodyTooLarge,
    HopByHopHeader,
    InvalidBody,
    InvalidHeader,
    InvalidStatus,
    RequestTimedOut,
    StartResponseError,
)
from txawsgi.states import Machine, State, edges
from txawsgi.wire import DIRECT, fields_of, header_key, send_head

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: Connection-level headers the server owns (RFC 9110 7.6.1, PEP 3333).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

#: Headers Twisted sets before the app runs; the app's own replace them.
_SERVER_DEFAULTS = frozenset({b"Date", b"Server"})

#: A plain Twisted request's C{write}: L{send_head} does its first call's
#: work in one transport write.  (An L{AWSGIRequest} calls it itself.)
_TWISTED_WRITE = Request.write

ERROR_BODY = b"Internal Server Error\n"
TOO_LARGE_BODY = b"Request Entity Too Large\n"
TIMED_OUT_BODY = b"Service Unavailable: the request timed out\n"


class Phase(State):
    """
    Where a response is in its life.
    """

    #: C{start_response} has not been called.
    PENDING = auto()
    #: Status and headers are known but not sent.
    STARTED = auto()
    #: Headers are sent; body bytes are flowing.
    SENDING = auto()
    #: The response ended cleanly (or was cut deliberately and logged).
    COMPLETE = auto()
    #: The connection was aborted or lost; nothing more is written.
    ABORTED = auto()


_EDGES = edges(
    Phase,
    {
        Phase.PENDING: {Phase.STARTED, Phase.SENDING, Phase.ABORTED},
        Phase.STARTED: {Phase.STARTED, Phase.SENDING, Phase.ABORTED},
        Phase.SENDING: {Phase.COMPLETE, Phase.ABORTED},
        Phase.COMPLETE: set(),
        Phase.ABORTED: set(),
    },
)


#: Phases after which nothing is registered or written.
_ENDED = frozenset({Phase.COMPLETE, Phase.ABORTED})

#: The phases as module names, for the per-request paths: on Python 3.11
#: each C{Phase.X} goes through C{EnumType}'s C{__getattr__} hook (a
#: method-wrapper call, ten times the cost of a global), a dozen times a
#: request.
_PENDING, _STARTED, _SENDING, _COMPLETE, _ABORTED = (
    Phase.PENDING,
    Phase.STARTED,
    Phase.SENDING,
    Phase.COMPLETE,
    Phase.ABORTED,
)


def _latin1(value: Any, error: type[Exception], what: str) -> bytes:
    """
    Encode a native string as latin-1, or raise C{error} naming C{what}.
    """
    if type(value) is not str:
        raise error(f"{what} must be a native str, not {type(value).__name__}: {value!r}")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise error(f"{what} must be latin-1 encodable: {value!r}") from None


#: Validated statuses and header pairs.  Applications send the same
#: literals on every request, so each is checked once; bounded so varying
#: values (Content-Length, ETag) cannot grow it without limit.
_STATUSES: dict[str, tuple[int, bytes]] = {}
_HEADERS: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_CACHE_SIZE = 1024


def check_status(status: Any) -> tuple[int, bytes]:
    """
    Validate a PEP 3333 status string.

    @return: the code and the encoded reason phrase.
    @raise InvalidStatus: if it is not C{"NNN Reason"} in latin-1 without
        control characters.
    """
    if type(status) is str:
        checked = _STATUSES.get(status)
        if checked is not None:
            return checked
    raw = _latin1(status, InvalidStatus, "status")
    if _CONTROL.search(status) or status.find("\t") != -1:
        raise InvalidStatus(f"status contains a control character: {status!r}")
    code, space, reason = status.partition(" ")
    if len(code) != 3 or not code.isdigit() or not space or code[0] == "0":
        raise InvalidStatus(f"status must look like '200 OK': {status!r}")
    checked = int(code), raw[4:]
    if len(_STATUSES) < _CACHE_SIZE:
        _STATUSES[status] = checked
    return checked


def _check_header(item: Any) -> tuple[bytes, bytes]:
    if type(item) is not tuple or len(item) != 2:
        raise InvalidHeader(f"each header must be a (name, value) tuple: {item!r}")
    name, value = item
    raw_name = _latin1(name, InvalidHeader, "header name")
    raw_value = _latin1(value, InvalidHeader, f"value of header {name!r}")
    if not _TOKEN.match(name):
        raise InvalidHeader(f"invalid header name: {name!r}")
    if _CONTROL.search(value):
        raise InvalidHeader(f"header {name!r} has a control character in its value: {value!r}")
    lower = name.lower()
    if lower in HOP_BY_HOP:
        raise HopByHopHeader(f"hop-by-hop header {name!r} is for the server to set")
    if lower == "status":
        raise InvalidHeader("'Status' is not a response header; pass it as the status")
    # Named as Twisted's Headers name it (its canonical capitalisation).
    pair = header_key(raw_name), raw_value.strip(b" \t")
    if len(_HEADERS) < _CACHE_SIZE:
        _HEADERS[item] = pair
    return pair


def check_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """
    Validate PEP 3333 response headers.

    @return: the headers encoded as latin-1 byte pairs, names in Twisted's
        canonical capitalisation.
    @raise InvalidHeader: for anything but a list of C{(str, str)} tuples
        with token names and values free of control characters.
    @raise HopByHopHeader: for connection-level headers.
    """
    if type(headers) is not list:
        raise InvalidHeader(f"headers must be a list, not {type(headers).__name__}")
    cache = _HEADERS
    encoded = []
    for item in headers:
        try:
            pair = cache.get(item)
        except TypeError:  # an unhashable item is invalid anyway
            pair = None
        encoded.append(pair if pair is not None else _check_header(item))
    return encoded


def _declared_length(headers: list[tuple[bytes, bytes]]) -> Optional[int]:
    """
    The Content-Length the app declared, or L{None}.

    @raise InvalidHeader: if it is not a single non-negative integer.
    """
    found = None
    for name, value in headers:
        if name == b"Content-Length":
            if found is not None or not value.isdigit():
                raise InvalidHeader(f"invalid or repeated Content-Length: {value!r}")
            found = int(value)
    return found


class Response:
    """
    The response of one exchange.

    @ivar app_write: the C{write} callable C{start_response} returns, if
        not L{write}; the exchange sets it (a thread-safe one in threadpool
        mode).  L{None} by default: C{self.write} kept here would be a
        reference cycle.
    @ivar sent: body bytes handed to the transport.
    @ivar overflowed: the app sent more than its Content-Length; the excess
        was dropped and iteration should stop.
    """

    __slots__ = (
        "_request",
        "_log",
        "_machine",
        "_code",
        "_reason",
        "_headers",
        "_remaining",
        "_producer",
        "_superseded",
        "app_write",
        "sent",
        "overflowed",
    )

    def __init__(self, request: Request, log: Logger) -> None:
        self._request = request
        self._log = log
        self._machine = Machine(_PENDING, _EDGES)
        self._code = 200
        self._reason = b"OK"
        self._headers: list[tuple[bytes, bytes]] = []
        self._remaining: Optional[int] = None
        self._producer: Any = None
        # The server answered in the application's stead (a 503 or 413)
        # while the application still ran: its start_response and writes
        # are accepted and dropped, as after the client left.
        self._superseded = False
        self.app_write: Optional[Callable[[bytes], None]] = None
        self.sent = 0
        self.overflowed = False

    @property
    def phase(self) -> Phase:
        return self._machine.state

    @property
    def headers_sent(self) -> bool:
        """
        Whether the status line has gone out (so errors can only abort).
        """
        return self._machine.state is not _PENDING and self._machine.state is not _STARTED

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        """
        PEP 3333 C{start_response}.

        With C{exc_info} it may be called again to replace a status that has
        not been sent; once output has started it re-raises C{exc_info}.
        """
        state = self._machine.state
        if exc_info is not None:
            try:
                if state is not _PENDING and state is not _STARTED:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif state is _ABORTED or self._superseded:
            # The client went away (or the server answered for the
            # application) while the application was being called (in a
            # worker or a greenlet): nothing will be sent, but the
            # application may finish normally, and its iterable be closed.
            check_status(status)
            check_headers(headers)
            return self.app_write or self.write
        elif state is not _PENDING:
            raise StartResponseError("start_response() called a second time without exc_info")
        code, reason = check_status(status)
        encoded = check_headers(headers)
        remaining = _declared_length(encoded)
        self._code, self._reason, self._headers, self._remaining = code, reason, encoded, remaining
        self._machine.to(_STARTED)
        return self.app_write or self.write

    def attach(self, producer: Any) -> None:
        """
        Register C{producer} (push) with the request, for backpressure; it
        is unregistered when the response ends, before the request finishes
        (a keep-alive connection's next request registers its own).
        """
        if self._producer is producer or self._machine.state in _ENDED:
            return
        self._producer = producer
        self._request.registerProducer(producer, True)

    def _detach(self) -> None:
        if self._producer is not None:
            self._producer = None
            if self._request.channel is not None:
                self._request.unregisterProducer()

    def _send_headers(self) -> None:
        request = self._request
        request.setResponseCode(self._code, self._reason)
        response_headers = request.responseHeaders
        headers = self._headers
        if DIRECT and type(response_headers) is Headers:
            # Validated and named by check_headers: no need for Twisted's
            # per-value encoding and sanitising.
            fields = fields_of(response_headers)
            for name, value in headers:
                if name in _SERVER_DEFAULTS:
                    fields.pop(name, None)
            for name, value in headers:
                values = fields.get(name)
                if values is None:
                    fields[name] = [value]
                else:
                    values.append(value)
        else:
            for name, value in headers:
                if name.lower() in (b"date", b"server") and response_headers.hasHeader(name):
                    response_headers.removeHeader(name)
            for name, value in headers:
                response_headers.addRawHeader(name, value)
        self._machine.to(_SENDING)

    def accepts(self, size: int) -> bool:
        """
        Whether C{write()} of C{size} bytes would just send them: output
        has started (the headers are gone, so an error can no longer become
        a 500) and they fit the declared Content-Length.
        """
        if self._machine.state is not _SENDING:
            return False
        remaining = self._remaining
        return remaining is None or size <= remaining

    def write(self, data: bytes) -> None:
        """
        Send body bytes, sending the headers first if they are still held.

        @raise InvalidBody: if C{data} is not bytes.
        @raise StartResponseError: before C{start_response}.
        """
        if type(data) is not bytes:
            if not isinstance(data, bytes):
                raise InvalidBody(f"response body must be bytes, not {type(data).__name__}")
            data = bytes(data)
        state = self._machine.state
        if state is _PENDING:
            raise StartResponseError("body data before start_response()")
        if not data or state is _ABORTED:
            return
        if state is _STARTED:
            self._send_headers()
        elif state is _COMPLETE:
            if self._superseded:
                return
            raise StartResponseError("body data after the response ended")
        remaining = self._remaining
        if remaining is not None:
            if len(data) > remaining:
                if not self.overflowed:
                    self._log.error(
                        "Application sent more than its Content-Length {length}; "
                        "the excess was not sent",
                        length=self.sent + remaining,
                    )
                self.overflowed = True
                data = data[:remaining]
            self._remaining = remaining - len(data)
            if not data:
                return
        self.sent += len(data)
        request = self._request
        if type(request).write is _TWISTED_WRITE and not request.startedWriting and send_head(request, data):
            return
        request.write(data)

    def finish(self) -> None:
        """
        End the response: send held headers, then complete it, or close the
        connection if fewer bytes than the declared Content-Length were sent.

        @raise StartResponseError: if C{start_response} was never called.
        """
        state = self._machine.state
        if state is _ABORTED:
            return
        if state is _PENDING:
            raise StartResponseError("the application returned without calling start_response()")
        if state is _STARTED:
            self._send_headers()
        request = self._request
        self._machine.to(_COMPLETE)
        self._detach()
        short = self._remaining
        if short and request.method != b"HEAD" and self._code not in NO_BODY_CODES:
            self._log.error(
                "Application sent {sent} bytes of a declared Content-Length "
                "of {length}; closing the connection",
                sent=self.sent,
                length=self.sent + short,
            )
            request.loseConnection()
            return
        request.finish()

    def fail(self, reason: Failure) -> None:
        """
        The exchange failed: answer with an error status if nothing was sent
        yet, or cut the connection so the client sees a truncated response
        rather than a clean end: closed after what was written when the
        framing shows the cut (chunked, or short of Content-Length), reset
        when only the close delimits the body (or the exchange timed out).

        An application error is a 500 with its traceback in the log only; a
        request body over the limit (L{BodyTooLarge}) is a 413; a request
        that ran out of time (L{RequestTimedOut}) is a 503.
        """
        state = self._machine.state
        too_large = reason.check(BodyTooLarge) is not None
        timed_out = reason.check(RequestTimedOut) is not None
        if state is _ABORTED or state is _COMPLETE:
            if not too_large and not timed_out:
                self._log.failure("Application error after the response ended", reason)
            return
        if too_large:
            self._log.info("Refused request body: {reason}", reason=reason.value)
            code, phrase, body = 413, b"Request Entity Too Large", TOO_LARGE_BODY
        elif timed_out:
            self._log.warn("{reason}", reason=reason.value)
            code, phrase, body = 503, b"Service Unavailable", TIMED_OUT_BODY
        else:
            self._log.failure("Application error", reason)
            code, phrase, body = 500, b"Internal Server Error", ERROR_BODY
        request = self._request
        self._detach()
        if state is _SENDING:
            self._machine.to(_ABORTED)
            http1 = request.clientproto.startswith(b"HTTP/1.")
            if not timed_out and http1 and (getattr(request, "chunked", False) or self._remaining):
                # The framing shows the cut (no last chunk, or fewer bytes
                # than declared): flush what was written, then close.  An
                # abort would drop it, so the client got a bare reset.
                request.loseConnection()
            else:
                # A close-delimited body: only a reset is not a clean end.
                # (A timed-out exchange is reset too: no waiting on a slow
                # reader to flush; and an HTTP/2 stream, whose
                # loseConnection() would end it cleanly.)
                abort_connection(request)
            return
        self._superseded = too_large or timed_out
        self._code, self._reason = code, phrase
        self._headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", b"%d" % len(body)),
        ]
        self._remaining = len(body)
        self._machine.to(_STARTED)
        self.write(body)
        self._machine.to(_COMPLETE)
        request.finish()

    def abort(self) -> None:
        """
        The client went away: nothing more will be written.
        """
        self._detach()
        if self._machine.state is not _COMPLETE and self._machine.state is not _ABORTED:
            self._machine.to(_ABORTED)


def abort_connection(request: Request) -> None:
    """
    Drop the request's connection without a clean end of response.
    """
    transport = request.transport
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    (abort or transport.loseConnection)()
