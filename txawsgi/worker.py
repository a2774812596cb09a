"""
A worker process of C{twistd awsgi --workers N}: C{python -m txawsgi.worker
<awsgi options>}, started by the supervisor (L{txawsgi.workers}), never by
hand.

It parses the same options as the supervisor, serves on the sockets it
inherited (described in C{$TXAWSGI_WORKER}), writes its log lines, tagged
with its name, to the supervisor's log file (an inherited descriptor; or,
when it has none, to standard output without timestamps, for the supervisor
to relay), shuts down gracefully on SIGTERM (SIGINT, which a terminal sends
to the whole process group, is left to the supervisor), and also when its
supervisor goes away (its stdin pipe closes).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import sys
from typing import Any, Callable, Optional, Sequence

from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    eventAsText,
    formatTime,
    globalLogBeginner,
)
from twisted.python import usage
from zope.interface import implementer

from txawsgi.accesslog import AccessLog
from txawsgi.linelog import LineWriter
from txawsgi.listeners import InheritedEndpoint
from txawsgi.tap import Options, make_server_service
from txawsgi.workers import ENV

__all__ = ["WorkerOptions", "main"]

_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


class WorkerOptions(Options):
    """
    The C{awsgi} options, as a worker reads them: its listening sockets are
    inherited, so C{--listen} descriptions are not checked here (a
    C{systemd:} one could not be: the activation variables are the
    supervisor's).
    """

    check_listen = False


@implementer(IReadDescriptor)
class _ParentWatch:
    """
    Call C{gone()} when standard input (a pipe from the supervisor) reaches
    its end: the supervisor has exited.
    """

    def __init__(self, reactor: Any, gone: Callable[[], None], fd: int = 0) -> None:
        self._reactor = reactor
        self._gone = gone
        self._fd = fd
        os.set_blocking(fd, False)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._reactor.removeReader(self)
            self._gone()

    def connectionLost(self, reason: Any) -> None:
        # The reactor saw the pipe hang up (and stopped watching it).
        self._gone()

    def logPrefix(self) -> str:
        return "supervisor-pipe"


def _format(event: dict[str, Any]) -> Optional[str]:
    text = eventAsText(event, includeTimestamp=False, includeSystem=True)
    return text + "\n" if text else None


#: Levels written at once (with what is buffered), not a moment later.
_URGENT = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


@implementer(ILogObserver)
class WorkerLogObserver:
    """
    Write log events as twistd's classic text lines, with the worker's name
    after the timestamp (C{2026-11-21T12:56:01+0000 [worker-1] [-] text}),
    to the supervisor's log file.

    Lines are buffered a moment (L{LineWriter}); warnings and errors are
    written at once.  The time is formatted once per second, and lines
    written to a L{twisted.logger.LoggingFile} (Twisted's request log, one
    per request) skip the general formatter.
    """

    def __init__(self, writer: LineWriter, name: str) -> None:
        self.writer = writer
        self._tag = f" [{name}] "
        self._second = -1
        self._stamp = ""

    def _time(self, when: Optional[float]) -> str:
        if when is None:
            return formatTime(None)
        second = int(when // 1)
        if second != self._second:
            self._second, self._stamp = second, formatTime(second)
        return self._stamp

    @staticmethod
    def _text(event: dict[str, Any]) -> str:
        """
        C{[system] message}, as L{eventAsText} formats it.
        """
        if event.get("log_format") == "{log_io}" and "log_failure" not in event:
            # A line written to a LoggingFile, as is.
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                namespace = event.get("log_namespace", "-")
                system = f"{namespace}#{level.name if level is not None else '-'}"
            return f"[{system}] {event.get('log_io')}"
        return eventAsText(event, includeTimestamp=False, includeSystem=True)

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._text(event)
        if not text:
            return
        line = self._time(event.get("log_time")) + self._tag + text.replace("\n", "\n\t") + "\n"
        self.writer.write(line.encode("utf-8", "backslashreplace"))
        if event.get("log_level") in _URGENT:
            self.writer.flush()


def _report_log_error(error: OSError) -> None:
    try:
        sys.stderr.write(f"txawsgi.worker: cannot write the log: {error}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _start_logging(config: dict[str, Any], reactor: Any) -> Optional[LineWriter]:
    """
    Log to the supervisor's log file if it gave one, else to standard
    output (relayed by the supervisor).

    @return: the writer to flush at exit, if any.
    """
    log_fd = config.get("log_fd")
    if log_fd is None:
        globalLogBeginner.beginLoggingTo(
            [FileLogObserver(sys.stdout, _format)], redirectStandardIO=False
        )
        return None
    full_fd = config.get("log_full_fd")
    on_full: Optional[Callable[[], None]] = None
    if full_fd is not None:
        os.set_inheritable(full_fd, False)
        os.set_blocking(full_fd, False)

        def on_full() -> None:
            # Tell the supervisor: it rotates the file.
            try:
                os.write(full_fd, b"r")
            except OSError:
                pass  # it is gone, or has a pipe full of these

    writer = LineWriter(
        log_fd,
        reactor=reactor,
        on_error=_report_log_error,
        follow=config.get("log_path"),
        full_at=config.get("log_rotate_length"),
        on_full=on_full,
        owned=True,
    )
    atexit.register(writer.flush)
    globalLogBeginner.beginLoggingTo(
        [WorkerLogObserver(writer, f"worker-{config['index']}")], redirectStandardIO=False
    )
    return writer


def main(argv: Optional[Sequence[str]] = None, reactor: Any = None) -> None:
    """
    Run a worker until it is told to stop.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    # Ctrl-C reaches the whole process group: the supervisor's SIGTERM is
    # the order to stop (a second stop would fail), so SIGINT is ignored
    # (and Twisted leaves it so).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        config = json.loads(os.environ.pop(ENV))
    except (KeyError, ValueError):
        sys.exit(f"txawsgi.worker is started by 'twistd awsgi --workers N', not by hand (no ${ENV})")
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    writer = _start_logging(config, reactor)
    options = WorkerOptions()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        sys.exit(f"txawsgi.worker: {e}")
    endpoints = [
        (
            listener["listen"],
            InheritedEndpoint(
                reactor,
                listener["fd"],
                _FAMILIES[listener["family"]],
                listener["listen"],
                listener["tls"],
            ),
        )
        for listener in config["listeners"]
    ]
    access_fd = config.get("access_log_fd")
    access_log = (
        AccessLog(options["access-log"], fd=access_fd, reactor=reactor)
        if access_fd is not None
        else None
    )
    service = make_server_service(
        options,
        reactor,
        endpoints=endpoints,
        access_log=access_log,
        multiprocess=True,
        name=f"worker-{config['index']}",
    )

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping

    _ParentWatch(reactor, stop)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    if writer is not None:
        writer.flush()


if __name__ == "__main__":
    main()
