"""
C{--workers N}: a supervisor and N worker processes on shared listening
sockets, restarted when they die, stopped gracefully with the supervisor.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
from typing import Dict, List, Set, Tuple

from twisted.internet.defer import gatherResults
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txawsgi.workers import cpu_count, parse_workers

from ._production import APP, json_body, parse, temp_dir, twistd_awsgi
from .support import (
    PROJECT_ROOT,
    ProcessHandle,
    RawClient,
    curl_available,
    eventually,
    free_port,
    project_env,
    request,
    run_curl,
    sleep,
    twistd_argv,
)

#: A whole line of twistd's log: timestamp, system, text.  A continuation
#: line (of a traceback) starts with a tab.
LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]\n]+\] |\t")

#: A request line of Twisted's request log, written by worker C{name}.
ACCESS = rb'(?m)^\S+ \[(?P<name>worker-\d+)\] \[[^\]]+\] "127\.0\.0\.1" - - \[[^\]]+\] "GET %s HTTP/1\.1" 200 '


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


class AcceptTests(TestCase):
    """
    A worker accepts one connection per wakeup, so the workers woken by new
    connections share them out.
    """

    async def test_onePerWakeup(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        from txawsgi.listeners import InheritedEndpoint

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        accepted: List[Protocol] = []

        class Record(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        endpoint = InheritedEndpoint(reactor, os.dup(sock.fileno()), socket.AF_INET, "tcp:0", False)
        port = await endpoint.listen(Factory.forProtocol(Record))
        self.addCleanup(port.stopListening)
        port.stopReading()  # this test plays the reactor
        clients = []
        for _ in range(3):
            client = socket.create_connection(sock.getsockname())
            self.addCleanup(client.close)
            clients.append(client)
        sock.close()
        port.doRead()
        self.assertEqual(len(accepted), 1)
        port.doRead()
        self.assertEqual(len(accepted), 2)
        for protocol in accepted:
            protocol.transport.abortConnection()


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

    def worker_names(self, log: bytes) -> Dict[int, bytes]:
        """
        The name of each worker process, by pid, from the supervisor's log.
        """
        return {
            int(pid): name for name, pid in re.findall(rb"(worker-\d+) started \(pid (\d+)\)", log)
        }

    async def both_serve(self, tag: str, block: str = "0.8") -> Tuple[int, int]:
        """
        Make each worker answer a request: C{/block?BLOCK} blocks one for
        BLOCK seconds, C{/pid?TAG} is answered by the other meanwhile.

        @return: the pids that answered them, in that order.
        """
        blocked = request(self.base + f"/block?{block}")
        await sleep(0.3)
        response = await request(self.base + f"/pid?{tag}")
        other = int(response.body)
        busy = int((await blocked).body)
        self.assertNotEqual(busy, other)
        return busy, other

    async def connect_while_blocked(self, via: "RawClient | None") -> List[RawClient]:
        """
        Block a worker for a second (through C{via}, a connection to it, or
        any worker), and meanwhile open 4 connections: the other worker
        accepts them all.  Each has answered one request.
        """
        if via is None:
            via = await RawClient.connect(("127.0.0.1", self.port), testcase=self)
            sent = 0
        else:
            sent = len(await via.wait_for_responses(1))
        via.send(b"GET /block?1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await sleep(0.3)
        clients = []
        for _ in range(4):
            client = await RawClient.connect(("127.0.0.1", self.port), testcase=self)
            client.send(b"GET /pid?probe HTTP/1.1\r\nHost: x\r\n\r\n")
            await client.wait_for_responses(1)
            clients.append(client)
        blocked = int((await via.wait_for_responses(sent + 1, timeout=10))[-1].body)
        pids = {int((await c.wait_for_responses(1))[0].body) for c in clients}
        self.assertEqual(len(pids), 1)
        self.assertNotIn(blocked, pids)
        return clients

    def assertWholeLines(self, log: bytes) -> None:
        """
        Every line of C{log} is a whole line of twistd's format (none cut
        or run into by another process's).
        """
        for line in log.splitlines():
            self.assertTrue(LOG_LINE.match(line), line)

    def assertServedBy(self, log: bytes, path: str, name: bytes) -> None:
        """
        The request log line of C{GET path} is in C{log}, once, written by
        worker C{name}.
        """
        found = re.findall(ACCESS % re.escape(path.encode()), log)
        self.assertEqual(found, [name], log[-3000:])

    async def test_workersWriteTheirOwnLines(self) -> None:
        """
        Each worker writes its log lines, Twisted's request log included,
        to the supervisor's standard output itself (not relayed by the
        supervisor): whole lines in twistd's format, tagged with the name
        of the worker, also when both write many long lines at once.
        """
        proc = self.start("--workers", "2")
        await self.ready(proc, 2)
        busy, other = await self.both_serve("first")
        pattern = ACCESS % rb"/pid\?first"
        await proc.wait_for_output(lambda out: re.search(pattern, out))
        names = self.worker_names(proc.output)
        self.assertServedBy(proc.output, "/block?0.8", names[busy])
        self.assertServedBy(proc.output, "/pid?first", names[other])
        self.assertNotIn(b"ProcessMonitor", proc.output)

        # Lines of 3 kB, from 2 workers at once, through a pipe: 4
        # connections to each worker (opened while the other one is
        # blocked), 10 requests on each.
        agent = "x" * 3000
        first = await self.connect_while_blocked(None)
        second = await self.connect_while_blocked(first[0])
        clients = first + second
        for client in clients:
            for _ in range(10):
                client.send(b"GET /pid?many HTTP/1.1\r\nHost: x\r\nUser-Agent: %s\r\n\r\n" % agent.encode())
        answers = await gatherResults([c.wait_for_responses(11, timeout=20) for c in clients])
        pids = [{int(r.body) for r in responses[1:]} for responses in answers]
        one, two = pids[0], pids[4]
        self.assertEqual(pids, [one] * 4 + [two] * 4)
        self.assertEqual(one | two, {busy, other})
        many = re.compile(rb'"GET /pid\?many HTTP/1\.1" 200 \d+ "-" "%s"$' % agent.encode(), re.M)
        await proc.wait_for_output(lambda out: len(many.findall(out)) == 80, timeout=20)
        proc.signal("TERM")
        await proc.wait_exit(timeout=15)
        self.assertWholeLines(proc.out)
        self.assertIn(b"Stopping 2 worker(s)", proc.out)

    def start_with_log_file(self) -> "tuple[str, ProcessHandle]":
        """
        Start C{twistd --logfile} with two workers; return the log file's
        path and the process.
        """
        path = os.path.join(temp_dir(self), "twistd.log")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = twistd_argv(
            "-n", "--pidfile=", f"--logfile={path}", "awsgi", "--app", APP,
            "-l", f"tcp:{self.port}:interface=127.0.0.1", "--workers", "2",
        )  # fmt: skip
        return path, ProcessHandle.start(self, argv, env=project_env(), path=PROJECT_ROOT)

    async def test_logFileRotation(self) -> None:
        """
        With C{--logfile}, workers write to the file too, and after the
        supervisor rotates it (C{SIGUSR1}) they go on in the new file, where
        no process writes over another's lines.
        """
        path, proc = self.start_with_log_file()

        def log(suffix: str = "") -> bytes:
            try:
                with open(path + suffix, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return b""

        def has(pattern: bytes, suffix: str = "") -> bool:
            return re.search(pattern, log(suffix)) is not None

        await eventually(lambda: len(re.findall(rb"\(worker-\d+, in the", log())) == 2, timeout=20)
        names = self.worker_names(log())
        before = await self.both_serve("before")
        await eventually(lambda: has(ACCESS % rb"/pid\?before"))
        proc.signal(signal.SIGUSR1)  # type: ignore[arg-type]
        await eventually(lambda: os.path.exists(path + ".1") and os.path.exists(path))
        after = await self.both_serve("after", "0.81")
        await eventually(lambda: has(ACCESS % rb"/pid\?after"))
        proc.signal("TERM")
        await proc.wait_exit(timeout=15)
        old, new = log(".1"), log()
        self.assertServedBy(old, "/block?0.8", names[before[0]])
        self.assertServedBy(old, "/pid?before", names[before[1]])
        self.assertServedBy(new, "/block?0.81", names[after[0]])
        self.assertServedBy(new, "/pid?after", names[after[1]])
        self.assertIn(b"Stopping 2 worker(s)", new)
        self.assertWholeLines(old)
        self.assertWholeLines(new)
        self.assertEqual(proc.output, b"")

    async def test_logFileRotatesBySize(self) -> None:
        """
        twistd's C{--logfile} rotates at 1 MB (its C{rotateLength}) of
        lines, the workers' counted: each file is about that size, every
        request line is in one of them exactly once, and all lines are
        whole.
        """
        path, proc = self.start_with_log_file()

        def logs() -> List[bytes]:
            """
            The log files, oldest first.
            """
            out = []
            for suffix in [f".{n}" for n in range(9, 0, -1)] + [""]:
                try:
                    with open(path + suffix, "rb") as f:
                        out.append(f.read())
                except FileNotFoundError:
                    pass
            return out

        await eventually(lambda: len(re.findall(rb"\(worker-\d+, in the", b"".join(logs()))) == 2, timeout=20)
        # 4 connections to each worker, 90 requests of 3 kB request log
        # lines each: 2.3 MB.
        clients = await self.connect_while_blocked(None)
        clients += await self.connect_while_blocked(clients[0])
        agent = b"x" * 3000
        for c, client in enumerate(clients):
            client.send(
                b"".join(
                    b"GET /pid?big-%d-%d HTTP/1.1\r\nHost: x\r\nUser-Agent: %s\r\n\r\n" % (c, i, agent)
                    for i in range(90)
                )
            )
        answers = await gatherResults([c.wait_for_responses(91, timeout=30) for c in clients])
        self.assertEqual(len({r.body for responses in answers for r in responses}), 2)
        big = re.compile(rb'"GET /pid\?big-(\d+)-(\d+) HTTP/1\.1" 200 \d+ "-" "%s"\n' % agent)
        await eventually(lambda: len(big.findall(b"".join(logs()))) >= 720, timeout=20)
        proc.signal("TERM")
        await proc.wait_exit(timeout=15)
        files = logs()
        self.assertGreaterEqual(len(files), 3, [len(f) for f in files])
        for rotated in files[:-1]:
            # twistd alone: from 1 MB to 1 MB and a line; with workers,
            # plus what they write while the supervisor gets to rotating
            # (here typically one or two 64 kB batches of 3 kB lines; more
            # on a loaded machine).
            self.assertGreaterEqual(len(rotated), 1_000_000)
            self.assertLess(len(rotated), 1_500_000, [len(f) for f in files])
        for log in files:
            self.assertWholeLines(log)
        found = [(int(c), int(i)) for log in files for c, i in big.findall(log)]
        self.assertEqual(sorted(found), [(c, i) for c in range(8) for i in range(90)])
        self.assertIn(b"Stopping 2 worker(s)", files[-1])
        self.assertEqual(proc.output, b"")

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
