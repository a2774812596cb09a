"""
The long soak: C{twistd -n awsgi} (serving C{tests.abuseapps:stress}) under
the mixed load of C{tests/test_soak.py} -- keep-alive hellos, long-polls
released every 100 ms, uploads, 1 MiB downloads and requests aborted at
random points -- for as long as you like, sampling the server's RSS and
open descriptors (after a garbage collection and a heap trim, through the
app's C{/gc}) so a leak shows as a slope.

Run from the repository root, with an interpreter that has Twisted::

    python bench/soak.py --minutes 30
    python bench/soak.py --minutes 240 --hellos 32 --csv soak.csv

It prints one line per sample and a verdict: it exits non-zero if any
exchange failed, an unhandled error was logged, an iterable was not closed,
or RSS after warm-up grew by more than C{--max-growth} MiB (default 8).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults  # noqa: E402

from tests._load import Soak, connect, fds, get_json, rss, sleep  # noqa: E402

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, log: Any, extra: List[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "awsgi", "--app", "tests.abuseapps:stress",
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024", *extra,
    ]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


async def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await connect(port)
            await conn.close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await sleep(0.2)


async def main(args: argparse.Namespace) -> int:
    port = free_port()
    log_path = os.path.abspath(args.log)
    with open(log_path, "wb") as log:
        server = start_server(port, log, args.server_args)
    try:
        await wait_listening(port)
        seconds = args.minutes * 60
        soak = Soak(
            port, seconds, hellos=args.hellos, polls=args.polls, uploads=args.uploads,
            downloads=args.downloads, aborters=args.aborters, seed=args.seed,
        )
        samples: List[Dict[str, Any]] = []
        start = time.monotonic()
        csv = open(args.csv, "w") if args.csv else None
        if csv:
            csv.write("seconds,rss_mib,fds,live_exchanges,exchanges\n")

        async def sample() -> None:
            while soak.running:
                await sleep(args.interval)
                census = await get_json(port, "/gc")
                row = {
                    "t": time.monotonic() - start,
                    "rss": rss(server.pid) / MiB,
                    "fds": fds(server.pid),
                    "live": census["Exchange"],
                    "done": sum(soak.counts.values()),
                }
                samples.append(row)
                line = (
                    f"{row['t']:8.0f}s  rss {row['rss']:7.1f} MiB  fds {row['fds']:5d}  "
                    f"live exchanges {row['live']:4d}  exchanges {row['done']:9d}  failures {len(soak.failures)}"
                )
                print(line, flush=True)
                if csv:
                    csv.write(f"{row['t']:.1f},{row['rss']:.2f},{row['fds']},{row['live']},{row['done']}\n")
                    csv.flush()

        await gatherResults([Deferred.fromCoroutine(soak.run()), Deferred.fromCoroutine(sample())])
        await sleep(1)
        stats = await get_json(port, "/stats")
        await get_json(port, "/gc")
        end_rss = rss(server.pid) / MiB
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    with open(log_path, "rb") as f:
        output = f.read()
    errors = output.count(b"Unhandled Error") + output.count(b"Traceback (most recent call last)")
    warm = [s["rss"] for s in samples if s["t"] >= args.warmup * 60] or [s["rss"] for s in samples]
    growth = (end_rss - min(warm)) if warm else 0.0
    print()
    print(f"exchanges: {sum(soak.counts.values())} {soak.counts}; aborted kinds {soak.aborted}")
    print(f"iterables: {stats['calls']} called, {stats['closed']} closed, {stats['close_twice']} closed twice")
    if warm:
        print(f"RSS after warm-up: {min(warm):.1f}-{max(warm):.1f} MiB, end {end_rss:.1f} MiB (growth {growth:+.1f} MiB)")
    print(f"fds: {samples[0]['fds'] if samples else '?'} -> {samples[-1]['fds'] if samples else '?'}")
    print(f"failures: {len(soak.failures)} {soak.failures[:5]}; unhandled errors in the server log: {errors}")
    ok = (
        not soak.failures
        and not errors
        and stats["calls"] == stats["closed"]
        and stats["close_twice"] == 0
        and growth < args.max_growth
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def parse(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="minutes before RSS is judged (default 1)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--hellos", type=int, default=8)
    parser.add_argument("--polls", type=int, default=4)
    parser.add_argument("--uploads", type=int, default=3)
    parser.add_argument("--downloads", type=int, default=2)
    parser.add_argument("--aborters", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-growth", type=float, default=8.0, help="MiB of RSS growth allowed after warm-up")
    parser.add_argument("--csv", default=None, help="also write the samples to this CSV file")
    parser.add_argument("--log", default="soak-server.log", help="the server's log (default soak-server.log)")
    parser.add_argument("server_args", nargs="*", help="extra twistd awsgi options, after --")
    return parser.parse_args(argv)


def run() -> None:
    args = parse(sys.argv[1:])
    code = [1]

    def done(result: int) -> None:
        code[0] = result

    def failed(failure: Any) -> None:
        failure.printTraceback()

    d = ensureDeferred(main(args))
    d.addCallbacks(done, failed)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    sys.exit(code[0])


if __name__ == "__main__":
    run()
