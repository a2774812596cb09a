"""
A light load generator for the reliability tests and C{bench/soak.py}:
thousands of raw HTTP/1.1 connections from one Twisted process, cheaper than
L{tests.support.RawClient} (no per-connection test cleanup), plus what a
test needs to watch a server process (its RSS and open descriptors, from
C{/proc}).

Nothing here needs trial: C{bench/soak.py} drives the same functions from a
plain reactor.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from .support import ParseError, parse_response

__all__ = ["Conn", "connect", "fds", "get_json", "rss", "sleep"]


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def rss(pid: int) -> int:
    """
    The resident set size of process C{pid}, in bytes.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for {pid}")


def fds(pid: int) -> int:
    """
    How many descriptors process C{pid} has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


class Conn(Protocol):
    """
    One client connection: what it received, and Deferreds for "this much
    arrived" and "closed".
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.received = 0
        self.closed = False
        self.reason: Optional[Failure] = None
        self._waiters: List[Tuple[Callable[[], bool], Deferred[None]]] = []
        self._lost: List[Deferred[None]] = []
        self.keep = True

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.keep:
            self.buffer += data
        self._poll()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.closed = True
        self.reason = reason
        self._poll()
        lost, self._lost = self._lost, []
        for d in lost:
            d.callback(None)

    def _poll(self) -> None:
        waiting = []
        for check, d in self._waiters:
            if check() or self.closed:
                d.callback(None)
            else:
                waiting.append((check, d))
        self._waiters = waiting

    def until(self, check: Callable[[], bool]) -> Deferred[None]:
        """
        Fire once C{check()} is true or the connection closed.
        """
        if check() or self.closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append((check, d))
        return d

    def lost(self) -> Deferred[None]:
        if self.closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._lost.append(d)
        return d

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def abort(self) -> Deferred[None]:
        if not self.closed:
            self.transport.abortConnection()
        return self.lost()

    def close(self) -> Deferred[None]:
        if not self.closed:
            self.transport.loseConnection()
        return self.lost()

    def responses(self) -> List[Any]:
        """
        The complete responses received so far.
        """
        try:
            parsed = parse_response(bytes(self.buffer), eof=self.closed)
        except ParseError:
            return []
        return [r for r in parsed if not r.interim and r.complete]

    async def request(self, data: bytes, count: int = 1, timeout: float = 10) -> List[Any]:
        """
        Send C{data} (what was received before is forgotten); return once
        C{count} complete responses arrived (fewer if the connection closed
        first).
        """
        self.buffer = bytearray()
        self.send(data)
        waiting = self.until(lambda: len(self.responses()) >= count)
        waiting.addTimeout(timeout, reactor)
        await waiting
        return self.responses()

    async def download(self, target: bytes, size: int, timeout: float = 30) -> bool:
        """
        GET C{target}, a C{Content-Length: size} response, without keeping
        its body; return whether it all came.
        """
        self.buffer = bytearray()
        self.received = 0
        self.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        head = await self._head(timeout)
        if head is None:
            return False
        self.keep = False
        total = head + size
        waiting = self.until(lambda: self.received >= total)
        waiting.addTimeout(timeout, reactor)
        await waiting
        self.keep = True
        self.buffer = bytearray()
        return self.received == total

    async def _head(self, timeout: float) -> Optional[int]:
        waiting = self.until(lambda: b"\r\n\r\n" in self.buffer)
        waiting.addTimeout(timeout, reactor)
        await waiting
        end = self.buffer.find(b"\r\n\r\n")
        if end == -1 or not self.buffer.startswith(b"HTTP/1.1 200 "):
            return None
        return end + 4


async def connect(port: int, host: str = "127.0.0.1", rcvbuf: Optional[int] = None) -> Conn:
    conn = Conn()
    await connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=10), conn)
    if rcvbuf is not None:
        import socket

        conn.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return conn


async def get_json(port: int, path: str) -> Dict[str, Any]:
    """
    GET C{path} on a fresh connection and decode its JSON body.
    """
    conn = await connect(port)
    try:
        [response] = await conn.request(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
    finally:
        await conn.close()
    return json.loads(response.body)


# -- abort storm ------------------------------------------------------------------

#: The points at which a storm client gives up, and how.
ABORT_KINDS = ("head", "upload", "response", "poll", "complete")


async def abort_one(port: int, rng: random.Random, counts: Dict[str, int]) -> None:
    """
    One connection that ends at a random point: in the middle of its
    request head, of an upload, of a 4 MiB response, while its long-poll
    waits on a controller -- or after a complete exchange.  It aborts (RST)
    or closes (FIN) at random.
    """
    kind = rng.choice(ABORT_KINDS)
    counts[kind] = counts.get(kind, 0) + 1
    conn = await connect(port)
    conn.keep = kind in ("complete",)
    try:
        if kind == "head":
            head = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * rng.randint(0, 200) + b"\r\n\r\n"
            conn.send(head[: rng.randint(1, len(head) - 1)])
            await sleep(rng.random() * 0.01)
        elif kind == "upload":
            total = 1 << 20
            conn.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
            conn.send(b"u" * rng.randint(0, 256 * 1024))
            await sleep(rng.random() * 0.01)
        elif kind == "response":
            target = rng.choice((b"/big?4194304", b"/stream?4194304"))
            conn.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
            wanted = rng.randint(0, 2 << 20)
            waiting = conn.until(lambda: conn.received >= wanted)
            waiting.addTimeout(5, reactor)
            await waiting
        elif kind == "poll":
            conn.send(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
            await sleep(0.005 + rng.random() * 0.02)
        else:
            await conn.request(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        if rng.random() < 0.5:
            await conn.abort()
        else:
            await conn.close()


async def abort_storm(port: int, total: int, concurrency: int = 100, seed: int = 0) -> Dict[str, int]:
    """
    C{total} L{abort_one} connections, C{concurrency} at a time; return how
    many of each kind.
    """
    rng = random.Random(seed)
    counts: Dict[str, int] = {}
    started = [0]
    errors: List[Failure] = []

    async def worker() -> None:
        while started[0] < total:
            started[0] += 1
            try:
                await abort_one(port, rng, counts)
            except Exception:
                errors.append(Failure())

    from twisted.internet.defer import gatherResults

    await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
    if errors:
        counts["client_errors"] = len(errors)
        counts["first_error"] = errors[0].getErrorMessage()  # type: ignore[assignment]
    return counts


# -- soak ------------------------------------------------------------------------------


class Soak:
    """
    A mixed load for C{seconds}: keep-alive hellos, long-polls released
    every 100 ms, uploads, 1 MiB downloads and aborted requests, each on
    its own connections.  C{counts} says how many of each completed,
    C{failures} what went wrong (a wrong answer, a connection cut where it
    should not be).
    """

    def __init__(self, port: int, seconds: float, *, hellos: int = 8, polls: int = 4, uploads: int = 3,
                 downloads: int = 2, aborters: int = 2, seed: int = 0) -> None:
        self.port = port
        self.deadline = reactor.seconds() + seconds
        self.shape = {"hello": hellos, "poll": polls, "upload": uploads, "download": downloads, "abort": aborters}
        self.rng = random.Random(seed)
        self.counts: Dict[str, int] = dict.fromkeys(self.shape, 0)
        self.aborted: Dict[str, int] = {}
        self.failures: List[str] = []

    @property
    def running(self) -> bool:
        return reactor.seconds() < self.deadline

    def fail(self, what: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(what)

    async def _loop(self, kind: str) -> None:
        conn: Optional[Conn] = None
        while self.running:
            try:
                if kind != "abort" and (conn is None or conn.closed):
                    conn = await connect(self.port)
                assert conn is not None or kind == "abort"
                if kind == "hello":
                    [r] = await conn.request(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                    if (r.code, r.body) != (200, b"hello\n"):
                        self.fail(f"hello: {r.code} {r.body!r}")
                elif kind == "poll":
                    [r] = await conn.request(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
                    if (r.code, r.body) != (200, b"released\n"):
                        self.fail(f"poll: {r.code} {r.body!r}")
                elif kind == "upload":
                    size = self.rng.randint(1, 256 * 1024)
                    [r] = await conn.request(
                        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + b"u" * size
                    )
                    if (r.code, r.body) != (200, b"%d\n" % size):
                        self.fail(f"upload of {size}: {r.code} {r.body!r}")
                elif kind == "download":
                    if not await conn.download(b"/big?1048576", 1 << 20):
                        self.fail("download cut short")
                else:
                    await abort_one(self.port, self.rng, self.aborted)
                self.counts[kind] += 1
            except Exception as e:
                self.fail(f"{kind}: {e!r}")
                if conn is not None:
                    conn.transport.abortConnection()
                    conn = None
        if conn is not None and not conn.closed:
            await conn.close()

    async def _release(self) -> None:
        conn = await connect(self.port)
        while self.running:
            await conn.request(b"GET /release HTTP/1.1\r\nHost: x\r\n\r\n")
            await sleep(0.1)
        # Let the last polls go.
        for _ in range(3):
            await conn.request(b"GET /release HTTP/1.1\r\nHost: x\r\n\r\n")
            await sleep(0.1)
        await conn.close()

    async def run(self) -> None:
        from twisted.internet.defer import gatherResults

        loops = [Deferred.fromCoroutine(self._release())]
        for kind, count in self.shape.items():
            loops += [Deferred.fromCoroutine(self._loop(kind)) for _ in range(count)]
        await gatherResults(loops)
