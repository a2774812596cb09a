"""
A worker process of C{twistd awsgi --workers N}: C{python -m txawsgi.worker
<awsgi options>}, started by the supervisor (L{txawsgi.workers}), never by
hand.

It parses the same options as the supervisor, serves on the sockets it
inherited (described in C{$TXAWSGI_WORKER}), writes its log to standard
output without timestamps (the supervisor's log adds them, and the worker's
name), shuts down gracefully on SIGTERM (SIGINT, which a terminal sends to
the whole process group, is left to the supervisor), and also when its
supervisor goes away (its stdin pipe closes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any, Callable, Optional, Sequence

from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import FileLogObserver, eventAsText, globalLogBeginner
from twisted.python import usage
from zope.interface import implementer

from txawsgi.accesslog import AccessLog
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
    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stdout, _format)], redirectStandardIO=False
    )
    options = WorkerOptions()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        sys.exit(f"txawsgi.worker: {e}")
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
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
    log_fd = config.get("access_log_fd")
    access_log = AccessLog(options["access-log"], fd=log_fd) if log_fd is not None else None
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


if __name__ == "__main__":
    main()
