#!/usr/bin/env python3
"""
Profile a server under load with py-spy (from bench/.venv) and summarise
where the time goes: self and inclusive time per function, and the share
spent in txawsgi's own code.

    python bench/profile.py [--servers txawsgi,twisted] [--paths hello,stream] [--seconds 20]

For each server and path, the server runs exactly as in bench/run.py
(twistd -n, pinned to core 0) while py-spy samples it and the load
generator (wrk -c50 for hello; back-to-back 64 MiB downloads for stream)
runs on core 1.  Writes, under bench/results/profiles/STAMP/:
SERVER-PATH.txt (the py-spy collapsed stacks), SERVER-PATH.speedscope.json
(open it at speedscope.app) and summary.txt (printed too).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import ensure_venv, ensure_wrk  # noqa: E402
from clients import process_tree  # noqa: E402
from servers import BY_NAME, CLIENT_CPU, REPO, Context, Running, pinning, txawsgi_flags  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_collapsed(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = []
        for raw in stack.split(";"):
            m = FRAME.match(raw)
            frames.append((m.group("func"), m.group("file")) if m else (raw, ""))
        stacks.append((frames, int(count)))
    return stacks


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _area(func: str, file: str) -> str:
    f = _short(file)
    if func == "untilConcludes":
        return "socket syscalls (untilConcludes)"
    if f.startswith("txawsgi/"):
        return "txawsgi"
    if f.startswith("twisted/web/"):
        return "twisted.web"
    if f.startswith("twisted/logger/") or f.startswith("twisted/python/log"):
        return "twisted logging"
    if f.startswith("twisted/internet/"):
        return "twisted.internet"
    if f.startswith("twisted/"):
        return "twisted (other)"
    if f.startswith("bench") or "/apps/" in file:
        return "benchmark app"
    if f.startswith("zope/"):
        return "zope.interface"
    return "stdlib / other"


def summarise(name: str, stacks: list[tuple[list[tuple[str, str]], int]], per_unit: float, unit: str, top: int = 18) -> str:
    # py-spy leaves out idle samples (a reactor waiting in epoll), so these
    # are the samples of a thread on the CPU.
    total = sum(c for _, c in stacks) or 1
    self_time: Counter = Counter()
    incl: Counter = Counter()
    areas: Counter = Counter()
    tx_incl: Counter = Counter()
    for frames, count in stacks:
        func, file = frames[-1]
        self_time[(func, _short(file))] += count
        areas[_area(func, file)] += count
        seen = set()
        for func, file in frames:
            key = (func, _short(file))
            if key not in seen:
                seen.add(key)
                incl[key] += count
                if _short(file).startswith("txawsgi/"):
                    tx_incl[key] += count
    def us(count: int) -> str:
        return f"{per_unit * count / total:8.1f} us/{unit}"

    lines = [f"== {name} ({total} samples)"]
    lines.append("  time by area (self time):")
    for area, count in areas.most_common():
        lines.append(f"    {100 * count / total:5.1f}%  {us(count)}  {area}")
    lines.append("  top self time:")
    for (func, file), count in self_time.most_common(top):
        lines.append(f"    {100 * count / total:5.1f}%  {func}  ({file})")
    lines.append("  top inclusive time:")
    for (func, file), count in incl.most_common(top + 10):
        if func in ("<module>", "run", "runReactorWithLogging", "mainLoop", "startReactor", "runApp", "doIteration"):
            continue
        lines.append(f"    {100 * count / total:5.1f}%  {func}  ({file})")
    if tx_incl:
        tx_self = sum(c for (func, file), c in self_time.items() if file.startswith("txawsgi/"))
        lines.append(f"  txawsgi's own code, self time: {100 * tx_self / total:.1f}%; inclusive, by function:")
        for (func, file), count in tx_incl.most_common(top):
            lines.append(
                f"    {100 * count / total:5.1f}% incl {us(count)}  {100 * self_time[(func, file)] / total:5.1f}% self  "
                f"{func}  ({file})"
            )
    return "\n".join(lines)


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a process tree so far.
    """
    total = 0
    for p in process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def drive(path: str, port: int, seconds: float, wrk: str, client_python: str, stream_count: int) -> tuple[float, str]:
    """
    Load the server; return how many units were served (requests, or MB).
    """
    if path == "hello":
        out = subprocess.run(
            [wrk, "-t1", "-c50", f"-d{int(seconds)}s", f"http://127.0.0.1:{port}/hello"],
            capture_output=True, text=True, preexec_fn=pinning(CLIENT_CPU), check=True,
        ).stdout  # fmt: skip
        return float(re.search(r"(\d+) requests in", out).group(1)), "request"
    size = 64 * 1024 * 1024
    subprocess.run(
        [client_python, str(BENCH / "clients.py"), "stream", "--port", str(port), "--size", str(size),
         "--count", str(stream_count)],
        capture_output=True, preexec_fn=pinning(CLIENT_CPU), check=True,
    )  # fmt: skip
    return stream_count * size / 1e6, "MB"


def gc_counters(port: int) -> dict:
    """
    The server's garbage-collector counters (GET /gc of the bench apps).
    """
    import json

    from clients import Conn

    conn = Conn(port, timeout=10)
    try:
        conn.send(f"GET /gc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        _, headers = conn.read_head()
        _, body = conn.read_body(headers)
    finally:
        conn.close()
    return json.loads(body)


def gc_per_unit(before: dict, after: dict, units: float, unit: str) -> str:
    parts = []
    for gen in range(3):
        a, b = before["stats"][gen], after["stats"][gen]
        runs = b["collections"] - a["collections"]
        freed = b["collected"] - a["collected"]
        parts.append(f"gen{gen}: {runs} collections, {freed / units:.1f} objects freed per {unit}")
    return "  cyclic garbage (gc.get_stats over the run): " + "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="txawsgi,twisted")
    parser.add_argument("--paths", default="hello,stream")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of a hello run")
    parser.add_argument("--stream-count", type=int, default=40, help="64 MiB responses per stream run")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()

    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})
    venv_python = ensure_venv(BENCH / ".venv", print)
    if venv_python is None:
        print("py-spy needs bench/.venv")
        return 1
    py_spy = str(Path(venv_python).parent / "py-spy")
    wrk = ensure_wrk(print)
    out_dir = BENCH / "results" / "profiles" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    flags, _ = txawsgi_flags(sys.executable)
    ctx = Context(tx_python=sys.executable, venv_python=venv_python, txawsgi_flags=flags, run_dir=out_dir)
    report = []
    for path in args.paths.split(","):
        for name in args.servers.split(","):
            server = BY_NAME[name]
            tag = f"{name}-{path}"
            collapsed = out_dir / f"{tag}.txt"
            with Running(server, ctx, "profile", tag) as h:
                drive(path, h.port, 2, wrk, venv_python, 2)  # warm up
                spy = subprocess.Popen(
                    [py_spy, "record", "--pid", str(h.pid), "--rate", str(args.rate), "--function",
                     "--format", "raw", "-o", str(collapsed)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1.0)
                gc0 = gc_counters(h.port)
                cpu0 = cpu_seconds(h.pid)
                units, unit = drive(path, h.port, args.seconds, wrk, venv_python, args.stream_count)
                cpu = cpu_seconds(h.pid) - cpu0
                gc1 = gc_counters(h.port)
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            stacks = parse_collapsed(collapsed)
            _speedscope(stacks, out_dir / f"{tag}.speedscope.json", tag)
            per_unit = cpu / units * 1e6
            text = summarise(f"{tag}: {units:,.0f} {unit}s, {cpu:.1f} s CPU, {per_unit:,.1f} us CPU per {unit}",
                             stacks, per_unit, unit)
            text += "\n" + gc_per_unit(gc0, gc1, units, unit)
            print(text, flush=True)
            report.append(text)
    (out_dir / "summary.txt").write_text("\n\n".join(report) + "\n")
    print(f"\nwrote {out_dir.relative_to(REPO)}/")
    return 0


def _speedscope(stacks: list[tuple[list[tuple[str, str]], int]], target: Path, name: str) -> None:
    """
    A speedscope 'sampled' profile from collapsed stacks.
    """
    import json

    frames: dict[tuple[str, str], int] = {}
    samples, weights = [], []
    for stack, count in stacks:
        samples.append([frames.setdefault(f, len(frames)) for f in stack])
        weights.append(count)
    doc = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": [{"name": func, "file": _short(file)} for (func, file) in frames]},
        "profiles": [{
            "type": "sampled", "name": name, "unit": "none", "startValue": 0,
            "endValue": sum(weights), "samples": samples, "weights": weights,
        }],  # fmt: skip
    }
    target.write_text(json.dumps(doc))


if __name__ == "__main__":
    sys.exit(main())
