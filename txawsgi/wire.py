"""
HTTP/1.x on the wire, the common case in one pass.

Twisted reads a request head line by line (a method call, a split, a
canonicalised and sanitised L{Headers} entry per field) and writes a
response head the same way.  For the plain heads almost every client sends
and the responses a WSGI application almost always gives, this module does
the same work in a few C-level operations:

  - L{parse_plain_head}: the whole request head at once, when it is
    complete and plain (the conditions of L{txawsgi.limits}, nothing to
    rewrite, no C{Transfer-Encoding}); anything else is left to the
    line-by-line checks, which find the precise reason to refuse it.
  - L{send_head}: a response's status line, headers and first body bytes
    in one transport write, with the decisions Twisted's C{Request.write}
    makes (chunking, C{HEAD}, bodiless statuses, C{sentLength}).

Both read and fill the dictionaries inside Twisted's L{Headers}
(L{fields_of}): every name and value put there was validated first (by
L{txawsgi.limits} rules or L{txawsgi.response.check_headers}), so Twisted's
per-value sanitising would change nothing.
"""

from __future__ import annotations

from time import time
from typing import Any, Callable, Optional

from twisted.web import server
from twisted.web.http import NO_BODY_CODES, HTTPChannel, datetimeToString
from twisted.web.http_headers import Headers

from txawsgi.limits import _CTLS, _HOST, _LENGTH, _PLAIN_REQUEST_LINE, _TCHARS, Limits

try:
    from twisted.web.http_headers import _nameEncoder

    _canonical: Optional[Callable[[bytes], bytes]] = _nameEncoder.encode
except ImportError:  # pragma: no cover - a Twisted that moved it
    _canonical = None

__all__ = [
    "DIRECT",
    "canonical_name",
    "fields_of",
    "header_key",
    "http_date",
    "parse_plain_head",
    "send_head",
    "set_fields",
]

#: Whether L{Headers} keeps its fields in a C{_rawHeaders} dict of canonical
#: name to values (Twisted 16 to 26 does); if not, nothing here is used.
DIRECT = _canonical is not None and isinstance(getattr(Headers(), "_rawHeaders", None), dict)

#: Field names as sent -> as L{Headers} keys them; bounded, like Twisted's.
_NAMES: dict[bytes, bytes] = {}
_NAMES_MAX = 1024

#: Fields L{parse_plain_head} checks itself, or leaves to L{txawsgi.limits}.
_HOST_NAME = b"Host"
_LENGTH_NAME = b"Content-Length"
_CHECKED = frozenset((_HOST_NAME, _LENGTH_NAME, b"Transfer-Encoding"))



def fields_of(headers: Headers) -> dict[bytes, list[bytes]]:
    """
    The dict inside C{headers}: canonical name -> values, in order (only
    when L{DIRECT}).
    """
    return headers._rawHeaders  # type: ignore[no-any-return]


def set_fields(headers: Headers, fields: dict[bytes, list[bytes]]) -> None:
    """
    Add C{fields} (canonical name -> values) to C{headers}, taking the dict
    itself if C{headers} is empty (only when L{DIRECT}).
    """
    mine = fields_of(headers)
    if not mine:
        headers._rawHeaders = fields  # type: ignore[misc]
        return
    for name, values in fields.items():
        mine.setdefault(name, []).extend(values)


def header_key(name: bytes) -> bytes:
    """
    The key L{Headers} files the (token) field name C{name} under.
    """
    return name if _canonical is None else _canonical(name)


def canonical_name(name: bytes) -> Optional[bytes]:
    """
    The key L{Headers} files field C{name} under, or L{None} if C{name} is
    not a token or has an underscore (the line-by-line checks look closer).
    """
    known = _NAMES.get(name)
    if known is not None:
        return known
    if not name or name.translate(None, _TCHARS) or b"_" in name or _canonical is None:
        return None
    known = _canonical(name)
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[name] = known
    return known


#: One parsed plain head: method, target, version, fields (canonical name
#: -> values), Content-Length (0 without one), and bytes of the rest used.
PlainHead = tuple[bytes, bytes, bytes, dict[bytes, list[bytes]], int, int]


def parse_plain_head(line: bytes, rest: bytes, limits: Limits) -> Optional[PlainHead]:
    """
    Parse a request head whose request line is C{line}, from C{rest}, what
    followed that line's CRLF.

    @return: the head, or L{None} if it is not complete in C{rest}, or is
        not plain: an origin-form HTTP/1.0 or 1.1 request line, token field
        names without underscores, values free of control characters, at
        most one valid C{Host} and C{Content-Length}, no C{Transfer-Encoding},
        within every limit.  A head this refuses may still be fine: it is
        then checked line by line.
    """
    request_line = limits.request_line
    if (request_line and len(line) > request_line) or not _PLAIN_REQUEST_LINE.match(line):
        return None
    head_limit = limits.head
    size = len(line) + 2
    fields: dict[bytes, list[bytes]] = {}
    length = 0
    if rest[:2] == b"\r\n":
        used = 2
        if size > head_limit:
            return None
    else:
        end = rest.find(b"\r\n\r\n", 0, head_limit + 2)
        if end == -1:
            return None
        used = end + 4
        block = rest[:end]
        size += end + 2
        if size > head_limit:
            return None
        lines = block.split(b"\r\n")
        count = len(lines)
        # No control character but the CRLFs between the lines: not even a
        # bare CR or LF.
        if len(block.translate(None, _CTLS)) != end - 2 * (count - 1):
            return None
        if limits.fields and count > limits.fields:
            return None
        field_size = limits.field_size
        if field_size and end + 2 > field_size:
            for field in lines:
                if len(field) + 2 > field_size:
                    return None
        host = False
        for field in lines:
            name, colon, value = field.partition(b":")
            if not colon:
                return None
            key = _NAMES.get(name)
            if key is None:
                key = canonical_name(name)
                if key is None:
                    return None
            value = value.strip(b" \t")
            if key in _CHECKED:
                if key == _HOST_NAME:
                    if host or not _HOST.match(value):
                        return None
                    host = True
                elif key == _LENGTH_NAME:
                    if _LENGTH_NAME in fields or not _LENGTH.match(value):
                        return None
                    length = int(value)
                else:
                    return None
            values = fields.get(key)
            if values is None:
                fields[key] = [value]
            else:
                values.append(value)
    method, target, version = line.split(b" ")
    return method, target, version, fields, length, used


#: The date of the last second a response was sent in.
_date_second = -1
_date = b""


def http_date() -> bytes:
    """
    C{twisted.web.http.datetimeToString()}, formatted once a second.
    """
    global _date_second, _date
    now = int(time())
    if now != _date_second:
        _date = datetimeToString(now)
        _date_second = now
    return _date


#: Channel classes -> whether they write as L{http.HTTPChannel} does.
_PLAIN_CHANNELS: dict[type, bool] = {}


def _plain_channel(channel: Any) -> bool:
    kind = type(channel)
    plain = _PLAIN_CHANNELS.get(kind)
    if plain is None:
        plain = _PLAIN_CHANNELS[kind] = (
            issubclass(kind, HTTPChannel)
            and kind.writeHeaders is HTTPChannel.writeHeaders
            and kind.write is HTTPChannel.write
        )
    return plain


def _discard(data: bytes) -> None:
    """
    C{write} of a response without a body (C{HEAD}, C{204}, C{304}).
    """


def send_head(request: server.Request, data: bytes) -> bool:
    """
    Start the response of C{request} and write C{data} after its head, all
    in one transport write, as Twisted's C{Request.write} would have: a
    chunked body on HTTP/1.1 without C{Content-Length}; no body for C{HEAD}
    and the statuses without one; C{sentLength} and C{startedWriting} set.

    @return: C{False}, having done nothing, if the request needs Twisted's
        own path: not an HTTP/1.x channel, already finished or
        disconnected, or something Twisted adds to the head (C{Last-Modified},
        C{ETag}, cookies, a default content type, an encoder).
    """
    channel = request.channel
    if (
        not DIRECT
        or request.startedWriting
        or request.finished
        or request._disconnected
        or request._inFakeHead
        or request._encoder is not None
        or request.defaultContentType is not None
        or request.lastModified is not None
        or request.etag is not None
        or request.cookies
        or not _plain_channel(channel)
        or channel.transport is None
    ):
        return False
    fields = fields_of(request.responseHeaders)
    version = request.clientproto
    code = request.code
    bodiless = request.method == b"HEAD" or code in NO_BODY_CODES
    if version == b"HTTP/1.1" and not bodiless and not fields.get(b"Content-Length"):
        fields[b"Transfer-Encoding"] = [b"chunked"]
        request.chunked = 1
    request.startedWriting = 1
    parts = [b"%s %d %s\r\n" % (version, code, request.code_message)]
    for name, values in fields.items():
        if len(values) == 1:
            parts += (name, b": ", values[0], b"\r\n")
        else:
            for value in values:
                parts += (name, b": ", value, b"\r\n")
    if bodiless:
        parts.append(b"\r\n")
        request.write = _discard  # type: ignore[method-assign]
    else:
        request.sentLength += len(data)
        if not data:
            parts.append(b"\r\n")
        elif request.chunked:
            parts.append(b"\r\n%x\r\n" % len(data))
            parts.append(data)
            parts.append(b"\r\n")
        else:
            parts.append(b"\r\n")
            parts.append(data)
    channel.transport.write(b"".join(parts))
    return True
