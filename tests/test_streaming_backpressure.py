"""
Backpressure on streamed request bodies: an application that does not read
holds the client back through TCP, the connection's own write-side pausing
does not undo that, and a large upload read slowly keeps the server's
memory flat.

The clients here are blocking sockets in worker threads (generating their
bodies as they go), so that what the kernel accepted from the client can be
counted: when the server stops reading, the client's C{send} stops
returning.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import threading
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from txawsgi.input import HIGH_WATER

from ._streaming import Reporter, Upload, awsgi_site, start_pool
from .support import PROJECT_ROOT, ProcessHandle, eventually, listen, parse_response, project_env, sleep

MiB = 1024 * 1024

#: What the client tries to push while the app does not read.
PUSH = 50 * MiB

#: Far less than L{PUSH}: what may sit in socket buffers and the server's
#: read-ahead while the app does not read.
STALL_LIMIT = 8 * MiB


def _block(i: int) -> bytes:
    """
    The C{i}th 64 KiB piece of a generated body (distinct pieces, so lost
    or reordered ones change the hash).
    """
    seed = hashlib.sha256(b"%d" % (i % 64)).digest() * 2048
    return i.to_bytes(8, "big") + seed[8:]


class PushClient:
    """
    A blocking client socket driven from worker threads.

    @ivar sent: body bytes the kernel accepted so far.
    @ivar received: everything received so far.
    """

    def __init__(self, testcase: TestCase, port: int, *, sndbuf: int = 8192, rcvbuf: Optional[int] = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.sent = 0
        self.received = bytearray()
        self.read_gate = threading.Event()
        self.read_gate.set()
        self._threads: List[Deferred[Any]] = []
        testcase.addCleanup(self._cleanup)

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d = deferToThread(f, *args)
        self._threads.append(d)
        return d

    def push(self, head: bytes, size: int, chunked: bool = False) -> Deferred[str]:
        """
        Send C{head} then a generated body of C{size} bytes (chunked, or
        after a C{Content-Length} in C{head}); fire with its SHA-256.
        """
        return self._in_thread(self._push, head, size, chunked)

    def _push(self, head: bytes, size: int, chunked: bool) -> str:
        sock = self.sock
        sock.sendall(head)
        hasher = hashlib.sha256()
        i = 0
        left = size
        while left:
            piece = _block(i)[:left]
            i += 1
            left -= len(piece)
            hasher.update(piece)
            view = memoryview(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
            while view:
                n = sock.send(view[:16384])
                view = view[n:]
                self.sent += n
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return hasher.hexdigest()

    def read_to_end(self, slow: float = 0) -> Deferred[bytes]:
        """
        Read until the server closes, pausing while C{read_gate} is clear
        and C{slow} seconds between reads; fire with everything received.
        """
        return self._in_thread(self._read, slow)

    def _read(self, slow: float) -> bytes:
        import time

        while True:
            self.read_gate.wait(60)
            data = self.sock.recv(16384)
            if not data:
                return bytes(self.received)
            self.received += data
            if slow:
                time.sleep(slow)

    @inlineCallbacks
    def wait_stalled(self, settle: float = 0.4, timeout: float = 20) -> Any:
        """
        Fire with L{sent} once it stopped growing for C{settle} seconds.
        """
        deadline = reactor.seconds() + timeout
        before = -1
        while self.sent != before:
            if reactor.seconds() > deadline:
                raise AssertionError(f"the client never stalled: {self.sent} bytes sent")
            before = self.sent
            yield sleep(settle)
        return self.sent

    @inlineCallbacks
    def _cleanup(self) -> Any:
        self.read_gate.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for d in self._threads:
            try:
                yield d
            except Exception:
                pass


def _body_of(received: bytes) -> bytes:
    [response] = parse_response(bytes(received))
    return response.body


class HeldBackTests(TestCase):
    """
    While the application does not read the body, the client cannot push
    more than socket buffers and the high-water mark hold; once it reads,
    everything arrives.
    """

    @inlineCallbacks
    def test_reactor_app(self) -> Any:
        """
        An C{on_get} app that waits before its first C{on_get}.
        """
        gate: Deferred[None] = Deferred()
        app = Upload(gate=gate)
        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = PushClient(self, server.port)
        head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % PUSH
        pushed = client.push(head, PUSH)
        stalled = yield client.wait_stalled()
        self.assertLess(stalled, STALL_LIMIT)
        self.assertEqual(app.received, 0)
        gate.callback(None)
        expected = yield pushed
        received = yield client.read_to_end()
        self.assertEqual(_body_of(received), b"%d %s" % (PUSH, expected.encode()))

    @inlineCallbacks
    def test_reactor_app_chunked(self) -> Any:
        """
        The same for a chunked body.
        """
        gate: Deferred[None] = Deferred()
        app = Upload(gate=gate)
        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = PushClient(self, server.port)
        head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        pushed = client.push(head, PUSH, chunked=True)
        stalled = yield client.wait_stalled()
        self.assertLess(stalled, STALL_LIMIT)
        gate.callback(None)
        expected = yield pushed
        received = yield client.read_to_end()
        self.assertEqual(_body_of(received), b"%d %s" % (PUSH, expected.encode()))

    @inlineCallbacks
    def test_paused_reader_resumes(self) -> Any:
        """
        An app that reads a little, stops for a while, then reads the rest:
        the client stalls again while it stops.
        """
        gate: Deferred[None] = Deferred()
        chunks: List[int] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            hasher = hashlib.sha256()

            def got(data: bytes) -> None:
                if not data:
                    start_response("200 OK", [])
                    ctrl.put(b"%d %s" % (sum(chunks), hasher.hexdigest().encode()))
                    ctrl.finish()
                    return
                hasher.update(data)
                chunks.append(len(data))
                if sum(chunks) >= 4 * MiB and not gate.called:
                    gate.addCallback(lambda _: ctrl.on_get(HIGH_WATER, got))
                else:
                    ctrl.on_get(HIGH_WATER, got)

            ctrl.on_get(HIGH_WATER, got)
            return ctrl

        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = PushClient(self, server.port)
        head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % PUSH
        pushed = client.push(head, PUSH)
        stalled = yield client.wait_stalled()
        self.assertGreaterEqual(sum(chunks), 4 * MiB)
        self.assertLess(stalled, 4 * MiB + STALL_LIMIT)
        gate.callback(None)
        expected = yield pushed
        received = yield client.read_to_end()
        self.assertEqual(_body_of(received), b"%d %s" % (PUSH, expected.encode()))

    @inlineCallbacks
    def test_threadpool_app(self) -> Any:
        """
        A threadpool app whose worker does something else before reading
        C{wsgi.input}.
        """
        pool = start_pool(self)
        go = threading.Event()
        report = Reporter()
        self.addCleanup(go.set)

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            report("called")
            go.wait(30)
            hasher = hashlib.sha256()
            size = 0
            while True:
                data = environ["wsgi.input"].read(1024 * 1024)
                if not data:
                    break
                size += len(data)
                hasher.update(data)
            start_response("200 OK", [])
            return [b"%d %s" % (size, hasher.hexdigest().encode())]

        server = yield listen(self, awsgi_site(app, pool))
        client = PushClient(self, server.port)
        head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % PUSH
        pushed = client.push(head, PUSH)
        stalled = yield client.wait_stalled()
        self.assertEqual(report.events, ["called"])
        self.assertLess(stalled, STALL_LIMIT)
        go.set()
        expected = yield pushed
        received = yield client.read_to_end()
        self.assertEqual(_body_of(received), b"%d %s" % (PUSH, expected.encode()))

    @inlineCallbacks
    def test_write_side_pausing_does_not_release_body(self) -> Any:
        """
        While the app sends a large response to a slowly reading client
        (so the connection keeps pausing and resuming for its writes) and
        does not read the body, the client is still held back: the write
        side resuming does not resume reading a body nobody reads.
        """
        gate: Deferred[None] = Deferred()
        filler = b"f" * (8 * MiB)

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            start_response("200 OK", [])
            hasher = hashlib.sha256()
            left = [len(filler)]
            size = [0]

            def fill() -> None:
                while left[0]:
                    piece = filler[: min(left[0], 256 * 1024)]
                    left[0] -= len(piece)
                    if not ctrl.put(piece):
                        ctrl.on_drain(fill)
                        return
                gate.addCallback(lambda _: ctrl.on_get(HIGH_WATER, got))

            def got(data: bytes) -> None:
                if data:
                    hasher.update(data)
                    size[0] += len(data)
                    ctrl.on_get(HIGH_WATER, got)
                    return
                ctrl.put(b"|%d %s" % (size[0], hasher.hexdigest().encode()))
                ctrl.finish()

            # Let the unread body reach the high-water mark first, so the
            # write side's pausing and resuming happens while the body
            # holds reading paused.
            reactor.callLater(0.3, fill)
            return ctrl

        server = yield listen(self, awsgi_site(app, stream_input=True), sndbuf=16384)
        client = PushClient(self, server.port, rcvbuf=16384)
        head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % PUSH
        reading = client.read_to_end(slow=0.0005)
        pushed = client.push(head, PUSH)
        yield eventually(lambda: len(client.received) > len(filler), timeout=30)
        stalled = yield client.wait_stalled()
        self.assertLess(stalled, STALL_LIMIT)
        gate.callback(None)
        expected = yield pushed
        received = yield reading
        self.assertTrue(_body_of(received).endswith(b"|%d %s" % (PUSH, expected.encode())))


class MemoryTests(TestCase):
    """
    A large chunked upload, read slowly by a server in its own process,
    keeps that process's memory flat.
    """

    #: Upload size; C{TXAWSGI_UPLOAD_MIB} overrides it.
    SIZE = int(os.environ.get("TXAWSGI_UPLOAD_MIB", "1024")) * MiB

    #: Allowed growth of the server's peak RSS over its warmed-up RSS.
    GROWTH_LIMIT = 32 * MiB

    def setUp(self) -> None:
        if not os.path.exists("/proc/self/status"):
            raise SkipTest("needs Linux /proc to read a process's RSS")

    def status(self, pid: int) -> Dict[str, int]:
        """
        C{VmRSS} and C{VmHWM} of process C{pid}, in bytes.
        """
        found = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0]) * 1024
        return found

    def reset_peak(self, pid: int) -> bool:
        """
        Reset the process's C{VmHWM} to its current RSS (Linux 4.0+).
        """
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    @inlineCallbacks
    def upload(self, port: int, size: int) -> Any:
        client = PushClient(self, port, sndbuf=256 * 1024)
        head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        reading = client.read_to_end()
        expected = yield client.push(head, size, chunked=True)
        received = yield reading
        self.assertEqual(_body_of(received), b"%d %s" % (size, expected.encode()))

    @inlineCallbacks
    def test_slow_reader_memory_flat(self) -> Any:
        """
        The server hashes a 1 GiB chunked upload as it streams, stopping
        now and then; its peak RSS grows by far less than the upload (under
        32 MiB over its RSS after a warm-up upload), and the hash matches.
        """
        script = os.path.join(PROJECT_ROOT, "tests", "_upload_server.py")
        # The app stops reading for half a second every 128 MiB: without
        # backpressure the server would buffer what the client sends
        # meanwhile (tens of MiB at loopback speed).
        proc = ProcessHandle.start(self, [sys.executable, script, str(128 * MiB), "0.5"], env=project_env())
        match = yield proc.wait_for_output(re.compile(rb"PORT (\d+)").search, timeout=20)
        port = int(match.group(1))
        pid = proc.pid
        yield self.upload(port, 16 * MiB)
        baseline = self.status(pid)["VmRSS"]
        reset = self.reset_peak(pid)
        started = reactor.seconds()
        yield self.upload(port, self.SIZE)
        elapsed = reactor.seconds() - started
        peak = self.status(pid)["VmHWM"]
        growth = peak - baseline
        # Recorded for whoever reads the log (trial keeps it in test.log).
        from twisted.logger import Logger

        Logger().info(
            "memory test: {size} MiB in {elapsed:.1f}s; RSS baseline {base:.1f} MiB, "
            "peak {peak:.1f} MiB, growth {growth:.1f} MiB (peak reset: {reset})",
            size=self.SIZE // MiB,
            elapsed=elapsed,
            base=baseline / MiB,
            peak=peak / MiB,
            growth=growth / MiB,
            reset=reset,
        )
        self.assertLess(growth, self.GROWTH_LIMIT, f"peak RSS grew by {growth / MiB:.1f} MiB")
        yield proc.terminate()
