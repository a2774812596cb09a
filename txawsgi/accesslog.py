"""
The access log: one line per request in the combined log format, written
once the response has ended, with the status and byte count that really went
out -- for streamed responses, and for responses cut short by the client or
by an error, too.

Format (Apache's and nginx's "combined")::

    127.0.0.1 - - [21/Nov/2026:12:56:01 +0000] "GET /x?y HTTP/1.1" 200 1234 "-" "curl/7.88.1"

The time is when the request was routed; the byte count is the response
body handed to the connection (C{-} for none).  A response that never
started because the client went away first is logged with status C{499}
(as nginx does).  Bytes outside printable ASCII, C{"} and C{\\} are written
as C{\\xHH}, so a line is always one line.

A request target (or C{Referer}, C{User-Agent}) longer than L{MAX_FIELD}
bytes is logged cut to its first L{MAX_FIELD} bytes followed by C{...[+N]},
C{N} the bytes left out: a line stays small enough to be written whole
(workers share the file) and to travel as one log event.  The default
C{--limit-request-line} (8190) keeps every target whole.
"""

from __future__ import annotations

import os
import time
from enum import auto
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.server import Request

from txawsgi.linelog import FLUSH_DELAY, LineWriter
from txawsgi.states import Machine, State, edges

__all__ = [
    "AccessLog",
    "AccessLogService",
    "CLIENT_CLOSED",
    "MAX_FIELD",
    "combined_line",
    "combined_record",
    "escape",
    "twisted_log_formatter",
]

#: The status logged for a request whose client left before any response.
CLIENT_CLOSED = 499

#: The most bytes of a request target, C{Referer} or C{User-Agent} an access
#: log line carries; the rest is replaced by C{...[+N]}.
MAX_FIELD = 8192

_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")

_ESCAPES = {i: "\\x%02X" % i for i in range(256) if i < 0x20 or i >= 0x7F}
_ESCAPES[ord('"')] = "\\x22"
_ESCAPES[ord("\\")] = "\\x5C"
_PLAIN = bytes(i for i in range(256) if i not in _ESCAPES)


def escape(value: Optional[bytes]) -> str:
    """
    C{value} for a log line: C{-} if missing or empty, else printable ASCII
    with everything else as C{\\xHH}.
    """
    if not value:
        return "-"
    if not value.translate(None, _PLAIN):
        return value.decode("ascii")
    return "".join(_ESCAPES.get(byte) or chr(byte) for byte in value)


def _escaped(value: Optional[bytes]) -> bytes:
    """
    L{escape}, as bytes (printable values, the usual case, as they are).
    """
    if not value:
        return b"-"
    if not value.translate(None, _PLAIN):
        return value
    return escape(value).encode("ascii")


def _capped(value: bytes) -> bytes:
    """
    C{value}, cut to L{MAX_FIELD} bytes (marked with how many were left
    out) if longer.
    """
    if len(value) <= MAX_FIELD:
        return value
    return value[:MAX_FIELD] + b"...[+%d]" % (len(value) - MAX_FIELD)


def _format_timestamp(second: int) -> bytes:
    local = time.localtime(second)
    offset = local.tm_gmtoff or 0
    sign = b"-" if offset < 0 else b"+"
    minutes = abs(offset) // 60
    return b"[%02d/%s/%04d:%02d:%02d:%02d %s%02d%02d]" % (
        local.tm_mday,
        _MONTHS[local.tm_mon - 1],
        local.tm_year,
        local.tm_hour,
        local.tm_min,
        local.tm_sec,
        sign,
        minutes // 60,
        minutes % 60,
    )


#: The last second formatted, and its text: the lines of one second share it.
_last_stamp: tuple[int, bytes] = (-1, b"")


def _timestamp(when: float) -> bytes:
    global _last_stamp
    second = int(when // 1)
    cached, text = _last_stamp
    if second != cached:
        text = _format_timestamp(second)
        _last_stamp = (second, text)
    return text


def combined_record(request: Request, *, when: float, aborted: bool) -> bytes:
    """
    The combined-format line for C{request}, as ASCII bytes ending in a
    newline.

    @param when: when the request was received (seconds since the epoch).
    @param aborted: the connection was lost before the response ended.
    """
    client = request.getClientAddress()
    host = client.host if isinstance(client, (IPv4Address, IPv6Address)) else "-"
    if request.startedWriting:
        status = request.code
    else:
        status = CLIENT_CLOSED if aborted else request.code
    headers = request.requestHeaders
    referer = headers.getRawHeaders(b"referer")
    agent = headers.getRawHeaders(b"user-agent")
    sent = request.sentLength
    uri = request.uri
    if len(uri) > MAX_FIELD:
        uri = _capped(uri)
    return b'%s - - %s "%s" %d %s "%s" "%s"\n' % (
        host.encode("ascii", "backslashreplace"),
        _timestamp(when),
        _escaped(b"%s %s %s" % (request.method, uri, request.clientproto)),
        status,
        b"%d" % sent if sent else b"-",
        _escaped(_capped(referer[0])) if referer else b"-",
        _escaped(_capped(agent[0])) if agent else b"-",
    )


def combined_line(request: Request, *, when: float, aborted: bool) -> str:
    """
    The combined-format line for C{request} (without the newline).

    @param when: when the request was received (seconds since the epoch).
    @param aborted: the connection was lost before the response ended.
    """
    return combined_record(request, when=when, aborted=aborted)[:-1].decode("ascii")


class _CappedRequest:
    """
    What Twisted's log formatter reads of a request, with the long fields
    cut (L{_capped}).
    """

    def __init__(self, request: Request) -> None:
        self._request = request
        self.uri = _capped(request.uri)

    def getHeader(self, name: bytes) -> Optional[bytes]:
        value = self._request.getHeader(name)
        return None if value is None else _capped(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def twisted_log_formatter(timestamp: str, request: Request) -> str:
    """
    An C{IAccessLogFormatter} for Twisted's own request log (a site with no
    L{AccessLog}): Twisted's combined line, with long fields cut as in the
    access log (a 100 KB target would make a 100 KB log event).
    """
    line: str = combinedLogFormatter(timestamp, request)
    if len(line) > MAX_FIELD and (
        len(request.uri) > MAX_FIELD
        or len(request.getHeader(b"referer") or b"") > MAX_FIELD
        or len(request.getHeader(b"user-agent") or b"") > MAX_FIELD
    ):
        line = combinedLogFormatter(timestamp, _CappedRequest(request))
    return line


class Sink(State):
    """
    Whether an L{AccessLog} can write.
    """

    CLOSED = auto()
    OPEN = auto()


_SINK_EDGES = edges(Sink, {Sink.CLOSED: {Sink.OPEN}, Sink.OPEN: {Sink.CLOSED}})


class AccessLog:
    """
    Append access log lines to a file, to standard output, or to an
    inherited file descriptor (a worker process writing to its supervisor's
    log file).

    Lines are buffered for a moment (L{txawsgi.linelog}) and written in
    whole-line chunks to a descriptor opened with C{O_APPEND}, so processes
    sharing the file never interleave within a line; L{close} (when the
    server has stopped) writes what is left.

    @ivar destination: C{"-"} for standard output, else a path.
    """

    _log = Logger()

    def __init__(
        self,
        destination: str = "-",
        *,
        fd: Optional[int] = None,
        reactor: Any = None,
        delay: Optional[float] = FLUSH_DELAY,
    ) -> None:
        self.destination = destination
        self._inherited = fd
        self._reactor = reactor
        self._delay = delay
        self._writer: Optional[LineWriter] = None
        self._sink = Machine(Sink.CLOSED, _SINK_EDGES)

    @property
    def fileno(self) -> Optional[int]:
        """
        The descriptor lines go to, while open (to hand to workers).
        """
        return self._writer.fd if self._writer is not None else None

    def open(self) -> None:
        """
        Open the destination (creating the file if needed).

        @raise OSError: if it cannot be opened.
        """
        if self._sink.state is Sink.OPEN:
            return
        if self._inherited is not None:
            fd, owned = self._inherited, True
        elif self.destination == "-":
            fd, owned = 1, False
        else:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            fd, owned = os.open(self.destination, flags, 0o644), True
        self._writer = LineWriter(
            fd, reactor=self._reactor, delay=self._delay, on_error=self._failed, owned=owned
        )
        self._sink.to(Sink.OPEN)

    def _failed(self, error: OSError) -> None:
        self._log.error(
            "Cannot write the access log {destination}: {error}",
            destination=self.destination,
            error=error,
        )

    def close(self) -> None:
        """
        Write the lines still buffered, and close.
        """
        if self._sink.state is Sink.CLOSED:
            return
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self._sink.to(Sink.CLOSED)

    def flush(self) -> None:
        """
        Write the lines buffered so far now.
        """
        if self._writer is not None:
            self._writer.flush()

    def write(self, line: str) -> None:
        """
        Append one line.  A failing destination (disk full, closed pipe) is
        reported once in the server log, and lines are dropped meanwhile.
        """
        writer = self._writer
        if writer is not None:
            writer.write((line + "\n").encode("ascii", "backslashreplace"))

    def log(self, request: Any, *, when: float, aborted: bool) -> None:
        """
        Log C{request}, whose response has ended (or was cut short).
        """
        writer = self._writer
        if writer is not None:
            writer.write(combined_record(request, when=when, aborted=aborted))


class AccessLogService(Service):
    """
    Open an L{AccessLog} with the server (before privileges are dropped)
    and close it when the server has stopped.
    """

    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.access_log.open()

    def startService(self) -> None:
        self.access_log.open()
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.access_log.close()
