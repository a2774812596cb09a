"""
Load over time against C{twistd awsgi} in a child process (serving
L{tests.abuseapps.stress}):

 - a bounded soak (C{TXAWSGI_SOAK_SECONDS}, default 60) of keep-alive
   hellos, long-polls, uploads, downloads and aborted requests: every
   answer right, RSS and descriptors flat after warm-up, every iterable
   closed, no error in the log (C{bench/soak.py} runs the same load for as
   long as you like);
 - a graceful shutdown under load loses no response that was already
   accepted: every request the application saw is answered completely,
   uploads in progress finish, long-polls are told (C{on_shutdown}).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Dict, List, Set

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from ._load import Soak, connect, sleep
from .test_slow_clients import MiB, StressServer

_log = Logger()

SOAK_SECONDS = float(os.environ.get("TXAWSGI_SOAK_SECONDS", "60"))


class SoakTests(TestCase):
    timeout = SOAK_SECONDS + 120

    async def test_soak(self) -> None:
        server = await StressServer(self, "--header-timeout", "5").started()
        for _ in range(5):
            await server.hello()
        await server.census()
        base_fds = server.fds
        soak = Soak(server.port, SOAK_SECONDS, seed=3)
        samples: List[Dict[str, Any]] = []
        start = time.monotonic()

        async def sample() -> None:
            while soak.running:
                await sleep(2)
                census = await server.census()
                samples.append(
                    {"t": time.monotonic() - start, "rss": server.rss, "fds": census["fds"], "live": census["Exchange"]}
                )

        await gatherResults([Deferred.fromCoroutine(soak.run()), Deferred.fromCoroutine(sample())])
        self.assertEqual(soak.failures, [])
        stats = await server.settled()
        self.assertEqual(stats["calls"], stats["closed"])
        self.assertEqual(stats["close_twice"], 0)
        census = await server.census()
        end_rss = server.rss
        warm = [s for s in samples if s["t"] >= max(10.0, SOAK_SECONDS * 0.25)]
        self.assertTrue(warm, samples)
        rss_values = [s["rss"] for s in warm] + [end_rss]
        spread = max(rss_values) - min(rss_values)
        self.assertLess(spread, 6 * MiB, [round(v / MiB, 1) for v in rss_values])
        self.assertLessEqual(census["Exchange"], 1)
        self.assertEqual(census["Tracked"], 0)
        await server.fds_back(base_fds)
        self.assertEqual(server.errors(), [])
        total = sum(soak.counts.values())
        _log.info(
            "Reliability figures: soak {seconds:.0f}s: {total} exchanges {counts}, aborted kinds {aborted}; "
            "RSS after warm-up {low:.1f}-{high:.1f} MiB (spread {spread:.1f} MiB), end {end:.1f} MiB; "
            "fds {base} -> {after}; 0 failures",
            seconds=SOAK_SECONDS, total=total, counts=soak.counts, aborted=soak.aborted,
            low=min(rss_values) / MiB, high=max(rss_values) / MiB, spread=spread / MiB, end=end_rss / MiB,
            base=base_fds, after=server.fds,
        )


class GracefulUnderLoadTests(TestCase):
    timeout = 120

    async def test_noAcceptedResponseLost(self) -> None:
        calls = os.path.abspath("shutdown-calls.txt")
        open(calls, "w").close()
        server = await StressServer(self, "--graceful-timeout", "15", env={"TXAWSGI_TEST_CALLS": calls}).started()
        answered: Dict[str, bytes] = {}
        problems: List[str] = []
        sent: Set[str] = set()
        stop = [False]
        counter = [0]

        def next_id(kind: str) -> str:
            counter[0] += 1
            return f"{kind}-{counter[0]}"

        async def hellos() -> None:
            conn = None
            while not stop[0]:
                try:
                    if conn is None or conn.closed:
                        conn = await connect(server.port)
                    rid = next_id("hello")
                    sent.add(rid)
                    responses = await conn.request(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n\r\n" % rid.encode())
                    if responses:
                        answered[rid] = responses[0].body
                except ConnectError:
                    return
                except Exception as e:
                    problems.append(f"hello: {e!r}")
                    return

        async def one(path: bytes, body: bytes = b"", split: bool = False) -> None:
            rid = next_id(path.decode().strip("/").split("?")[0])
            conn = await connect(server.port)
            sent.add(rid)
            head = b"%s %s HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n" % (b"POST" if body else b"GET", path, rid.encode())
            if body:
                head += b"Content-Length: %d\r\n" % len(body)
            data = head + b"\r\n" + body
            if split:
                # Half the upload now, the rest once the shutdown started.
                conn.send(data[: len(data) // 2])
                await shutdown_started
                await sleep(0.2)
                conn.send(data[len(data) // 2 :])
                responses = await conn.request(b"", timeout=20)
            else:
                responses = await conn.request(data, timeout=20)
            if responses:
                answered[rid] = responses[0].body
            await conn.close()

        shutdown_started: Deferred[None] = Deferred()
        loops = [Deferred.fromCoroutine(hellos()) for _ in range(10)]
        singles = [Deferred.fromCoroutine(one(b"/slow?1.5")) for _ in range(10)]
        singles += [Deferred.fromCoroutine(one(b"/poll")) for _ in range(5)]
        singles += [Deferred.fromCoroutine(one(b"/upload", b"u" * 300000, split=True)) for _ in range(5)]
        await sleep(0.7)
        server.process.signal("TERM")
        shutdown_started.callback(None)
        await gatherResults(singles)
        stop[0] = True
        await gatherResults(loops)
        code = await server.process.wait_exit(timeout=30)
        self.assertEqual(code, -signal.SIGTERM, server.process.output[-2000:])
        self.assertIn(b"Server Shut Down.", server.process.output)
        with open(calls) as f:
            accepted = [line.strip() for line in f if line.strip()]
        lost = [rid for rid in accepted if rid not in answered]
        self.assertEqual(lost, [], f"accepted but not answered ({len(accepted)} accepted)")
        expected = {"hello": b"hello\n", "slow": b"slow done\n", "poll": b"bye\n", "upload": b"300000\n"}
        wrong = [(rid, answered[rid]) for rid in accepted if answered[rid] != expected[rid.split("-")[0]]]
        self.assertEqual(wrong, [])
        for kind in ("slow", "poll", "upload"):
            self.assertEqual(len([r for r in accepted if r.startswith(kind)]), 10 if kind == "slow" else 5, kind)
        self.assertEqual(problems, [])
        self.assertEqual(server.errors(), [])
        _log.info(
            "Reliability figures: graceful shutdown under load: {accepted} requests accepted, all answered "
            "({sent} sent; the rest refused at connect or closed idle); 10 slow, 5 long-polls, 5 uploads in "
            "progress all completed",
            accepted=len(accepted), sent=len(sent),
        )
