"""
C{--workers N}: a supervisor and N worker processes on shared listening
sockets, restarted when they die, stopped gracefully with the supervisor.
"""

from __future__ import annotations

import os
import re
import signal
import stat
from typing import List, Set

from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txawsgi.workers import cpu_count, parse_workers

from ._production import APP, json_body, parse, temp_dir, twistd_awsgi
from .support import (
    ProcessHandle,
    RawClient,
    curl_available,
    eventually,
    free_port,
    request,
    run_curl,
    sleep,
)


def alive(pid: int) -> bool:
    """
    Whether process C{pid} runs (a zombie left for a non-reaping init does
    not count).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class OptionTests(SynchronousTestCase):
    def test_count(self) -> None:
        self.assertEqual(parse_workers("3"), 3)
        self.assertEqual(parse_workers("auto"), cpu_count())
        self.assertEqual(parse_workers("0"), cpu_count())
        self.assertEqual(parse()["workers"], 1)
        self.assertEqual(parse("-w", "auto")["workers"], cpu_count())

    def test_unshareableListener(self) -> None:
        e = self.assertRaises(UsageError, parse, "--workers", "2", "--listen", "stdio:")
        self.assertIn("cannot be shared by worker processes", str(e))


class WorkerTests(TestCase):
    timeout = 60

    #: /pid requests made.
    pid_requests = 0

    def start(self, *args: str) -> ProcessHandle:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        return twistd_awsgi(
            self, "--app", APP, "-l", f"tcp:{self.port}:interface=127.0.0.1", *args
        )

    async def ready(self, proc: ProcessHandle, count: int) -> None:
        """
        Wait until C{count} workers (in all) have said they serve.
        """
        await proc.wait_for_output(
            lambda out: len(re.findall(rb"\(worker-\d+, in the", out)) >= count, timeout=20
        )

    async def pid(self) -> int:
        response = await request(self.base + "/pid")
        self.assertEqual(response.code, 200)
        self.pid_requests += 1
        return int(response.body)

    def worker_pids(self, proc: ProcessHandle) -> List[int]:
        return [int(p) for p in re.findall(rb"worker-\d+ started \(pid (\d+)\)", proc.output)]

    async def test_workers(self) -> None:
        """
        Two workers answer (one is busy, the other serves); killing one
        loses no later request; the supervisor logs why it died and starts
        another; every request is in the shared access log.
        """
        log_path = os.path.join(temp_dir(self), "access.log")
        proc = self.start("--workers", "2", "--access-log", log_path)
        await self.ready(proc, 2)
        started = self.worker_pids(proc)
        # Block one worker's reactor: the other must answer meanwhile.
        blocked = request(self.base + "/block?1.5")
        await sleep(0.5)
        other = await self.pid()
        busy = int((await blocked).body)
        self.assertNotEqual(busy, other)
        self.assertEqual({busy, other}, set(started))
        env = json_body(await request(self.base + "/environ"))
        self.assertIs(env["wsgi.multiprocess"], True)

        os.kill(busy, signal.SIGKILL)
        answered: Set[int] = set()
        for _ in range(12):
            answered.add(await self.pid())
        self.assertNotIn(busy, answered)
        await proc.wait_for_output(
            b"(pid %d) was killed by signal 9 (SIGKILL); restarting it" % busy
        )
        await self.ready(proc, 3)
        replacement = self.worker_pids(proc)[-1]
        self.assertNotIn(replacement, started)
        # With one worker busy, the other answers: both serve.
        blocked = request(self.base + "/block?1")
        await sleep(0.3)
        answered_meanwhile = await self.pid()
        self.assertEqual({answered_meanwhile, int((await blocked).body)}, {other, replacement})

        proc.signal("TERM")
        await proc.wait_exit(timeout=15)
        for pid in (other, replacement):
            self.assertFalse(alive(pid))
        with open(log_path) as f:
            logged = f.read().splitlines()
        self.assertEqual(
            len([line for line in logged if '"GET /pid HTTP/1.1" 200' in line]), self.pid_requests
        )
        self.assertEqual(len(logged), self.pid_requests + 3)
        self.assertTrue(all(line.startswith("127.0.0.1 - - [") for line in logged), logged)

    async def test_sigtermDrainsWorkers(self) -> None:
        """
        SIGTERM to the supervisor: workers finish their requests, then all
        exit, and so does the supervisor.
        """
        proc = self.start("--workers", "2")
        await self.ready(proc, 2)
        pids = self.worker_pids(proc)
        client = await RawClient.connect(("127.0.0.1", self.port), testcase=self)
        client.send(b"GET /slow?1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b"started\n", timeout=10)
        proc.signal("TERM")
        [response] = await client.wait_for_responses(1, timeout=10)
        self.assertEqual(response.body, b"started\nfinished\n")
        code = await proc.wait_exit(timeout=15)
        self.assertEqual(code, -signal.SIGTERM, proc.output)
        self.assertIn(b"Stopping 2 worker(s)", proc.output)
        for pid in pids:
            self.assertFalse(alive(pid))

    async def test_orphanedWorkersExit(self) -> None:
        """
        A worker whose supervisor died (no chance to forward anything)
        shuts down by itself.
        """
        proc = self.start("--workers", "2")
        await self.ready(proc, 2)
        pids = self.worker_pids(proc)
        await self.pid()
        proc.signal("KILL")
        await proc.wait_exit()
        for pid in pids:
            await eventually(lambda pid=pid: not alive(pid), timeout=10)

    async def test_unixSocket(self) -> None:
        """
        Workers share a UNIX socket too: its mode is kept, and the file is
        removed once, by the supervisor, at the end.
        """
        if not curl_available():
            raise SkipTest("curl is not installed")
        path = os.path.join(temp_dir(self), "s.sock")
        proc = twistd_awsgi(self, "--app", APP, "-l", f"unix:{path}:mode=660", "--workers", "2")
        await self.ready(proc, 2)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
        code, out, err = await run_curl(["--unix-socket", path, "http://localhost/environ"])
        self.assertEqual(code, 0, err)
        self.assertIn(b'"wsgi.multiprocess": true', out)
        proc.signal("TERM")
        await proc.wait_exit(timeout=15)
        self.assertFalse(os.path.exists(path))
        self.assertNotIn(b"Traceback", proc.output)
