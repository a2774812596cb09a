"""
Load clients for the scenarios wrk cannot drive, and /proc helpers.

Each subcommand runs as its own process (bench/run.py pins it to the core
the server is not on), talks only to 127.0.0.1, is bounded in time, and
prints one JSON object on stdout.

    clients.py stream   --port P --size BYTES --count N
    clients.py upload   --port P --size BYTES --count N
    clients.py slow     --port P --size BYTES --rate BYTES_PER_S
    clients.py longpoll --port P --trigger-port U --pid SERVER_PID -n 10000

Stdlib only (uvloop is used for the long-poll client when importable).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from typing import Iterator

HOST = "127.0.0.1"

# -- /proc -------------------------------------------------------------------


def proc_stats() -> "Iterator[tuple[int, list[bytes]]]":
    """
    Each live process's pid and the fields of its C{/proc/PID/stat} that
    follow the command name (which may hold spaces and parentheses): state,
    ppid, pgrp, ...
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(entry), stat[stat.rfind(b")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, fields in proc_stats():
        children.setdefault(int(fields[1]), []).append(pid)
    return children


def process_tree(pid: int) -> list[int]:
    """
    C{pid} and all its descendants that are alive now.
    """
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            tree.append(p)
            todo.extend(children.get(p, ()))
    return tree


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    """
    VmRSS summed over the server's process tree (gunicorn: master + worker).
    """
    return sum(_status_kib(p, "VmRSS") for p in process_tree(pid))


def hwm_kib(pid: int) -> int:
    """
    VmHWM (peak RSS) summed over the process tree: each process's own peak,
    so for a tree it is an upper bound of the tree's peak.
    """
    return sum(_status_kib(p, "VmHWM") for p in process_tree(pid))


# -- a minimal blocking HTTP/1.1 client -------------------------------------------


class Conn:
    """
    One connection; reads responses with Content-Length, chunked or
    close-delimited bodies, counting the body bytes without keeping them.
    """

    def __init__(self, port: int, timeout: float = 120.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = bytearray()
        self.big = bytearray(4 * 1024 * 1024)
        self.view = memoryview(self.big)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed by the server")
        self.pending += data

    def _line(self) -> bytes:
        while True:
            i = self.pending.find(b"\r\n")
            if i >= 0:
                line = bytes(self.pending[:i])
                del self.pending[: i + 2]
                return line
            self._fill()

    def read_head(self) -> tuple[int, dict[bytes, bytes]]:
        while True:
            i = self.pending.find(b"\r\n\r\n")
            if i >= 0:
                break
            self._fill()
        head = bytes(self.pending[:i])
        del self.pending[: i + 4]
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            return self.read_head()
        return status, headers

    def _read_n(self, n: int, keep: bytearray, pace=None) -> int:
        """
        Read exactly C{n} body bytes; keep the first 64 KiB in C{keep}.
        """
        got = 0
        if self.pending:
            take = min(n, len(self.pending))
            if len(keep) < 65536:
                keep += self.pending[: min(take, 65536 - len(keep))]
            del self.pending[:take]
            got = take
        view, recv_into = self.view, self.sock.recv_into
        while got < n:
            want = min(n - got, len(self.big))
            if pace is not None:
                want = pace.allow(want)
            r = recv_into(view[:want])
            if r == 0:
                raise EOFError(f"connection closed after {got} of {n} body bytes")
            if pace is not None:
                pace.used(r)
            if len(keep) < 65536:
                keep += view[: min(r, 65536 - len(keep))]
            got += r
        return got

    def read_body(self, headers: dict[bytes, bytes], pace=None) -> tuple[int, bytes]:
        keep = bytearray()
        if b"content-length" in headers:
            return self._read_n(int(headers[b"content-length"]), keep, pace), bytes(keep)
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            total = 0
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    return total, bytes(keep)
                total += self._read_n(size, keep, pace)
                self._line()
        total = len(self.pending)
        keep += self.pending[:65536]
        self.pending.clear()
        while True:
            r = self.sock.recv_into(self.view)
            if r == 0:
                return total, bytes(keep)
            if len(keep) < 65536:
                keep += self.view[: min(r, 65536 - len(keep))]
            total += r


def _get(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


# -- stream ------------------------------------------------------------------------


def cmd_stream(args: argparse.Namespace) -> dict:
    """
    Download /stream?size=S C{count} times (a new connection each: gunicorn's
    sync worker closes after every response); MB/s of each.
    """
    rates = []
    for _ in range(args.count):
        conn = Conn(args.port)
        try:
            start = time.perf_counter()
            conn.send(_get(f"/stream?size={args.size}", args.port))
            status, headers = conn.read_head()
            n, _ = conn.read_body(headers)
            elapsed = time.perf_counter() - start
        finally:
            conn.close()
        if status != 200 or n != args.size:
            raise SystemExit(f"stream: status {status}, {n} of {args.size} bytes")
        rates.append(n / elapsed / 1e6)
    return {"mb_s": statistics.median(rates), "each_mb_s": rates, "chunked": b"content-length" not in headers}


# -- upload ------------------------------------------------------------------------


def cmd_upload(args: argparse.Namespace) -> dict:
    """
    POST C{size} bytes to /upload (Content-Length, 1 MiB sends) C{count}
    times; MB/s from the first byte sent to the answer.
    """
    block = memoryview(bytes(1024 * 1024))
    rates = []
    for _ in range(args.count):
        conn = Conn(args.port)
        try:
            start = time.perf_counter()
            conn.send(
                f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {args.size}\r\n\r\n".encode()
            )
            remaining = args.size
            while remaining:
                n = min(remaining, len(block))
                conn.send(block[:n])
                remaining -= n
            status, headers = conn.read_head()
            _, body = conn.read_body(headers)
            elapsed = time.perf_counter() - start
        finally:
            conn.close()
        if status != 200 or int(body.strip() or b"-1") != args.size:
            raise SystemExit(f"upload: status {status}, server counted {body[:40]!r} of {args.size}")
        rates.append(args.size / elapsed / 1e6)
    return {"mb_s": statistics.median(rates), "each_mb_s": rates}


# -- slow reader ----------------------------------------------------------------


class Pacer:
    """
    A token bucket: at most C{rate} bytes per second, bursts of 256 KiB.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = 256 * 1024
        self.tokens = 0.0
        self.last = time.perf_counter()

    def allow(self, want: int) -> int:
        while True:
            now = time.perf_counter()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 16384:
                return max(1, int(min(want, self.tokens)))
            time.sleep((16384 - self.tokens) / self.rate)

    def used(self, n: int) -> None:
        self.tokens -= n


def cmd_slow(args: argparse.Namespace) -> dict:
    """
    GET /stream?size=S and read it at C{rate} bytes/s.
    """
    conn = Conn(args.port, timeout=300, rcvbuf=256 * 1024)
    try:
        start = time.perf_counter()
        conn.send(_get(f"/stream?size={args.size}", args.port))
        status, headers = conn.read_head()
        n, _ = conn.read_body(headers, pace=Pacer(args.rate))
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    if status != 200 or n != args.size:
        raise SystemExit(f"slow: status {status}, {n} of {args.size} bytes")
    return {"bytes": n, "seconds": elapsed, "mb_s": n / elapsed / 1e6}


# -- long-polls -------------------------------------------------------------------


async def _read_response(reader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        return status, await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return status, bytes(body)
            body += await reader.readexactly(size + 2)
            del body[-2:]
    return status, await reader.read()


async def _longpoll(args: argparse.Namespace) -> dict:
    import asyncio

    loop = asyncio.get_running_loop()
    n = args.n
    token = os.urandom(4).hex().encode()
    wanted = b"event " + token + b"\n"
    result: dict = {"n": n}

    async def request(path: str, timeout: float) -> tuple[int, bytes, float]:
        start = time.perf_counter()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, args.port), timeout)
        try:
            writer.write(_get(path, args.port))
            status, body = await asyncio.wait_for(_read_response(reader), timeout)
            return status, body, time.perf_counter() - start
        finally:
            writer.close()

    result["rss_base_kib"] = rss_kib(args.pid)

    connect_sem = asyncio.Semaphore(args.connect_concurrency)
    connected = 0
    connect_failed = 0
    settled = 0
    all_settled = asyncio.Event()
    answered: list[float] = []
    other_answers = 0
    errors = 0
    writers = []
    all_answered = asyncio.Event()
    publishing = False

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == n:
            all_settled.set()

    async def waiter() -> None:
        nonlocal connected, connect_failed, other_answers, errors
        try:
            async with connect_sem:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, args.port), args.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            connect_failed += 1
            settle()
            return
        writers.append(writer)
        connected += 1
        writer.write(_get("/wait", args.port))
        settle()
        try:
            status, body = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            errors += 1
            return
        if status == 200 and body == wanted:
            answered.append(time.perf_counter())
            if publishing and len(answered) == connected:
                all_answered.set()
        else:
            other_answers += 1

    open_start = time.perf_counter()
    tasks = [loop.create_task(waiter()) for _ in range(n)]
    try:
        await asyncio.wait_for(all_settled.wait(), args.open_deadline)
    except asyncio.TimeoutError:
        pass
    result["open_seconds"] = time.perf_counter() - open_start
    result["connected"] = connected
    result["connect_failed"] = connect_failed + (n - settled)

    # Wait until the server holds them all (its /waiting count), or stops
    # making progress.  A server whose threads are all held cannot answer
    # /waiting at all; a busy event loop answers late, so a timeout alone is
    # no proof of either: give up only after settle_quiet seconds without
    # an answer, or 2 s of answers without progress.
    held, last_held = None, -1
    last_change = last_answer = settle_start = time.perf_counter()
    while time.perf_counter() - settle_start < args.settle_max:
        try:
            status, body, _ = await request("/waiting", 2.0)
            held = int(body.strip())
            last_answer = time.perf_counter()
        except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError):
            if time.perf_counter() - last_answer > args.settle_quiet:
                break
            continue
        if held >= connected:
            break
        if held != last_held:
            last_held, last_change = held, time.perf_counter()
        elif time.perf_counter() - last_change > 2.0:
            break
        await asyncio.sleep(0.25)
    result["held_by_server"] = held
    result["settle_seconds"] = time.perf_counter() - settle_start
    result["rss_held_kib"] = rss_kib(args.pid)
    result["rss_per_conn_kib"] = (
        (result["rss_held_kib"] - result["rss_base_kib"]) / connected if connected else None
    )

    # A hello request on a new connection while they are held.
    latencies = []
    hello_timeouts = 0
    for _ in range(args.hello_count):
        try:
            status, body, elapsed = await request("/hello", args.hello_timeout)
            latencies.append(elapsed * 1000)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            hello_timeouts += 1
            break
    result["hello_ms"] = statistics.median(latencies) if latencies else None
    result["hello_timeouts"] = hello_timeouts

    # One broadcast, from outside (UDP), then wait for the answers.
    trigger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    publishing = True
    published = time.perf_counter()
    trigger.sendto(token, (HOST, args.trigger_port))
    trigger.close()
    if connected and len(answered) == connected:
        all_answered.set()
    # Until all are answered, the deadline, or no new answer for
    # stall seconds (a threadpool server answers its few held ones at once).
    deadline = published + args.publish_deadline
    seen = -1
    while not all_answered.is_set() and time.perf_counter() < deadline:
        if len(answered) != seen:
            seen, last_progress = len(answered), time.perf_counter()
        elif time.perf_counter() - last_progress > args.stall:
            break
        try:
            await asyncio.wait_for(all_answered.wait(), 0.25)
        except asyncio.TimeoutError:
            pass
    result["served"] = len(answered)
    result["all_answered"] = bool(connected) and len(answered) == connected and connected == n
    result["time_to_all_s"] = (max(answered) - published) if result["all_answered"] else None
    result["time_to_last_s"] = (max(answered) - published) if answered else None
    result["other_answers"] = other_answers
    result["errors"] = errors
    result["publish_deadline"] = args.publish_deadline
    result["stalled"] = not result["all_answered"] and time.perf_counter() < deadline

    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for writer in writers:
        writer.transport.abort()
    await asyncio.sleep(0.2)
    return result


def cmd_longpoll(args: argparse.Namespace) -> dict:
    import asyncio

    try:
        import uvloop  # type: ignore[import-not-found]

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_longpoll(args))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("stream", "upload", "slow", "longpoll"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
    for name in ("stream", "upload"):
        sub.choices[name].add_argument("--size", type=int, required=True)
        sub.choices[name].add_argument("--count", type=int, default=1)
    slow = sub.choices["slow"]
    slow.add_argument("--size", type=int, required=True)
    slow.add_argument("--rate", type=float, required=True, help="bytes per second")
    lp = sub.choices["longpoll"]
    lp.add_argument("-n", type=int, default=10000)
    lp.add_argument("--pid", type=int, required=True, help="server pid, for RSS")
    lp.add_argument("--trigger-port", type=int, required=True)
    lp.add_argument("--connect-concurrency", type=int, default=1000)
    lp.add_argument("--connect-timeout", type=float, default=5.0)
    lp.add_argument("--open-deadline", type=float, default=15.0)
    lp.add_argument("--settle-max", type=float, default=20.0)
    lp.add_argument("--settle-quiet", type=float, default=6.0)
    lp.add_argument("--stall", type=float, default=5.0, help="give up after this long without a new answer")
    lp.add_argument("--hello-count", type=int, default=10)
    lp.add_argument("--hello-timeout", type=float, default=2.0)
    lp.add_argument("--publish-deadline", type=float, default=20.0)
    args = parser.parse_args(argv)
    out = {"stream": cmd_stream, "upload": cmd_upload, "slow": cmd_slow, "longpoll": cmd_longpoll}[args.cmd](args)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
