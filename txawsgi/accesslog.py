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
"""

from __future__ import annotations

import os
import time
from enum import auto
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.web.server import Request

from txawsgi.states import Machine, State, edges

__all__ = ["AccessLog", "AccessLogService", "CLIENT_CLOSED", "combined_line", "escape"]

#: The status logged for a request whose client left before any response.
CLIENT_CLOSED = 499

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

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


def _timestamp(when: float) -> str:
    local = time.localtime(when)
    offset = local.tm_gmtoff or 0
    sign = "-" if offset < 0 else "+"
    offset = abs(offset) // 60
    return "[%02d/%s/%04d:%02d:%02d:%02d %s%02d%02d]" % (
        local.tm_mday,
        _MONTHS[local.tm_mon - 1],
        local.tm_year,
        local.tm_hour,
        local.tm_min,
        local.tm_sec,
        sign,
        offset // 60,
        offset % 60,
    )


def combined_line(request: Request, *, when: float, aborted: bool) -> str:
    """
    The combined-format line for C{request} (without the newline).

    @param when: when the request was received (seconds since the epoch).
    @param aborted: the connection was lost before the response ended.
    """
    client = request.getClientAddress()
    host = client.host if isinstance(client, (IPv4Address, IPv6Address)) else "-"
    line = b"%s %s %s" % (request.method, request.uri, request.clientproto)
    if request.startedWriting:
        status = request.code
    else:
        status = CLIENT_CLOSED if aborted else request.code
    headers = request.requestHeaders
    referer = headers.getRawHeaders(b"referer", [None])[0]
    agent = headers.getRawHeaders(b"user-agent", [None])[0]
    return '%s - - %s "%s" %d %s "%s" "%s"' % (
        host,
        _timestamp(when),
        escape(line),
        status,
        request.sentLength or "-",
        escape(referer),
        escape(agent),
    )


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
    log file).  Each line is one C{write()} to a descriptor opened with
    C{O_APPEND}, so processes sharing the file never interleave within a
    line.

    @ivar destination: C{"-"} for standard output, else a path.
    """

    _log = Logger()

    def __init__(self, destination: str = "-", *, fd: Optional[int] = None) -> None:
        self.destination = destination
        self._inherited = fd
        self._fd: Optional[int] = None
        self._owned = False
        self._failed = False
        self._sink = Machine(Sink.CLOSED, _SINK_EDGES)

    @property
    def fileno(self) -> Optional[int]:
        """
        The descriptor lines go to, while open (to hand to workers).
        """
        return self._fd

    def open(self) -> None:
        """
        Open the destination (creating the file if needed).

        @raise OSError: if it cannot be opened.
        """
        if self._sink.state is Sink.OPEN:
            return
        if self._inherited is not None:
            self._fd, self._owned = self._inherited, True
        elif self.destination == "-":
            self._fd, self._owned = 1, False
        else:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd, self._owned = os.open(self.destination, flags, 0o644), True
        self._failed = False
        self._sink.to(Sink.OPEN)

    def close(self) -> None:
        if self._sink.state is Sink.CLOSED:
            return
        fd, self._fd = self._fd, None
        if self._owned and fd is not None:
            os.close(fd)
        self._sink.to(Sink.CLOSED)

    def write(self, line: str) -> None:
        """
        Append one line.  A failing destination (disk full, closed pipe) is
        reported once in the server log, and lines are dropped meanwhile.
        """
        fd = self._fd
        if fd is None:
            return
        data = (line + "\n").encode("ascii", "backslashreplace")
        try:
            while data:
                written = os.write(fd, data)
                data = data[written:]
        except OSError as e:
            if not self._failed:
                self._failed = True
                self._log.error(
                    "Cannot write the access log {destination}: {error}",
                    destination=self.destination,
                    error=e,
                )
        else:
            self._failed = False

    def log(self, request: Any, *, when: float, aborted: bool) -> None:
        """
        Log C{request}, whose response has ended (or was cut short).
        """
        self.write(combined_line(request, when=when, aborted=aborted))


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
