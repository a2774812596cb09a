"""
C{--workers N}: one supervisor process and N worker processes serving the
same listening sockets.

The supervisor (the C{twistd}/C{twist} process) binds the sockets (see
L{txawsgi.listeners}), opens the access log, then runs N C{python -m
txawsgi.worker} processes under Twisted's L{ProcessMonitor}, each given the
sockets and the logs as inherited descriptors.  The monitor restarts a
worker that dies (at once if it had been up a while, with growing delays if
it keeps dying at start); the supervisor logs why each one ended.

Workers write their log lines (Twisted's request log too) straight to the
supervisor's log destination -- standard output under C{twistd -n}, or the
C{--logfile} -- in the same format, tagged C{[worker-N]}: relaying every
line through the supervisor would make it the bottleneck.  Each write is
whole lines, so lines of different processes do not interleave (see
L{txawsgi.linelog} for what the kernel guarantees).  A worker moves to the new file within L{FOLLOW_EVERY
<txawsgi.linelog.FOLLOW_EVERY>} seconds once twistd's log file has been
rotated; the file rotates at its real size (see L{LogTarget}), a worker
telling the supervisor (through a pipe) when its lines made it reach that.
When the supervisor's log is anything else (syslog, a C{--logger},
C{twist}'s filtered or JSON logs), workers write to their standard output
instead and the supervisor relays each line into its log.
Whatever else workers print on their standard output or error is relayed
too.

On SIGTERM/SIGINT the supervisor closes its copies of the sockets, forwards
SIGTERM to every worker (each shuts down gracefully, see
L{txawsgi.shutdown}), and exits once all have; a worker still running
C{grace + KILL_MARGIN} seconds later is killed.  A worker whose supervisor
disappears (its stdin pipe closes) shuts down by itself.

Why inherited descriptors rather than C{SO_REUSEPORT}: they work for every
endpoint type (UNIX sockets, TLS, systemd socket activation, port 0), a
privileged port is bound once before privileges are dropped, and the
workers share one accept queue, so a worker's death drops no connection
that it had not accepted (with C{SO_REUSEPORT} each socket has its own
queue, reset when its process dies).  The kernel wakes every worker
waiting on the shared socket; each accepts one connection per wakeup
(L{txawsgi.listeners.ACCEPTS_PER_WAKEUP}), so a burst of connections is
shared out instead of going to whichever woke first.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import (
    FileLogObserver,
    LogLevel,
    Logger,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.python.logfile import BaseLogFile, LogFile
from twisted.runner.procmon import ProcessMonitor
from zope.interface import implementer

import txawsgi
from txawsgi.accesslog import AccessLog
from txawsgi.linelog import set_append
from txawsgi.listeners import HeldSocket, bind, family_name

__all__ = ["ENV", "KILL_MARGIN", "LogTarget", "Supervisor", "cpu_count", "parse_workers"]

#: The environment variable telling a worker what it inherited (JSON).
ENV = "TXAWSGI_WORKER"

#: Seconds past the grace period before a worker that has not exited is
#: killed.
KILL_MARGIN = 5.0

#: Environment variables of systemd socket activation; they are the
#: supervisor's, not the workers'.
_SYSTEMD = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")

#: The first descriptor number of the inherited sockets in a worker.
FIRST_FD = 3


def cpu_count() -> int:
    """
    The CPUs this process may run on.
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def parse_workers(value: str) -> int:
    """
    C{--workers}: a positive count, or C{0} / C{auto} for one per CPU.

    @raise ValueError: for anything else.
    """
    if value.strip().lower() == "auto":
        return cpu_count()
    count = int(value)
    if count < 0:
        raise ValueError(f"must be >= 0 or 'auto', not {value!r}")
    return count or cpu_count()


def describe_exit(reason: Failure) -> str:
    """
    How a process ended, in words.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = "?"
            return f"was killed by signal {value.signal} ({name})"
        return f"exited with status {value.exitCode}"
    return f"ended: {value!r}"


#: An event whose formatting tells whether a log observer writes twistd's
#: classic text lines.
_PROBE: dict[str, Any] = {
    "log_format": "probe {n}",
    "n": 1,
    "log_time": 86400.5,
    "log_system": "probe",
    "log_level": LogLevel.info,
    "log_namespace": "probe",
}


class LogTarget:
    """
    Where the supervisor's own log lines go, when its worker processes can
    write theirs there too: the file of the one log observer, if that is a
    plain file observer writing classic text lines (twistd's standard
    output or C{--logfile}).

    A rotating twistd log file (C{--logfile}; it rotates by size and on
    C{SIGUSR1}) is written with C{O_APPEND} from here on, after every
    rotation too, and workers are given its path to follow it when it is
    rotated.  It rotates by its real size, everybody's lines counted (a
    L{LogFile} counts only what it wrote itself): checked before each line
    of its own, and when a worker says that its lines filled it
    (L{rotate_if_full}).

    This looks at the global log publisher's observers and a
    L{FileLogObserver}'s file (private attributes of Twisted's): when they
    are not as expected, L{find} returns L{None} and workers' lines are
    relayed.
    """

    def __init__(self, out: Any) -> None:
        self._out = out
        self.path: Optional[str] = out.path if isinstance(out, BaseLogFile) else None
        #: The size at which the file rotates (L{None}: not by size).
        self.rotate_length: Optional[int] = None
        if self.path is not None:
            self._append_after_rotation(out)
            if (
                isinstance(out, LogFile)
                and type(out).shouldRotate is LogFile.shouldRotate
                and out.rotateLength
            ):
                self.rotate_length = int(out.rotateLength)
                self._rotate_by_real_size(out)
        set_append(self.fileno())

    def fileno(self) -> int:
        """
        The descriptor of the log file (it changes when it is rotated).
        """
        out = self._out
        if isinstance(out, BaseLogFile):
            return int(out._file.fileno())  # type: ignore[attr-defined]
        return int(out.fileno())

    @staticmethod
    def _append_after_rotation(logfile: Any) -> None:
        """
        Make each file C{logfile} opens (after rotating) C{O_APPEND}, so its
        writes do not land on the workers' lines.
        """
        reopen = logfile._openFile
        if getattr(reopen, "_txawsgi_append", False):
            return

        def _openFile() -> None:
            reopen()
            set_append(logfile._file.fileno())

        _openFile._txawsgi_append = True  # type: ignore[attr-defined]
        logfile._openFile = _openFile

    @staticmethod
    def _rotate_by_real_size(logfile: LogFile) -> None:
        """
        Make C{logfile} rotate when the file is C{rotateLength} bytes long,
        whoever wrote them.
        """
        if getattr(logfile.shouldRotate, "_txawsgi_size", False):
            return

        def shouldRotate() -> bool:
            limit = logfile.rotateLength
            if not limit:
                return False
            try:
                size = os.fstat(logfile._file.fileno()).st_size  # type: ignore[attr-defined]
            except (OSError, ValueError):
                size = logfile.size
            return bool(size >= limit)

        shouldRotate._txawsgi_size = True  # type: ignore[attr-defined]
        logfile.shouldRotate = shouldRotate  # type: ignore[method-assign]

    def rotate_if_full(self) -> None:
        """
        Rotate the log file now if it has reached its size.
        """
        out = self._out
        if self.rotate_length is not None and out.shouldRotate():
            out.flush()
            out.rotate()

    @classmethod
    def find(cls, publisher: Any = globalLogPublisher) -> Optional["LogTarget"]:
        """
        The target of C{publisher}'s only observer, if workers can write
        there themselves; else L{None}.
        """
        observers = getattr(publisher, "_observers", None)
        if not isinstance(observers, list) or len(observers) != 1:
            return None
        [observer] = observers
        if not isinstance(observer, FileLogObserver):
            return None
        try:
            classic = observer.formatEvent(dict(_PROBE)) == formatEventAsClassicLogText(dict(_PROBE))
        except Exception:
            return None
        out = getattr(observer, "_outFile", None)
        if not classic or out is None:
            return None
        if isinstance(out, BaseLogFile):
            if not (hasattr(out, "_file") and hasattr(out, "_openFile") and hasattr(out, "path")):
                return None
        try:
            return cls(out)
        except (AttributeError, OSError, ValueError):
            return None  # no usable descriptor (e.g. a StringIO)


class _Watched(ProcessProtocol):
    """
    Stands between the monitor's logging protocol and the process: reports
    the start and the end of each worker to the L{Supervisor}.
    """

    def __init__(self, inner: ProcessProtocol, supervisor: "Supervisor") -> None:
        self._inner = inner
        self._supervisor = supervisor
        self.name: str = getattr(inner, "name", "worker")
        self.pid: Optional[int] = None
        #: The descriptor on which the worker says the log file is full.
        self._full_fd = supervisor._log_full_slot()

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.pid = transport.pid
        self._inner.makeConnection(transport)
        self._supervisor._started(self)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self._full_fd:
            self._supervisor._log_full()
            return
        self._inner.childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        self._inner.childConnectionLost(childFD)

    def processExited(self, reason: Failure) -> None:
        self._inner.processExited(reason)

    def processEnded(self, reason: Failure) -> None:
        self._supervisor._ended(self, reason)
        self._inner.processEnded(reason)


@implementer(IReactorProcess, IReactorTime)
class _SpawningWithSockets:
    """
    The reactor as the L{ProcessMonitor} sees it: every process it spawns
    inherits the supervisor's sockets (the monitor has no C{childFDs}).
    """

    def __init__(self, reactor: Any, supervisor: "Supervisor") -> None:
        self._reactor = reactor
        self._supervisor = supervisor

    def spawnProcess(  # type: ignore[override]
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Sequence[str] = (),
        env: Optional[dict[str, str]] = None,
        path: Optional[str] = None,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        usePTY: bool = False,
        childFDs: Optional[dict[int, Any]] = None,
    ) -> Any:
        watched = _Watched(processProtocol, self._supervisor)
        return self._reactor.spawnProcess(
            watched,
            executable,
            args,
            env=env,
            path=path,
            uid=uid,
            gid=gid,
            usePTY=usePTY,
            childFDs=self._supervisor.child_fds(),
        )

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:  # type: ignore[override]
        return self._reactor.callLater(delay, f, *args, **kw)

    def seconds(self) -> float:
        return self._reactor.seconds()

    def getDelayedCalls(self) -> Any:
        return self._reactor.getDelayedCalls()


class Supervisor(Service):
    """
    Hold the listening sockets and the access log, and keep C{count}
    workers running on them.

    @param argv: the C{awsgi} options the workers parse (the supervisor's
        own, so both agree on everything).
    @param listen: the C{--listen} endpoint descriptions.
    @param access_log: the access log the workers write to, if any.
    @param grace: the graceful shutdown period of a worker, in seconds.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        argv: Sequence[str],
        count: int,
        listen: Sequence[str],
        access_log: Optional[AccessLog],
        grace: float,
    ) -> None:
        self._reactor = reactor
        self.argv = list(argv)
        self.count = count
        self.listen = list(listen)
        self.access_log = access_log
        self.sockets: list[HeldSocket] = []
        self.monitor = ProcessMonitor(reactor=_SpawningWithSockets(reactor, self))
        self.monitor.killTime = grace + KILL_MARGIN  # type: ignore[assignment]  # seconds, a float is fine
        self.workers: dict[str, _Watched] = {}
        self._exited: list[Deferred[None]] = []
        #: Where workers write their log lines (L{None}: relayed by this
        #: process); found when the service starts, logging being set up.
        self.log_target: Optional[LogTarget] = None

    # -- what workers get ------------------------------------------------

    def child_fds(self) -> dict[int, Any]:
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for offset, held in enumerate(self.sockets):
            fds[FIRST_FD + offset] = held.fd
        access_fd, log_fd = self._access_log_slot(), self._log_slot()
        if access_fd is not None:
            fds[access_fd] = self.access_log.fileno  # type: ignore[union-attr]
        if log_fd is not None:
            fds[log_fd] = self.log_target.fileno()  # type: ignore[union-attr]
        full_fd = self._log_full_slot()
        if full_fd is not None:
            fds[full_fd] = "r"
        return fds

    def _access_log_slot(self) -> Optional[int]:
        """
        The access log's descriptor number in a worker, if there is one.
        """
        if self.access_log is None or self.access_log.fileno is None:
            return None
        return FIRST_FD + len(self.sockets)

    def _log_slot(self) -> Optional[int]:
        """
        The log's descriptor number in a worker, if it writes there itself.
        """
        if self.log_target is None:
            return None
        return FIRST_FD + len(self.sockets) + (self._access_log_slot() is not None)

    def _log_full_slot(self) -> Optional[int]:
        """
        The descriptor number in a worker of the pipe on which it says that
        the log file has reached its rotation size, if it rotates by size.
        """
        log_fd = self._log_slot()
        if log_fd is None or self.log_target is None or self.log_target.rotate_length is None:
            return None
        return log_fd + 1

    def worker_config(self, index: int) -> dict[str, Any]:
        """
        What worker C{index} is told (as JSON in L{ENV}).
        """
        return {
            "index": index,
            "listeners": [
                {
                    "fd": FIRST_FD + offset,
                    "family": family_name(held.family),
                    "listen": held.description,
                    "tls": held.tls,
                }
                for offset, held in enumerate(self.sockets)
            ],
            "access_log_fd": self._access_log_slot(),
            "log_fd": self._log_slot(),
            "log_path": self.log_target.path if self.log_target is not None else None,
            "log_rotate_length": self.log_target.rotate_length if self.log_target is not None else None,
            "log_full_fd": self._log_full_slot(),
        }

    def worker_env(self, index: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD}
        root = os.path.dirname(os.path.dirname(os.path.abspath(txawsgi.__file__)))
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root + (os.pathsep + old if old else "")
        env[ENV] = json.dumps(self.worker_config(index))
        return env

    # -- IService ----------------------------------------------------------

    def privilegedStartService(self) -> None:
        """
        Bind the sockets and open the access log, before twistd drops
        privileges.
        """
        super().privilegedStartService()
        for description in self.listen:
            self.sockets.append(bind(self._reactor, description))
        if self.access_log is not None:
            self.access_log.open()

    def startService(self) -> None:
        if not self.sockets:
            self.privilegedStartService()
        super().startService()
        self.log_target = LogTarget.find()
        cwd = os.getcwd()
        for index in range(1, self.count + 1):
            name = f"worker-{index}"
            self.monitor.addProcess(
                name,
                [sys.executable, "-m", "txawsgi.worker", *self.argv],
                env=self.worker_env(index),
                cwd=cwd,
            )
        self.monitor.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting (close the sockets here; workers close theirs as they
        stop), forward SIGTERM to the workers, fire once all have exited.
        """
        super().stopService()
        closing = [held.close() for held in self.sockets]
        self.sockets = []
        if self.workers:
            self._log.info(
                "Stopping {count} worker(s); each has {grace:g}s to finish its requests",
                count=len(self.workers),
                grace=self.monitor.killTime - KILL_MARGIN,
            )
        self.monitor.stopService()
        d = DeferredList([*closing, self._all_exited()], consumeErrors=True)

        def done(_: object) -> None:
            if self.access_log is not None:
                self.access_log.close()

        return d.addCallback(done)

    # -- bookkeeping, from _Watched ----------------------------------------

    def _started(self, worker: _Watched) -> None:
        self.workers[worker.name] = worker
        self._log.info("{name} started (pid {pid})", name=worker.name, pid=worker.pid)

    def _ended(self, worker: _Watched, reason: Failure) -> None:
        if self.workers.get(worker.name) is worker:
            del self.workers[worker.name]
        how = describe_exit(reason)
        if self.running:
            self._log.warn(
                "{name} (pid {pid}) {how}; restarting it",
                name=worker.name,
                pid=worker.pid,
                how=how,
            )
        else:
            self._log.info("{name} (pid {pid}) {how}", name=worker.name, pid=worker.pid, how=how)
        if not self.workers:
            exited, self._exited = self._exited, []
            for d in exited:
                d.callback(None)

    def _log_full(self) -> None:
        """
        A worker's lines made the log file reach its rotation size: rotate
        it (unless another worker's word did already).
        """
        if self.log_target is None:
            return
        try:
            self.log_target.rotate_if_full()
        except Exception:
            self._log.failure("Cannot rotate the log file")

    def _all_exited(self) -> Deferred[None]:
        if not self.workers:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._exited.append(d)
        return d
