"""
The servers bench/run.py compares, and starting/stopping them cleanly.

Every server listens on 127.0.0.1 on a fresh port, in its own session (so
its whole process tree can be signalled by its process group id), pinned to
core 0 unless it has several workers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
APPS = BENCH / "apps"

sys.path.insert(0, str(BENCH))
from clients import Conn, proc_stats  # noqa: E402

#: twistd, run by the interpreter that runs this harness (it has Twisted).
TWISTD = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]

SERVER_CPU = 0
CLIENT_CPU = 1


#: The cores this harness may use, read once at import, before the harness
#: pins itself to CLIENT_CPU.
_CPUS = sorted(os.sched_getaffinity(0))


def cpus() -> int:
    return len(_CPUS)


def pinning(cpu: Optional[int]) -> Optional[Callable[[], None]]:
    """
    A preexec_fn pinning the child to one core (what taskset -c does), or,
    for C{cpu=None}, letting it run on every core (children inherit the
    harness's own pinning to CLIENT_CPU); None on a single core.
    """
    if cpus() < 2:
        return None
    if cpu is None:
        return lambda: os.sched_setaffinity(0, _CPUS)
    return lambda: os.sched_setaffinity(0, {cpu})


@dataclass
class Context:
    """
    What server command lines depend on.
    """

    tx_python: str
    venv_python: Optional[str]
    txawsgi_flags: set[str]
    run_dir: Path
    wait_timeout: float = 60.0
    #: Every server logs every request in every scenario (--access-log);
    #: otherwise only in the "logged" scenario.
    access_log: bool = False

    def logs(self, scenario: str) -> bool:
        """
        Whether servers log each request in C{scenario}.  By default none
        does (what gunicorn, waitress and gevent do by default): an access
        log costs a Twisted server as much as the rest of a hello, and
        logging in some servers only would not be a side-by-side figure.
        """
        return self.access_log or scenario == "logged"


@dataclass
class Server:
    name: str
    label: str
    #: "base": every scenario; "workers": the multi-process comparison only.
    group: str
    #: "tx": the harness's interpreter (Twisted, txawsgi); "venv": bench/.venv.
    python: str
    argv: Callable[[Context, int, str], list[str]]
    #: txawsgi CLI flags this server cannot run without.
    needs_flags: tuple[str, ...] = ()
    #: Pinned to SERVER_CPU (single-process servers); workers float.
    pinned: bool = True
    notes: dict[str, str] = field(default_factory=dict)
    #: For a multi-process server: the same server in one process, whose
    #: hello_ka50 its workers_ka50 is compared with.
    single: str = ""

    def command(self, ctx: Context, port: int, scenario: str) -> list[str]:
        return self.argv(ctx, port, scenario)


def _listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1:backlog=4096"


def _txawsgi(threads: int = 0, workers: int = 0) -> Callable[[Context, int, str], list[str]]:
    def argv(ctx: Context, port: int, scenario: str) -> list[str]:
        cmd = [ctx.tx_python, *TWISTD, "awsgi", "--app", "awsgi_app:application", "--listen", _listen(port)]
        if threads:
            cmd += ["--threads", str(threads)]
        if workers:
            cmd += ["--workers", str(workers)]
        if scenario == "upload" and not threads and "stream-input" in ctx.txawsgi_flags:
            cmd += ["--stream-input"]
        if ctx.logs(scenario):
            # Its own access log (combined format, to stdout): the cheaper
            # of the two it offers, as a production setup would choose.
            cmd += ["--access-log", "-"]
        elif "no-access-log" in ctx.txawsgi_flags:
            cmd += ["--no-access-log"]
        return cmd

    return argv


def _tac(name: str) -> Callable[[Context, int, str], list[str]]:
    return lambda ctx, port, scenario: [ctx.tx_python, *TWISTD, "-y", str(APPS / name)]


def _gunicorn(workers: int) -> Callable[[Context, int, str], list[str]]:
    return lambda ctx, port, scenario: [
        ctx.venv_python, "-m", "gunicorn", "-k", "sync", "-w", str(workers),
        "-b", f"127.0.0.1:{port}", "--backlog", "4096", "--timeout", "300",
        "--graceful-timeout", "3", "--chdir", str(APPS),
        *(["--access-logfile", "-"] if ctx.logs(scenario) else []),
        "wsgi_app:application",
    ]  # fmt: skip


def _uvicorn(ctx: Context, port: int, scenario: str) -> list[str]:
    logs = ctx.logs(scenario)
    return [
        ctx.venv_python, "-m", "uvicorn", "asgi_app:app", "--app-dir", str(APPS),
        "--host", "127.0.0.1", "--port", str(port), "--backlog", "4096",
        "--loop", "uvloop", "--http", "httptools",
        *([] if logs else ["--no-access-log"]), "--log-level", "info" if logs else "warning",
        "--timeout-graceful-shutdown", "3",
    ]  # fmt: skip


SERVERS = [
    Server(
        "txawsgi", "txawsgi, reactor mode (twistd awsgi)", "base", "tx", _txawsgi(),
    ),
    Server(
        "txawsgi-threads", "txawsgi, --threads 10", "base", "tx", _txawsgi(threads=10),
        needs_flags=("threads",),
    ),
    Server(
        "twisted", "bare twisted.web resource (the 1.00 reference)", "base", "tx", _tac("twisted_bare.tac"),
    ),
    Server(
        "twisted-wsgi", "twisted.web.wsgi.WSGIResource (reactor pool, 10 threads)", "base", "tx",
        _tac("twisted_wsgi.tac"),
    ),
    Server(
        "gunicorn", "gunicorn, sync worker, -w 1", "base", "venv", _gunicorn(1),
        notes={"hello": "gunicorn's sync worker closes every connection, so its keep-alive rows are not keep-alive"},
    ),
    Server(
        "waitress", "waitress (defaults: 4 threads)", "base", "venv",
        lambda ctx, port, scenario: [
            ctx.venv_python, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--backlog=4096",
            "wsgi_app:application",
        ],
        notes={"logged": "waitress has no access log of its own: it logs nothing here either"},
    ),
    Server(
        "gevent", "gevent.pywsgi, monkey-patched, TCP_NODELAY", "base", "venv",
        lambda ctx, port, scenario: [ctx.venv_python, str(APPS / "gevent_server.py"), str(port)],
    ),
    Server(
        "uvicorn", "uvicorn (uvloop, httptools), raw ASGI app", "base", "venv", _uvicorn,
    ),
    Server(
        "txawsgi-w2", "txawsgi, --workers 2", "workers", "tx", _txawsgi(workers=2),
        needs_flags=("workers",), pinned=False, single="txawsgi",
    ),
    Server(
        "gunicorn-w2", "gunicorn, sync worker, -w 2", "workers", "venv", _gunicorn(2), pinned=False,
        single="gunicorn",
    ),
]

BY_NAME = {s.name: s for s in SERVERS}


def txawsgi_flags(tx_python: str) -> tuple[set[str], str]:
    """
    The long options C{twistd awsgi --help} lists (the CLI is still growing:
    rows that need a missing flag are skipped).
    """
    env = dict(os.environ, PYTHONPATH=_pythonpath("tx"))
    proc = subprocess.run(
        [tx_python, *TWISTD[:2], "awsgi", "--help"], env=env, cwd=str(REPO),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return set(re.findall(r"--([a-z][a-z0-9-]*)", proc.stdout)), proc.stdout + proc.stderr


def _pythonpath(python: str) -> str:
    parts = [str(APPS)]
    if python == "tx":
        parts.append(str(REPO))
    return os.pathsep.join(parts)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pgid_members(pgid: int) -> list[int]:
    return [pid for pid, fields in proc_stats() if int(fields[2]) == pgid and fields[0] != b"Z"]


def cpu_seconds(pgid: int) -> dict[int, float]:
    """
    CPU seconds (user + system) used so far by each live process of group
    C{pgid}, by pid.
    """
    tick = os.sysconf("SC_CLK_TCK")
    return {
        pid: (int(fields[11]) + int(fields[12])) / tick
        for pid, fields in proc_stats()
        if int(fields[2]) == pgid and fields[0] != b"Z"
    }


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _trim(path: Path, keep: int = 100) -> None:
    """
    Keep the head and tail of a big server log (Twisted's access log writes a
    line per request).
    """
    try:
        if path.stat().st_size < 1 << 20:
            return
        lines = path.read_bytes().splitlines(keepends=True)
        cut = len(lines) - 2 * keep
        path.write_bytes(b"".join(lines[:keep] + [b"... %d lines cut ...\n" % cut] + lines[-keep:]))
    except OSError:
        pass


class Running:
    """
    A started server.  Use as a context manager: leaving stops it, checks
    that its process group is gone and its port is closed.
    """

    #: Every server started and not yet stopped (for the exit handler).
    live: list["Running"] = []

    def __init__(self, server: Server, ctx: Context, scenario: str, tag: str) -> None:
        self.server = server
        self.port = free_port()
        self.trigger_port = free_port(socket.SOCK_DGRAM) if scenario == "longpoll" else 0
        python = server.python
        env = dict(os.environ)
        env.update(
            PYTHONPATH=_pythonpath(python),
            PYTHONUNBUFFERED="1",
            BENCH_PORT=str(self.port),
            BENCH_WAIT_TIMEOUT=str(ctx.wait_timeout),
            # (For the servers configured in bench/apps: the .tac files and gevent.)
            BENCH_ACCESS_LOG="1" if ctx.logs(scenario) else "0",
        )
        if self.trigger_port:
            env["BENCH_TRIGGER_PORT"] = str(self.trigger_port)
        else:
            env.pop("BENCH_TRIGGER_PORT", None)
        self.argv = server.command(ctx, self.port, scenario)
        self.log_path = ctx.run_dir / f"{tag}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv, cwd=str(ctx.run_dir), env=env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=pinning(SERVER_CPU if server.pinned else None),
        )  # fmt: skip
        self.pid = self.proc.pid
        self.stopped_by = ""
        Running.live.append(self)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server.name} exited ({self.proc.returncode}) at startup:\n{self.log_tail()}")
            try:
                conn = Conn(self.port, timeout=2.0)
            except OSError:
                time.sleep(0.1)
                continue
            try:
                conn.send(f"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
                status, headers = conn.read_head()
                conn.read_body(headers)
                if status == 200:
                    return
            except (OSError, EOFError, ValueError):
                pass
            finally:
                conn.close()
            time.sleep(0.1)
        raise RuntimeError(f"{self.server.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 6.0) -> None:
        """
        SIGTERM the process group, SIGKILL it after C{grace} seconds, then
        make sure nothing of it is left and its port is closed.
        """
        if self not in Running.live:
            return
        pgid = self.pid  # start_new_session: the leader's pid is the group id
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(grace)
            self.stopped_by = "SIGTERM"
        except subprocess.TimeoutExpired:
            self.stopped_by = "SIGKILL"
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while _pgid_members(pgid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.server.name}: processes {_pgid_members(pgid)} outlived SIGKILL")
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.1)
        self._log.close()
        _trim(self.log_path)
        Running.live.remove(self)
        deadline = time.monotonic() + 10
        while _port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.server.name}: port {self.port} still open after stop")
            time.sleep(0.1)

    def __enter__(self) -> "Running":
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all() -> None:
    for running in list(Running.live):
        try:
            running.stop(grace=3.0)
        except Exception as e:  # noqa: BLE001 - best effort at exit
            print(f"warning: {e}", file=sys.stderr)
