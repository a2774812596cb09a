"""
Request-head hardening where Twisted's HTTP/1.1 parser falls short, and the
configurable size limits (C{414}, C{431}).

L{txawsgi.site.AWSGIChannel} runs every line of a request head through a
L{Head} before Twisted's C{HTTPChannel} sees it, and decodes chunked bodies
with L{ChunkedDecoder} instead of Twisted's; a request either passes or is
refused with a precise status and reason (logged, and answered with
C{Connection: close}).  What this adds to Twisted 26.10's parser:

  - Request line:
    C{METHOD SP TARGET SP VERSION}, the method an upper-case token; the
    target printable ASCII only (Twisted compares bytes with C{176}, meaning
    octal C{0176}, so it lets DEL and C{0x80}-C{0xB0} through); origin-form,
    absolute-form (rewritten to origin-form, its authority replacing C{Host},
    RFC 9112 section 3.2.2) or C{OPTIONS *}; a fragment is dropped; a
    well-formed version other than 1.0 and 1.1 is C{505}.  Over the limit:
    C{414} (Twisted closes lines over 16 KiB without a word).
  - Header fields:
    Obsolete line folding is refused (Twisted unfolds it); control
    characters other than HTAB are refused in values (Twisted only refuses
    NUL, CR and LF); C{Content_Length} and C{Transfer_Encoding} (aliases of
    the framing headers for a CGI-style gateway) are refused; a repeated or
    malformed C{Host} is refused (RFC 9112 section 3.2); C{Content-Length}
    must be at most 18 digits (Twisted calls C{int()} on any run of digits,
    and 5000 of them raise C{ValueError} out of C{dataReceived}).  Field
    size, field count and the whole head: C{431}.
  - Framing:
    C{Transfer-Encoding} may only be C{chunked}, once and last (an obsolete
    C{identity} before it is ignored), on HTTP/1.1, never together with
    C{Content-Length} (Twisted accepts C{identity} with C{Content-Length},
    C{chunked} followed by C{identity}, and C{chunked} on HTTP/1.0); other
    codings are C{501}.
  - Chunked bodies:
    L{ChunkedDecoder}: chunk sizes of at most 16 significant hex digits,
    chunk extensions checked against the RFC 9112 section 7.1.1 grammar,
    trailer fields checked like header fields and bounded by the same
    limits (Twisted accepts any bytes as a trailer line).

An HTTP/1.1 request without C{Host} is still served (as by Twisted,
gunicorn and waitress); C{SERVER_NAME} then comes from the socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Optional

__all__ = [
    "ChunkedDecoder",
    "DEFAULT_LIMITS",
    "Head",
    "Limits",
    "MalformedChunk",
    "Refused",
    "guard_proxy_protocol",
    "non_negative",
    "refusal",
]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_LOWER = re.compile(rb"[a-z]")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?]*)(.*)\Z", re.S)
_AUTHORITY = re.compile(rb"(?:\[[0-9A-Fa-f:.vV]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?\Z")
_HOST = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=%:\[\]]*\Z")
_LENGTH = re.compile(rb"[0-9]{1,18}\Z")
_FRAMING = (b"content-length", b"transfer-encoding")
# The common cases, matched in one go (anything else takes the slow path,
# which finds the precise reason or the rewrite).
_PLAIN_REQUEST_LINE = re.compile(rb"[!$%&'*+\-.^_`|~0-9A-Z]+ /[\x21-\x22\x24-\x7e]* HTTP/1\.[01]\Z")
_TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CTLS = bytes(range(0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"
#: Field names L{Head.field_line} looks at more closely (lower case).
_SPECIAL = frozenset((b"host", b"content-length", b"transfer-encoding"))

# RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
_EXT_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_EXT_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*"
    + _EXT_TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _EXT_TOKEN
    + rb"|"
    + _EXT_QUOTED
    + rb"))?)*)\Z"
)

#: Longest chunk-size line (size and extensions) accepted.
MAX_CHUNK_LINE = 4096
#: Most significant hex digits in a chunk size (2**64 - 1 is 16).
MAX_CHUNK_DIGITS = 16


@dataclass(frozen=True)
class Limits:
    """
    How big a request head may be; C{0} switches a limit off (the head
    limit, which bounds the memory a slow client can hold, cannot be).

    @ivar request_line: bytes in the request line, without its CRLF
        (C{414} past it).
    @ivar fields: header fields in a head, or trailer fields after a chunked
        body (C{431}).
    @ivar field_size: bytes in one header field line, CRLF included, as
        gunicorn counts (C{431}).
    @ivar head: bytes in the whole head, request line included (C{431}).
    """

    request_line: int = 8190
    fields: int = 100
    field_size: int = 8190
    head: int = 65536

    def __post_init__(self) -> None:
        for name in ("request_line", "fields", "field_size", "head"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an int >= 0, not {value!r}")
        if not self.head:
            raise ValueError("the head limit cannot be switched off")

    @cached_property
    def line_buffer(self) -> int:
        """
        The most bytes a channel buffers looking for the end of one line.
        """
        if not (self.request_line and self.field_size):
            return self.head
        return min(max(self.request_line, self.field_size), self.head)


DEFAULT_LIMITS = Limits()


class Refused(Exception):
    """
    A request that must not be served.

    @ivar code: the status to answer with.
    @ivar phrase: its reason phrase.
    @ivar reason: why, in fixed words (sent to the client).
    @ivar detail: the offending bytes, for the log only.
    """

    def __init__(self, code: int, phrase: bytes, reason: str, detail: object = None) -> None:
        super().__init__(code, phrase, reason, detail)
        self.code = code
        self.phrase = phrase
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        detail = "" if self.detail is None else f" ({_preview(self.detail)})"
        return f"{self.code} {self.phrase.decode('ascii')}: {self.reason}{detail}"


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(reason: str, detail: object = None) -> Refused:
    return Refused(400, b"Bad Request", reason, detail)


def _too_large(reason: str, detail: object = None) -> Refused:
    return Refused(431, b"Request Header Fields Too Large", reason, detail)


def refusal(code: int, phrase: bytes, reason: str) -> bytes:
    """
    The bytes of a complete response refusing a request; the connection
    closes after it.
    """
    body = b"%s: %s\n" % (phrase, reason.encode("ascii", "backslashreplace"))
    return (
        b"HTTP/1.1 %d %s\r\n"
        b"Connection: close\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"\r\n" % (code, phrase, len(body))
    ) + body


class _Fields:
    """
    Checks shared by header and trailer field lines.
    """

    __slots__ = ("limits", "size", "count")

    def __init__(self, limits: Limits, size: int = 0) -> None:
        self.limits = limits
        self.size = size
        self.count = 0

    def check(self, line: bytes, what: str = "header") -> tuple[bytes, bytes]:
        """
        Check one field line (without its CRLF) against the limits and the
        field-line grammar; return its lower-case name and trimmed value.

        @raise Refused: if it is too big or malformed.
        """
        limits = self.limits
        size = len(line) + 2
        self.size += size
        if self.size > limits.head:
            raise _too_large(f"request head over the limit of {limits.head} bytes")
        if limits.field_size and size > limits.field_size:
            raise _too_large(f"a {what} field over the limit of {limits.field_size} bytes", line[:40])
        self.count += 1
        if limits.fields and self.count > limits.fields:
            raise _too_large(f"more than {limits.fields} {what} fields")
        name, colon, value = line.partition(b":")
        if colon and name and not name.translate(None, _TCHARS):
            value = value.strip(b" \t")
            if len(value.translate(None, _CTLS)) == len(value):
                return name.lower(), value
        # Refused: find the precise reason.
        if line[:1] in (b" ", b"\t"):
            raise _bad(f"obsolete line folding in a {what} field (RFC 9112 section 5.2)", line)
        if not colon:
            raise _bad(f"a {what} line without a colon", line)
        if not _TOKEN.match(name):
            raise _bad(f"invalid {what} field name", name)
        raise _bad(f"a control character in a {what} field value", line)


class Head:
    """
    One request head, checked line by line as it arrives (before Twisted's
    parser sees each line, which it may rewrite).

    @ivar authority: the authority of an absolute-form target: the request's
        C{Host} (RFC 9112 section 3.2.2), set once the head is complete.
    """

    __slots__ = ("_fields", "version", "authority", "_hosts", "_lengths", "_codings")

    def __init__(self, limits: Limits) -> None:
        self._fields = _Fields(limits)
        self.version = b""
        self.authority: Optional[bytes] = None
        self._hosts = 0
        self._lengths = 0
        self._codings: list[bytes] = []

    @property
    def size(self) -> int:
        """
        Bytes of the head so far, line ends included.
        """
        return self._fields.size

    def request_line(self, line: bytes) -> bytes:
        """
        Check the request line; return it, rewritten to origin-form if need
        be.

        @raise Refused: if it is too long or malformed.
        """
        fields = self._fields
        limits = fields.limits
        fields.size = len(line) + 2
        if (limits.request_line and len(line) > limits.request_line) or fields.size > limits.head:
            limit = min(limits.request_line or limits.head, limits.head)
            raise Refused(414, b"URI Too Long", f"request line over the limit of {limit} bytes")
        if _PLAIN_REQUEST_LINE.match(line):
            self.version = line[-8:]
            return line
        parts = line.split(b" ")
        if len(parts) != 3:
            raise _bad("the request line is not METHOD SP TARGET SP VERSION", line)
        method, target, version = parts
        if not _TOKEN.match(method) or _LOWER.search(method):
            raise _bad("the method is not an upper-case token", method)
        if version != b"HTTP/1.1" and version != b"HTTP/1.0":
            if _VERSION.match(version):
                raise Refused(505, b"HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are served here", version)
            raise _bad("malformed HTTP version", version)
        if not _TARGET.match(target):
            raise _bad("the request target is not printable ASCII", target)
        rewritten = target.partition(b"#")[0]
        if rewritten[:1] == b"/":
            pass
        elif rewritten == b"*":
            if method != b"OPTIONS":
                raise _bad("the asterisk target is only for OPTIONS")
        else:
            absolute = _ABSOLUTE.match(rewritten)
            if absolute is None:
                raise _bad("the request target is not in origin, absolute or asterisk form", target)
            scheme, authority, rest = absolute.groups()
            if scheme.lower() not in (b"http", b"https"):
                raise _bad("absolute-form target with a scheme other than http or https", scheme)
            if not authority or not _AUTHORITY.match(authority):
                raise _bad("absolute-form target with an empty or invalid authority", authority)
            self.authority = authority
            rewritten = rest if rest[:1] == b"/" else b"/" + rest
        self.version = version
        if rewritten is target:
            return line
        return b" ".join((method, rewritten, version))

    def field_line(self, line: bytes) -> Optional[bytes]:
        """
        Check one header field line; return it (possibly rewritten for
        Twisted's parser), or L{None} to leave it out.

        @raise Refused: if it is too big, malformed, or frames the body
            ambiguously.
        """
        name, value = self._fields.check(line)
        if name not in _SPECIAL and b"_" not in name:
            return line
        if b"_" in name and name.replace(b"_", b"-") in _FRAMING:
            raise _bad("a header name that aliases Content-Length or Transfer-Encoding", name)
        if name == b"host":
            self._hosts += 1
            if self._hosts > 1:
                raise _bad("more than one Host header (RFC 9112 section 3.2)")
            if not _HOST.match(value):
                raise _bad("invalid Host header", value)
        elif name == b"content-length":
            self._lengths += 1
            if self._lengths > 1:
                raise _bad("repeated Content-Length")
            if not _LENGTH.match(value):
                raise _bad("invalid Content-Length", value)
        elif name == b"transfer-encoding":
            return self._transfer_encoding(value)
        return line

    def _transfer_encoding(self, value: bytes) -> Optional[bytes]:
        codings = self._codings
        found = [c.strip(b" \t").lower() for c in value.split(b",")]
        for coding in found:
            if not coding:
                continue
            if b"chunked" in codings:
                raise _bad("chunked is not the final transfer coding", coding)
            if coding != b"chunked" and coding != b"identity":
                if _TOKEN.match(coding):
                    raise Refused(501, b"Not Implemented", "only the chunked transfer coding is implemented", coding)
                raise _bad("malformed Transfer-Encoding", value)
            codings.append(coding)
        # Twisted's parser only ever sees "chunked", or nothing.
        return b"Transfer-Encoding: chunked" if b"chunked" in found else None

    def end(self) -> None:
        """
        The head is complete: check what needs all of it.

        @raise Refused: if the body's framing is ambiguous.
        """
        codings = self._codings
        if not codings:
            return
        if self.version != b"HTTP/1.1":
            raise _bad("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1)")
        if self._lengths:
            raise _bad("both Content-Length and Transfer-Encoding (RFC 9112 section 6.1)")
        if codings[-1] != b"chunked":
            raise _bad("Transfer-Encoding without chunked as the final coding (RFC 9112 section 6.3)")


def _chunk_line_too_long() -> Refused:
    return _bad("chunk size line too long")


class MalformedChunk(Exception):
    """
    A chunked request body broke the RFC 9112 section 7.1 grammar, or a
    limit.  Carries the L{Refused} to answer with.
    """

    def __init__(self, refused: Refused) -> None:
        super().__init__(str(refused))
        self.refused = refused


class ChunkedDecoder:
    """
    A strict decoder for a chunked request body, with the interface of
    Twisted's C{_ChunkedTransferDecoder} (C{dataReceived}, C{noMoreData}):
    C{data} is called with each piece of chunk data, C{finish} once with the
    bytes that followed the body.  Trailer fields are checked and dropped
    (PEP 3333 has no way to pass them on).

    @raise MalformedChunk: from L{dataReceived}, when the body is malformed.
    """

    __slots__ = ("_data", "_finish", "_limits", "_buffer", "_state", "_remaining", "_trailers", "_scanned")

    def __init__(self, data: Callable[[bytes], None], finish: Callable[[bytes], None], limits: Limits = DEFAULT_LIMITS) -> None:
        self._data = data
        self._finish = finish
        self._limits = limits
        self._buffer = bytearray()
        self._state = "size"
        self._remaining = 0
        self._trailers: Optional[_Fields] = None
        self._scanned = 0

    def _line(self, limit: int, too_long: Callable[[], Refused]) -> Optional[bytes]:
        """
        The next CRLF-terminated line (removed from the buffer), or L{None}
        if it is not complete yet.
        """
        buffer = self._buffer
        end = buffer.find(b"\r\n", self._scanned)
        if end == -1:
            if len(buffer) > limit + 1:
                raise MalformedChunk(too_long())
            self._scanned = max(len(buffer) - 1, 0)
            return None
        if end > limit:
            raise MalformedChunk(too_long())
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        self._scanned = 0
        return line

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            state = self._state
            if state == "data":
                if not buffer:
                    return
                take = min(self._remaining, len(buffer))
                piece = bytes(buffer[:take])
                del buffer[:take]
                self._remaining -= take
                if not self._remaining:
                    self._state = "crlf"
                self._data(piece)
            elif state == "crlf":
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise MalformedChunk(_bad("chunk data not followed by CRLF"))
                del buffer[:2]
                self._state = "size"
            elif state == "size":
                line = self._line(MAX_CHUNK_LINE, _chunk_line_too_long)
                if line is None:
                    return
                match = _CHUNK_LINE.match(line)
                if match is None:
                    raise MalformedChunk(_bad("malformed chunk size line", line))
                digits = match.group(1).lstrip(b"0")
                if len(digits) > MAX_CHUNK_DIGITS:
                    raise MalformedChunk(_bad("chunk size too large", line))
                size = int(digits or b"0", 16)
                if size:
                    self._remaining = size
                    self._state = "data"
                else:
                    self._state = "trailer"
                    self._trailers = _Fields(self._limits)
            elif state == "trailer":
                trailers = self._trailers
                assert trailers is not None
                limit = self._limits.field_size or self._limits.head
                line = self._line(limit, lambda: _too_large(f"a trailer field over the limit of {limit} bytes"))
                if line is None:
                    return
                if line:
                    try:
                        trailers.check(line, "trailer")
                    except Refused as refused:
                        raise MalformedChunk(refused) from None
                    continue
                self._state = "done"
                rest = bytes(buffer)
                buffer.clear()
                self._finish(rest)
                return
            else:
                raise RuntimeError("ChunkedDecoder.dataReceived after the last chunk")

    def noMoreData(self) -> None:
        if self._state != "done":
            from twisted.web.http import _DataLoss

            raise _DataLoss(f"chunked body ended in state {self._state!r}")


def non_negative(value: str) -> int:
    """
    Parse a limit given on the command line: an int >= 0 (C{0}: no limit).
    """
    number = int(value)
    if number < 0:
        raise ValueError(f"must be >= 0, not {value!r}")
    return number


def guard_proxy_protocol() -> None:
    """
    Fix two flaws of Twisted's PROXY protocol support (the C{haproxy:}
    endpoint), in place; idempotent:

     - its v1 parser calls C{int()} on the ports unguarded, so C{PROXY TCP4
       1.2.3.4 5.6.7.8 65iii 80} logs an unhandled C{ValueError} per
       connection: the guarded parser refuses it (and addresses that are not
       IP addresses, ports outside 0-65535, which Twisted passes on as the
       client's address);
     - its wrapper decides whether a connection speaks PROXY v1 or v2 from
       the first read alone, and drops one whose first read is shorter than
       8 (v1) or 16 (v2) bytes: the guarded wrapper waits for them.
    """
    try:
        from twisted.protocols.haproxy import _v1parser, _v2parser, _wrapper
        from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
    except ImportError:  # pragma: no cover - a Twisted without it
        return
    import ipaddress

    parser = _v1parser.V1Parser
    original = parser.__dict__.get("parse")
    if isinstance(original, classmethod) and not getattr(original.__func__, "txawsgi_guarded", False):
        parse_line = original.__func__

        def parse(cls: Any, line: bytes) -> Any:
            try:
                info = parse_line(cls, line)
                for address in (info.source, info.destination):
                    if address is not None:
                        ipaddress.ip_address(address.host)
                        if not 0 <= address.port <= 65535:
                            raise ValueError(f"port {address.port} out of range")
            except (ValueError, UnicodeDecodeError) as e:
                raise InvalidProxyHeader() from e
            return info

        parse.txawsgi_guarded = True  # type: ignore[attr-defined]
        parser.parse = classmethod(parse)  # type: ignore[method-assign, assignment]

    wrapper = _wrapper.HAProxyProtocolWrapper
    received = wrapper.dataReceived
    if getattr(received, "txawsgi_guarded", False):
        return
    v2 = _v2parser.V2Parser.PREFIX
    v1 = _v1parser.V1Parser.PROXYSTR

    def dataReceived(self: Any, data: bytes) -> None:
        if self._proxyInfo is None and self._parser is None:
            data = self.__dict__.pop("_txawsgi_pending", b"") + data
            size = len(data)
            undecided = (size < 16 and data[:12] == v2[:size]) or (size < 8 and data[:5] == v1[:size])
            if undecided:
                self._txawsgi_pending = data
                return
        received(self, data)

    dataReceived.txawsgi_guarded = True  # type: ignore[attr-defined]
    wrapper.dataReceived = dataReceived  # type: ignore[method-assign]
