#!/usr/bin/env python3
"""
txawsgi benchmark harness: one command, every server, every scenario.

    python bench/run.py [--rounds N] [--duration S] [--scenarios hello,stream,...]
                        [--servers txawsgi,twisted,...] [--quick] [--access-log]
                        [--docs | --no-docs]

Run it with an interpreter that has Twisted (txawsgi is imported from this
checkout); the anchor servers (gunicorn, waitress, gevent, uvicorn) and
matplotlib are installed by the harness into bench/.venv with pip.  Each
server is started on 127.0.0.1 in turn (A B C ... A B C ...) for every
round, pinned to core 0 while the load generator (wrk, or bench/clients.py)
runs on core 1, and stopped before the next one starts.  The table gives the
median over rounds and its ratio to the bare twisted.web resource measured
in the same run.  A full run (no --quick, every scenario and server) also
rewrites docs/benchmarks.rst and docs/benchmarks.png.

Smoke test (about a minute):

    python bench/run.py --quick --scenarios hello --servers txawsgi,twisted
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
from clients import hwm_kib, rss_kib  # noqa: E402
from servers import (  # noqa: E402
    BY_NAME,
    CLIENT_CPU,
    REPO,
    SERVERS,
    Context,
    Running,
    Server,
    cpu_seconds,
    cpus,
    pinning,
    stop_all,
    txawsgi_flags,
)

SCENARIOS = ["hello", "logged", "stream", "upload", "longpoll", "slow", "workers"]
MiB = 1024 * 1024
BASELINE = "twisted"


@dataclass
class Config:
    rounds: int = 3
    #: Rounds of the hello scenarios (one-connection-per-server figures
    #: vary most from run to run on a shared machine).
    hello_rounds: int = 5
    duration: int = 5  # seconds of each wrk run
    warmup: int = 1
    stream_size: int = 64 * MiB
    stream_count: int = 3
    upload_size: int = 256 * MiB
    upload_count: int = 2
    longpolls: int = 10000
    longpoll_rounds: int = 2
    open_deadline: float = 10.0
    publish_deadline: float = 20.0
    stall: float = 5.0
    slow_size: int = 1024 * MiB
    slow_rate: float = 16 * MiB
    slow_rounds: int = 1
    quick: bool = False

    @classmethod
    def quick_config(cls) -> "Config":
        return cls(
            rounds=1, hello_rounds=1, duration=2, warmup=1, stream_size=64 * MiB, stream_count=1,
            upload_size=64 * MiB, upload_count=1, longpolls=1000, longpoll_rounds=1,
            open_deadline=5.0, publish_deadline=5.0, slow_size=64 * MiB, slow_rounds=1, quick=True,
        )  # fmt: skip


# -- metrics ------------------------------------------------------------------------


@dataclass
class Metric:
    key: str
    scenario: str
    title: str
    unit: str
    higher_is_better: bool
    #: Compare with this metric of the baseline server (default: the same).
    baseline_key: str = ""


def metrics(cfg: Config) -> list[Metric]:
    def size(n: int) -> str:
        return f"{n // 1024 // MiB} GiB" if n >= 1024 * MiB else f"{n // MiB} MiB"

    lp = f"{cfg.longpolls:,} long-polls"
    return [
        Metric("hello_ka1", "hello", "hello, keep-alive, 1 connection", "req/s", True),
        Metric("hello_ka50", "hello", "hello, keep-alive, 50 connections", "req/s", True),
        Metric("hello_close50", "hello", "hello, no keep-alive, 50 connections", "req/s", True),
        Metric("logged_ka50", "logged", "hello, keep-alive, 50 connections, access log on", "req/s", True),
        Metric("stream_mbs", "stream", f"{size(cfg.stream_size)} streamed response", "MB/s", True),
        Metric("upload_mbs", "upload", f"{size(cfg.upload_size)} upload", "MB/s", True),
        Metric("upload_rss", "upload", f"{size(cfg.upload_size)} upload: server peak RSS", "MiB", False),
        Metric("lp_served", "longpoll", f"{lp}: answered by one broadcast", "answers", True),
        Metric("lp_time", "longpoll", f"{lp}: time until all answered", "s", False),
        Metric("lp_rss", "longpoll", f"{lp}: RSS per held connection", "KiB", False),
        Metric("lp_hello", "longpoll", f"{lp}: hello latency while held", "ms", False),
        Metric(
            "slow_rss", "slow",
            f"{size(cfg.slow_size)} to a {cfg.slow_rate / MiB:.0f} MiB/s reader: peak RSS", "MiB", False,
        ),  # fmt: skip
        Metric(
            "workers_ka50", "workers", "2 workers: hello, keep-alive, 50 connections", "req/s", True,
            baseline_key="hello_ka50",
        ),  # fmt: skip
    ]


# -- load generators ----------------------------------------------------------------


class Harness:
    def __init__(self, cfg: Config, ctx: Context, wrk: Optional[str], client_python: str) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.wrk_path = wrk
        self.client_python = client_python
        self.notes: dict[tuple[str, str], list[str]] = {}
        #: The last wrk run's result.
        self.last_wrk: dict[str, Any] = {}

    def note(self, key: str, server: str, text: str) -> None:
        bucket = self.notes.setdefault((key, server), [])
        if text not in bucket:
            bucket.append(text)

    def wrk(self, port: int, conns: int, duration: int, close: bool = False, pinned: bool = True) -> dict:
        if not self.wrk_path:
            raise RuntimeError("wrk is not installed")
        argv = [self.wrk_path, "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "5s"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://127.0.0.1:{port}/hello")
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 60,
            preexec_fn=pinning(CLIENT_CPU if pinned else None),
        )  # fmt: skip
        out = proc.stdout
        match = re.search(r"Requests/sec:\s*([\d.]+)", out)
        if proc.returncode != 0 or not match:
            raise RuntimeError(f"wrk failed: {proc.stderr.strip() or out.strip()}")
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        errors = 0
        socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        read_errors = 0
        if socket_errors:
            errors += sum(int(x) for x in socket_errors.groups())
            read_errors = int(socket_errors.group(2))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if non2xx:
            errors += int(non2xx.group(1))
        return {"rps": float(match.group(1)), "requests": requests, "errors": errors, "read_errors": read_errors}

    def client(self, *args: str, timeout: float) -> dict:
        argv = [self.client_python, str(BENCH / "clients.py"), *args]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, preexec_fn=pinning(CLIENT_CPU),
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"client {args[0]} failed: {(proc.stderr or proc.stdout).strip()[-600:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # -- scenarios ------------------------------------------------------------------

    def _hello_run(self, key: str, server: Server, h: Running, conns: int, close: bool, pinned: bool = True) -> float:
        result = self.last_wrk = self.wrk(h.port, conns, self.cfg.duration, close=close, pinned=pinned)
        if close and result["errors"] and result["errors"] == result["read_errors"] <= result["requests"]:
            # The server closed after each complete response without saying
            # "Connection: close"; wrk counts each of those closes as a read
            # error (and the response as completed).
            self.note(key, server.name, "closes without a Connection: close header (wrk's read errors, not failures)")
        elif result["errors"]:
            share = result["errors"] / max(1, result["requests"] + result["errors"])
            if share > 0.001:
                self.note(key, server.name, f"wrk counted {result['errors']} errors ({share:.1%})")
        return result["rps"]

    def hello(self, server: Server, h: Running) -> dict[str, Any]:
        self.wrk(h.port, 50, self.cfg.warmup)
        return {
            "hello_ka1": self._hello_run("hello_ka1", server, h, 1, False),
            "hello_ka50": self._hello_run("hello_ka50", server, h, 50, False),
            "hello_close50": self._hello_run("hello_close50", server, h, 50, True),
        }

    def logged(self, server: Server, h: Running) -> dict[str, Any]:
        """
        hello, 50 keep-alive connections, with every server writing its
        access log to standard output (L{Context.logs}).
        """
        self.wrk(h.port, 50, self.cfg.warmup)
        return {"logged_ka50": self._hello_run("logged_ka50", server, h, 50, False)}

    def workers(self, server: Server, h: Running) -> dict[str, Any]:
        """
        hello, 50 keep-alive connections, to a server of several processes
        that float over the cores, and so does wrk (it shares them).  Also
        the CPU seconds each process of the server used per 10k requests:
        the first process (the supervisor/arbiter), then the others.
        """
        self.wrk(h.port, 50, self.cfg.warmup, pinned=False)
        before = cpu_seconds(h.pid)
        rps = self._hello_run("workers_ka50", server, h, 50, False, pinned=False)
        after = cpu_seconds(h.pid)
        per10k = 1e4 / max(1, self.last_wrk["requests"])
        used = {pid: (after[pid] - before.get(pid, 0.0)) * per10k for pid in after}
        cpu = {
            "requests": self.last_wrk["requests"],
            "supervisor": used.pop(h.pid, None),
            "workers": sorted(used.values(), reverse=True),
        }
        return {"workers_ka50": rps, "_workers": cpu}

    def stream(self, server: Server, h: Running) -> dict[str, Any]:
        cfg = self.cfg
        out = self.client(
            "stream", "--port", str(h.port), "--size", str(cfg.stream_size), "--count", str(cfg.stream_count),
            timeout=60 + cfg.stream_count * cfg.stream_size / 5e6,
        )  # fmt: skip
        if out.get("chunked"):
            self.note("stream_mbs", server.name, "sent chunked")
        return {"stream_mbs": out["mb_s"]}

    def upload(self, server: Server, h: Running) -> dict[str, Any]:
        cfg = self.cfg
        if server.name == "txawsgi" and "stream-input" not in self.ctx.txawsgi_flags:
            self.note(
                "upload_mbs", server.name,
                "no --stream-input in this CLI: the body is spooled (1 MiB in memory, then a temp file) "
                "before the app's on_get reads it",
            )  # fmt: skip
        out = self.client(
            "upload", "--port", str(h.port), "--size", str(cfg.upload_size), "--count", str(cfg.upload_count),
            timeout=60 + cfg.upload_count * cfg.upload_size / 5e6,
        )  # fmt: skip
        return {"upload_mbs": out["mb_s"], "upload_rss": hwm_kib(h.pid) / 1024}

    def longpoll(self, server: Server, h: Running) -> dict[str, Any]:
        cfg = self.cfg
        out = self.client(
            "longpoll", "--port", str(h.port), "--trigger-port", str(h.trigger_port), "--pid", str(h.pid),
            "-n", str(cfg.longpolls), "--open-deadline", str(cfg.open_deadline),
            "--publish-deadline", str(cfg.publish_deadline), "--stall", str(cfg.stall),
            timeout=cfg.open_deadline + cfg.publish_deadline + 120,
        )  # fmt: skip
        n = out["n"]
        if out["connected"] < n:
            self.note("lp_served", server.name, f"only {out['connected']:,} of {n:,} connections were accepted in time")
        if out["held_by_server"] is not None and out["held_by_server"] < out["connected"]:
            self.note("lp_served", server.name, f"the app held {out['held_by_server']:,} at once")
        if out["time_to_all_s"] is None:
            last = out["time_to_last_s"]
            why = f"no new answer for {cfg.stall:g} s" if out.get("stalled") else f"not all answered within {cfg.publish_deadline:g} s"
            self.note(
                "lp_time", server.name,
                why + (f" (the last of {out['served']:,} after {last:.2f} s)" if last is not None else ""),
            )  # fmt: skip
        if out["hello_ms"] is None:
            self.note("lp_hello", server.name, "hello timed out (2 s) while the long-polls were held")
        if server.name in ("gunicorn", "waitress"):
            # gunicorn's sync worker accepts one connection at a time,
            # waitress stops accepting at its connection_limit (100).
            self.note("lp_rss", server.name, "most connections wait in the kernel's backlog, not in the server")
        return {
            "lp_served": out["served"],
            "lp_time": out["time_to_all_s"],
            "lp_rss": out["rss_per_conn_kib"],
            "lp_hello": out["hello_ms"],
            "_longpoll": out,
        }

    def slow(self, server: Server, h: Running) -> dict[str, Any]:
        cfg = self.cfg
        peak = [rss_kib(h.pid)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                peak[0] = max(peak[0], rss_kib(h.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            out = self.client(
                "slow", "--port", str(h.port), "--size", str(cfg.slow_size), "--rate", str(cfg.slow_rate),
                timeout=120 + cfg.slow_size / cfg.slow_rate * 2,
            )  # fmt: skip
        finally:
            done.set()
            sampler.join()
        return {"slow_rss": max(peak[0], hwm_kib(h.pid)) / 1024, "_slow": out}


# -- the run --------------------------------------------------------------------------


def ensure_venv(venv: Path, log: Any) -> Optional[str]:
    """
    Create (or update) the bench virtualenv from bench/requirements.txt.
    """
    requirements = (BENCH / "requirements.txt").read_text()
    python = venv / "bin" / "python"
    stamp = venv / ".bench-requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == requirements:
        return str(python)
    log(f"setting up {venv} (anchor servers, matplotlib, py-spy) with pip ...")
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
             str(BENCH / "requirements.txt")],
            check=True,
        )  # fmt: skip
    except (subprocess.CalledProcessError, OSError) as e:
        log(f"could not set up {venv}: {e}")
        return None
    stamp.write_text(requirements)
    return str(python)


def ensure_wrk(log: Any) -> Optional[str]:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing wrk with apt-get ...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, capture_output=True)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, capture_output=True)
    return shutil.which("wrk")


def cpu_busy(interval: float = 1.0) -> float:
    """
    The share of all cores busy over C{interval} seconds (/proc/stat).
    Between server runs nothing of the benchmark is running, so this is
    what other processes on the machine use.
    """

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return idle, sum(fields[:8])

    idle0, total0 = sample()
    time.sleep(interval)
    idle1, total1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


class QuietGate:
    """
    Before each server run, wait (a bounded time) for the machine to be
    quiet: other processes using at most C{threshold} of the cores.
    """

    def __init__(self, threshold: float, per_run: float, budget: float) -> None:
        self.threshold, self.per_run, self.budget = threshold, per_run, budget
        self.waited = 0.0
        self.seen: list[float] = []

    def wait(self) -> float:
        start = time.monotonic()
        busy = cpu_busy(0.5)
        while busy > self.threshold and time.monotonic() - start < self.per_run and self.waited < self.budget:
            time.sleep(1.0)
            busy = cpu_busy(1.0)
            self.waited += 1.5
        self.seen.append(busy)
        return busy


def median_of(values: list[Any]) -> tuple[Optional[float], int]:
    """
    The median of the rounds that produced a number, and how many did not.
    """
    numbers = [v for v in values if v is not None]
    return (statistics.median(numbers) if numbers else None), len(values) - len(numbers)


def machine(ctx: Context, venv_python: Optional[str], wrk: Optional[str]) -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        info["cpu"] = f"{model.group(1).strip() if model else platform.machine()}, {os.cpu_count()} cores"
        mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
        info["memory"] = f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "?"
    except OSError:
        pass
    osrel = Path("/etc/os-release")
    distro = re.search(r'PRETTY_NAME="?([^"\n]+)', osrel.read_text()) if osrel.exists() else None
    info["os"] = f"{distro.group(1) if distro else platform.system()}, Linux {platform.release()}"
    info["python"] = f"CPython {platform.python_version()}"
    tx = subprocess.run(
        [ctx.tx_python, "-c", "import twisted; print(twisted.__version__)"], capture_output=True, text=True,
    )  # fmt: skip
    info["twisted"] = tx.stdout.strip()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "txawsgi"], capture_output=True, text=True)
    info["txawsgi"] = (rev.stdout.strip() or "?") + (" + uncommitted changes" if dirty.stdout.strip() else "")
    if venv_python:
        versions = subprocess.run(
            [venv_python, "-c",
             "import importlib.metadata as m\n"
             "for p in ('gunicorn','waitress','gevent','uvicorn','uvloop','httptools'):\n"
             "    print(p, m.version(p))"],
            capture_output=True, text=True,
        )  # fmt: skip
        info["anchors"] = ", ".join(line for line in versions.stdout.splitlines())
    if wrk:
        first = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        info["wrk"] = (first.stdout or first.stderr).splitlines()[0].split(" Copyright")[0] if (first.stdout or first.stderr) else "wrk"
    return info


def describe_cpu(cpu: dict[str, Any]) -> str:
    """
    The CPU seconds per 10k requests of a multi-process server's processes.
    """
    first = cpu["supervisor"]
    return "supervisor {}, workers {}".format(
        "?" if first is None else f"{first:.2f}", " + ".join(f"{w:.2f}" for w in cpu["workers"]) or "?"
    )


def note_workers(summary: list[dict[str, Any]], detail: dict[str, list[dict[str, Any]]]) -> None:
    """
    On each workers_ka50 row: its ratio to the same server in one process
    (hello_ka50 of this run), that wrk shared the cores, and the CPU split
    of its median round.
    """
    hello = {row["server"]: row["median"] for row in summary if row["metric"] == "hello_ka50"}
    for row in summary:
        if row["metric"] != "workers_ka50":
            continue
        server = BY_NAME[row["server"]]
        single = hello.get(server.single)
        if row["median"] is not None and single:
            row["notes"].append(
                f"{row['median'] / single:.2f}x {server.single} in one process (pinned to a core of its own); "
                f"here wrk shares the {cpus()} cores with the workers"
            )
        rounds = detail.get(server.name) or []
        if rounds:
            middle = sorted(rounds, key=lambda cpu: cpu["requests"])[len(rounds) // 2]
            row["notes"].append("CPU seconds per 10k requests: " + describe_cpu(middle))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="servers: " + ", ".join(s.name for s in SERVERS) + "\nscenarios: " + ", ".join(SCENARIOS),
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, help="rounds of stream/upload/workers (default 3)")
    parser.add_argument("--hello-rounds", type=int, help="rounds of hello/logged (default 5, or --rounds if given)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5)")
    parser.add_argument("--scenarios", help="comma-separated subset of: " + ",".join(SCENARIOS))
    parser.add_argument("--servers", help="comma-separated subset of the server names")
    parser.add_argument("--quick", action="store_true", help="1 round, short runs, 1,000 long-polls, small bodies")
    parser.add_argument("--longpolls", type=int, help="concurrent long-polls (default 10000)")
    parser.add_argument("--longpoll-rounds", type=int, help="rounds of the long-poll scenario (default 2)")
    parser.add_argument("--slow-rounds", type=int, help="rounds of the slow-reader scenario (default 1)")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", dest="docs", action="store_true", default=None,
                      help="rewrite docs/benchmarks.rst and .png (default: only for a full run)")
    docs.add_argument("--no-docs", dest="docs", action="store_false")
    parser.add_argument(
        "--access-log", action="store_true",
        help="every server logs every request in every scenario (default: only in 'logged')",
    )  # fmt: skip
    parser.add_argument("--venv", default=str(BENCH / ".venv"), help="where the anchor servers are installed")
    args = parser.parse_args(argv)

    cfg = Config.quick_config() if args.quick else Config()
    if args.rounds is not None:
        cfg.rounds = cfg.hello_rounds = max(1, args.rounds)
    if args.hello_rounds is not None:
        cfg.hello_rounds = max(1, args.hello_rounds)
    if args.duration is not None:
        cfg.duration = max(1, args.duration)
    if args.longpolls is not None:
        cfg.longpolls = max(1, args.longpolls)
    if args.longpoll_rounds is not None:
        cfg.longpoll_rounds = max(1, args.longpoll_rounds)
    if args.slow_rounds is not None:
        cfg.slow_rounds = max(1, args.slow_rounds)
    scenario_rounds = {
        "hello": cfg.hello_rounds, "logged": cfg.hello_rounds, "stream": cfg.rounds, "upload": cfg.rounds, "workers": cfg.rounds,
        "longpoll": min(cfg.rounds, cfg.longpoll_rounds), "slow": min(cfg.rounds, cfg.slow_rounds),
    }  # fmt: skip

    scenarios = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    names = args.servers.split(",") if args.servers else [s.name for s in SERVERS]
    unknown += [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown scenario or server: {', '.join(unknown)}")
    selected = [s for s in SERVERS if s.name in names]
    full_run = not args.quick and not args.scenarios and not args.servers
    write_docs = full_run if args.docs is None else args.docs

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        import twisted  # noqa: F401
    except ImportError:
        parser.error(f"{sys.executable} has no Twisted: run the harness with the interpreter txawsgi uses")

    # Keep the harness itself off the server's core.
    if cpus() >= 2:
        os.sched_setaffinity(0, {CLIENT_CPU})
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = BENCH / "results" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)

    needs_venv = write_docs or any(s.python == "venv" for s in selected) or bool(
        set(scenarios) & {"longpoll"}
    )
    venv_python = ensure_venv(Path(args.venv), log) if needs_venv else None
    if venv_python is None and Path(args.venv, "bin", "python").exists():
        venv_python = str(Path(args.venv, "bin", "python"))
    wrk = ensure_wrk(log) if set(scenarios) & {"hello", "logged", "workers"} else shutil.which("wrk")
    flags, help_text = txawsgi_flags(sys.executable)
    ctx = Context(
        tx_python=sys.executable, venv_python=venv_python, txawsgi_flags=flags, run_dir=run_dir,
        access_log=args.access_log,
    )  # fmt: skip
    harness = Harness(cfg, ctx, wrk, venv_python or sys.executable)

    skipped: dict[str, str] = {}
    for server in selected:
        missing = [f"--{f}" for f in server.needs_flags if f not in flags]
        if missing:
            skipped[server.name] = f"twistd awsgi has no {', '.join(missing)} yet"
        elif server.python == "venv" and not venv_python:
            skipped[server.name] = "the bench virtualenv could not be created"
    if not wrk:
        for s in ("hello", "logged", "workers"):
            if s in scenarios:
                log(f"skipping {s}: wrk is not installed and could not be installed")
                scenarios.remove(s)

    plan = []  # (round, scenario, server)
    for r in range(max(scenario_rounds.values())):
        for scenario in scenarios:
            if r >= scenario_rounds[scenario]:
                continue
            group = "workers" if scenario == "workers" else "base"
            for server in selected:
                if server.group == group and server.name not in skipped:
                    plan.append((r, scenario, server))

    log(f"txawsgi benchmarks: {len(plan)} server runs; results in {run_dir.relative_to(REPO)}")
    for name, why in skipped.items():
        log(f"  skipping {name}: {why}")
    if cpus() < 2:
        log("  one core only: no pinning")

    raw: dict[str, dict[str, list[Any]]] = {}
    extra: dict[str, dict[str, list[Any]]] = {}
    failures: list[str] = []
    failed: dict[tuple[str, str], list[str]] = {}
    stops: dict[str, set[str]] = {}
    loads: list[float] = []
    gate = QuietGate(threshold=0.15, per_run=0 if cfg.quick else 10, budget=0 if cfg.quick else 120)
    started = time.monotonic()
    for r, scenario, server in plan:
        tag = f"r{r + 1}-{scenario}-{server.name}"
        t0 = time.monotonic()
        busy = gate.wait()
        loads.append(os.getloadavg()[0])
        try:
            with Running(server, ctx, scenario, tag) as h:
                values = getattr(harness, scenario)(server, h)
            stops.setdefault(server.name, set()).add(h.stopped_by)
        except Exception as e:  # noqa: BLE001 - one failed run must not end the benchmark
            failures.append(f"{tag}: {e}")
            failed.setdefault((scenario, server.name), []).append(f"round {r + 1}")
            log(f"[{tag}] FAILED: {e}")
            continue
        shown = []
        for key, value in values.items():
            if key.startswith("_"):
                extra.setdefault(key, {}).setdefault(server.name, []).append(value)
                if key == "_workers":
                    shown.append("cpu-s/10k req: " + describe_cpu(value))
                continue
            raw.setdefault(key, {}).setdefault(server.name, []).append(value)
            shown.append(f"{key}={report.fmt(value)}")
        log(f"[{tag}] {' '.join(shown)}  ({time.monotonic() - t0:.0f}s, others busy {busy:.0%})")
    elapsed = time.monotonic() - started

    for name, how in stops.items():
        if "SIGKILL" in how:
            harness.note("_stop", name, "did not exit within 6 s of SIGTERM and was killed")

    # Medians and ratios.
    summary = []
    for metric in metrics(cfg):
        if metric.key not in raw:
            continue
        base_values = raw.get(metric.baseline_key or metric.key, {}).get(BASELINE)
        base = median_of(base_values)[0] if base_values else None
        for server in SERVERS:
            values = raw[metric.key].get(server.name)
            if values is None:
                continue
            med, missing = median_of(values)
            ratio = med / base if med is not None and base else None
            notes = list(harness.notes.get((metric.key, server.name), []))
            if missing and med is not None:
                notes.append(f"{missing} of {len(values)} rounds had no figure")
            summary.append({
                "metric": metric.key, "scenario": metric.scenario, "title": metric.title, "unit": metric.unit,
                "higher_is_better": metric.higher_is_better, "server": server.name, "median": med,
                "ratio": ratio, "values": values, "notes": notes,
            })  # fmt: skip
    note_workers(summary, extra.get("_workers", {}))
    for (scenario, name), rounds_failed in failed.items():
        for metric in metrics(cfg):
            if metric.scenario != scenario:
                continue
            note = f"the {' and '.join(rounds_failed)} run failed (see the failures)"
            row = next((r for r in summary if r["metric"] == metric.key and r["server"] == name), None)
            if row is None:
                summary.append({
                    "metric": metric.key, "scenario": metric.scenario, "title": metric.title,
                    "unit": metric.unit, "higher_is_better": metric.higher_is_better, "server": name,
                    "median": None, "ratio": None, "values": [], "notes": [note],
                })  # fmt: skip
            else:
                row["notes"].append(note)
    for server in selected:
        if server.name in skipped:
            for metric in metrics(cfg):
                if metric.scenario in scenarios and (server.group == "workers") == (metric.scenario == "workers"):
                    summary.append({
                        "metric": metric.key, "scenario": metric.scenario, "title": metric.title,
                        "unit": metric.unit, "higher_is_better": metric.higher_is_better, "server": server.name,
                        "median": None, "ratio": None, "values": [], "notes": [f"skipped: {skipped[server.name]}"],
                    })  # fmt: skip
    order = {m.key: i for i, m in enumerate(metrics(cfg))}
    server_order = {s.name: i for i, s in enumerate(SERVERS)}
    summary.sort(key=lambda row: (order[row["metric"]], server_order[row["server"]]))

    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(REPO)), *sys.argv[1:]])
    results = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "elapsed_s": elapsed,
        "config": asdict(cfg),
        "scenario_rounds": scenario_rounds,
        "machine": machine(ctx, venv_python, wrk),
        "pinned": cpus() >= 2,
        "access_log": ctx.access_log,
        "loadavg": {
            "min": min(loads, default=0.0), "median": statistics.median(loads) if loads else 0.0,
            "max": max(loads, default=0.0),
        },  # fmt: skip
        "others_busy": {
            "median": statistics.median(gate.seen) if gate.seen else 0.0, "max": max(gate.seen, default=0.0),
            "waited_s": gate.waited,
        },  # fmt: skip
        "servers": {s.name: s.label for s in SERVERS},
        "server_notes": {s.name: s.notes for s in SERVERS if s.notes},
        "skipped": skipped,
        "txawsgi_flags": sorted(flags),
        "failures": failures,
        "stop_notes": {k[1]: v for k, v in harness.notes.items() if k[0] == "_stop"},
        "summary": summary,
        "longpoll_detail": extra.get("_longpoll", {}),
        "slow_detail": extra.get("_slow", {}),
        "workers_detail": extra.get("_workers", {}),
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    shutil.copy(run_dir / "results.json", BENCH / "results" / "latest.json")

    print()
    print(report.table(results))
    print()
    log(f"{len(plan)} server runs in {elapsed / 60:.1f} min; raw results: {(run_dir / 'results.json').relative_to(REPO)}")
    if failures:
        log(f"{len(failures)} run(s) failed:")
        for failure in failures:
            log("  " + failure.splitlines()[0])

    if write_docs:
        chart = REPO / "docs" / "benchmarks.png"
        if venv_python:
            proc = subprocess.run(
                [venv_python, str(BENCH / "chart.py"), str(run_dir / "results.json"), str(chart)],
                capture_output=True, text=True,
            )  # fmt: skip
            if proc.returncode != 0:
                log(f"chart failed: {proc.stderr.strip()[-400:]}")
        report.write_rst(results, REPO / "docs" / "benchmarks.rst", chart.name if chart.exists() else None)
        log("wrote docs/benchmarks.rst and docs/benchmarks.png")

    leftovers = list(Running.live)
    if leftovers:
        log(f"servers still running: {[r.server.name for r in leftovers]}")
    return 1 if failures or leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
