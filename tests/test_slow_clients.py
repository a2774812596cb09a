"""
Slow and vanishing clients against C{twistd awsgi} in a child process
(serving L{tests.abuseapps.stress}), measured from outside through
C{/proc/PID/status} and C{/proc/PID/fd}:

 - slowloris: C{TXAWSGI_SLOWLORIS} (default 2000) connections dribbling
   header lines are all answered C{408} and closed by the head timeout,
   the server's memory stays bounded, and other clients are served
   meanwhile;
 - a client that stops reading a 1 GiB response (from a generator, and
   through the controller): the server's RSS stays flat;
 - C{TXAWSGI_ABORTS} (default 10,000) requests cut at random points
   (during the head, mid-upload, mid-response, while a long-poll waits on
   its controller, or after a complete exchange): no unhandled error in
   the log, C{close()} called on every iterable, no per-request object
   left, and descriptors and RSS back to their baseline.

The figures are logged ("Reliability figures: ...") for
C{docs/reliability.rst}.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase

from . import _load
from ._load import Conn, connect, fds, get_json, rss, sleep
from ._production import twistd_awsgi
from .support import eventually, free_port

_log = Logger()

SLOWLORIS = int(os.environ.get("TXAWSGI_SLOWLORIS", "2000"))
ABORTS = int(os.environ.get("TXAWSGI_ABORTS", "10000"))
MiB = 1 << 20


class StressServer:
    """
    C{twistd -n awsgi --app tests.abuseapps:stress} on a free port.
    """

    def __init__(self, testcase: TestCase, *args: str, env: Optional[Dict[str, str]] = None) -> None:
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs /proc to measure the server process")
        self.port = free_port()
        self.process = twistd_awsgi(
            testcase,
            "--app", "tests.abuseapps:stress",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
            *args,
            env=env,
        )

    async def started(self) -> "StressServer":
        await self.process.wait_for_output(b"txawsgi serving", timeout=30)
        assert self.process.pid is not None
        self.pid = self.process.pid
        return self

    @property
    def rss(self) -> int:
        return rss(self.pid)

    @property
    def fds(self) -> int:
        return fds(self.pid)

    def stats(self) -> Deferred[Dict[str, Any]]:
        return Deferred.fromCoroutine(get_json(self.port, "/stats"))

    def census(self) -> Deferred[Dict[str, Any]]:
        return Deferred.fromCoroutine(get_json(self.port, "/gc"))

    async def settled(self, timeout: float = 10) -> Dict[str, Any]:
        """
        The /stats once every iterable that reached the application has
        been closed and no long-poll waits (or the last seen, at timeout).
        """
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats()
            if (stats["calls"] == stats["closed"] and stats["waiting"] == 0) or time.monotonic() > deadline:
                return stats
            await sleep(0.1)

    def describe_fds(self) -> str:
        """
        What the server's descriptors are, and its sockets' states.
        """
        import subprocess

        links = sorted(os.readlink(f"/proc/{self.pid}/fd/{n}") for n in os.listdir(f"/proc/{self.pid}/fd"))
        try:
            states = subprocess.run(["ss", "-tanp"], capture_output=True, timeout=10).stdout.decode()
        except (OSError, subprocess.SubprocessError):
            states = ""
        mine = [line for line in states.splitlines() if f"pid={self.pid}," in line]
        return f"{links}\n" + "\n".join(mine)

    async def fds_back(self, base: int, timeout: float = 10) -> None:
        """
        Wait until the server has no more descriptors open than C{base}.
        """
        try:
            await eventually(lambda: self.fds <= base, timeout=timeout)
        except Exception:
            raise AssertionError(f"{self.fds} descriptors open, {base} before: {self.describe_fds()}") from None

    def errors(self) -> List[str]:
        output = self.process.output.decode(errors="replace")
        return [line for line in output.splitlines() if "Unhandled Error" in line or "Traceback" in line]

    async def hello(self) -> float:
        """
        One request on a new connection; return how long it took.
        """
        start = time.monotonic()
        conn = await connect(self.port)
        [response] = await conn.request(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (response.code, response.body) == (200, b"hello\n"), response
        await conn.close()
        return time.monotonic() - start


class SlowlorisTests(TestCase):
    timeout = 180

    async def test_slowloris(self) -> None:
        header_timeout = 3.0
        server = await StressServer(self, "--header-timeout", str(header_timeout)).started()
        for _ in range(20):
            await server.hello()
        base_rss, base_fds = server.rss, server.fds
        conns: List[Conn] = []
        started: Dict[int, float] = {}
        closed_at: Dict[int, float] = {}

        def dribble() -> None:
            for conn in conns:
                conn.send(b"X-Dribble: %d\r\n" % int(time.monotonic() * 1000))

        peak = [base_rss]

        def sample() -> None:
            peak[0] = max(peak[0], server.rss)

        sampler = LoopingCall(sample)
        sampler.start(0.2)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        latencies: List[float] = []
        attack = [True]

        async def good_client() -> None:
            while attack[0]:
                latencies.append(await server.hello())
                await sleep(0.05)

        good = Deferred.fromCoroutine(good_client())
        connect_start = time.monotonic()
        for batch in range(0, SLOWLORIS, 250):
            opened = await gatherResults(
                [Deferred.fromCoroutine(connect(server.port)) for _ in range(min(250, SLOWLORIS - batch))]
            )
            for conn in opened:
                started[id(conn)] = time.monotonic()
                conn.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
                conn.lost().addCallback(lambda _, c=conn: closed_at.__setitem__(id(c), time.monotonic()))
            conns.extend(opened)
        connect_seconds = time.monotonic() - connect_start
        dribbler = LoopingCall(dribble)
        dribbler.start(0.5)
        self.addCleanup(lambda: dribbler.running and dribbler.stop())
        held_fds = server.fds
        waiting = gatherResults([c.lost() for c in conns])
        waiting.addTimeout(header_timeout + connect_seconds + 15, reactor)
        await waiting
        dribbler.stop()
        attack[0] = False
        await good
        sampler.stop()
        self.addCleanup(lambda: None)

        answered = [bytes(c.buffer[:30]) for c in conns]
        self.assertEqual(
            [a for a in answered if not a.startswith(b"HTTP/1.1 408 Request Timeout")], [], "not all answered 408"
        )
        slowest = max(closed_at[id(c)] - started[id(c)] for c in conns)
        self.assertLess(slowest, header_timeout + 2.5)
        self.assertGreater(len(latencies), 20)
        self.assertLess(max(latencies), 1.0)
        growth = peak[0] - base_rss
        self.assertLess(growth, SLOWLORIS * 48 * 1024, f"{growth / MiB:.1f} MiB for {SLOWLORIS} connections")
        await server.fds_back(base_fds)
        self.assertGreaterEqual(held_fds, base_fds + SLOWLORIS * 0.95)
        self.assertEqual(server.errors(), [])
        _log.info(
            "Reliability figures: slowloris {n} connections: all answered 408 and closed within {slowest:.2f}s "
            "(head timeout {timeout}s); peak RSS +{growth:.1f} MiB ({per:.1f} KiB/connection); "
            "{served} other requests served meanwhile, slowest {latency:.3f}s; fds {base} -> {held} -> {after}",
            n=SLOWLORIS, slowest=slowest, timeout=header_timeout, growth=growth / MiB,
            per=growth / 1024 / max(SLOWLORIS, 1), served=len(latencies), latency=max(latencies),
            base=base_fds, held=held_fds, after=server.fds,
        )


class NonReaderTests(TestCase):
    timeout = 120

    async def stalled(self, server: StressServer, target: bytes) -> Dict[str, float]:
        """
        Request 1 GiB from C{target}, read some of it, stop reading; watch
        the server's RSS; read some more, stop again; then leave.
        """
        conn = await connect(server.port)
        conn.keep = False
        base = server.rss
        conn.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        await conn.until(lambda: conn.received > 4 * MiB)
        peak = 0
        for round in range(2):
            conn.transport.pauseProducing()
            stopped_at = conn.received
            for _ in range(15):
                await sleep(0.2)
                peak = max(peak, server.rss)
            conn.transport.resumeProducing()
            waiting = conn.until(lambda: conn.received > stopped_at + 64 * MiB)
            waiting.addTimeout(30, reactor)
            await waiting
        received = conn.received
        await conn.abort()
        return {"base": base, "peak": peak, "received": received}

    async def test_stopsReading(self) -> None:
        server = await StressServer(self).started()
        for _ in range(5):
            await server.hello()
        figures = {}
        for target in (b"/big?1073741824", b"/stream?1073741824"):
            result = await self.stalled(server, target)
            growth = result["peak"] - result["base"]
            self.assertLess(growth, 16 * MiB, f"{target!r}: RSS grew {growth / MiB:.1f} MiB while the client stalled")
            figures[target.decode()] = (growth / MiB, result["received"] / MiB)
        final = await server.settled()
        self.assertEqual(final["calls"], final["closed"])
        self.assertEqual(final["close_twice"], 0)
        self.assertEqual(server.errors(), [])
        _log.info(
            "Reliability figures: 1 GiB response to a client that stops reading: {figures} "
            "(RSS growth MiB, MiB read before leaving)",
            figures={k: f"+{g:.1f} MiB RSS, {r:.0f} MiB read" for k, (g, r) in figures.items()},
        )


class AbortStormTests(TestCase):
    timeout = 240

    async def test_abortStorm(self) -> None:
        server = await StressServer(self, "--stream-input", "--header-timeout", "5").started()
        # Warm up with the same mix and concurrency, so the allocator's pools
        # have reached their working size; measure after collecting garbage
        # and trimming the heap (/gc).
        await _load.abort_storm(server.port, 2000, concurrency=100, seed=1)
        await server.settled()
        await server.census()
        base_rss, base_fds = server.rss, server.fds
        before = await server.stats()
        start = time.monotonic()
        counts = await _load.abort_storm(server.port, ABORTS, concurrency=100, seed=2)
        seconds = time.monotonic() - start
        self.assertNotIn("client_errors", counts, counts)

        stats = await server.settled()
        self.assertEqual(stats["calls"], stats["closed"], "some iterables were never closed")
        self.assertEqual(stats["waiting"], 0)
        self.assertEqual(stats["close_twice"], 0)
        self.assertGreater(stats["calls"] - before["calls"], ABORTS // 2)
        census = await server.census()
        after_rss = server.rss
        # The /gc request itself is the one exchange alive.
        for name in ("Exchange", "Engine", "Controller", "Response", "StreamingBody", "ServerRequest"):
            self.assertLessEqual(census[name], 1, census)
        self.assertEqual(census["Tracked"], 0, census)
        await server.fds_back(base_fds)
        # (Storm after storm, RSS wanders within about 4 MiB of a plateau.)
        self.assertLess(after_rss - base_rss, 8 * MiB, f"RSS {base_rss / MiB:.1f} -> {after_rss / MiB:.1f} MiB")
        self.assertEqual(server.errors(), [])
        _log.info(
            "Reliability figures: {n} aborted requests in {s:.1f}s {counts}: {calls} application calls, all "
            "closed once; live per-request objects after: {census}; fds {bf} -> {af}; RSS {br:.1f} -> {ar:.1f} MiB",
            n=ABORTS, s=seconds, counts=counts, calls=stats["calls"] - before["calls"], census=census,
            bf=base_fds, af=server.fds, br=base_rss / MiB, ar=after_rss / MiB,
        )
