"""
C{--access-log}: one combined-format line per request, written once the
response has ended, with the status and body bytes that really went out.
"""

from __future__ import annotations

import os
import re
import signal
from typing import List

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import combinedLogFormatter
from twisted.web.test.requesthelper import DummyRequest

from txawsgi.accesslog import MAX_FIELD, AccessLog, combined_line, combined_record, escape, twisted_log_formatter

from ._production import APP, serve, temp_dir, twistd_awsgi
from .support import RawClient, eventually, free_port, request

LINE = re.compile(
    r'(?P<host>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"\Z'
)


def lines(path: str) -> List[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def dummy_request() -> DummyRequest:
    """
    A request, as the access log sees it once its response has ended.
    """
    request = DummyRequest([b"x"])
    request.method = b"GET"
    request.uri = b"/x"
    request.clientproto = b"HTTP/1.1"
    request.client = IPv4Address("TCP", "192.0.2.1", 1234)
    request.code = 200
    request.startedWriting = True
    request.sentLength = 2
    return request


class FormatTests(SynchronousTestCase):
    def test_escape(self) -> None:
        self.assertEqual(escape(None), "-")
        self.assertEqual(escape(b""), "-")
        self.assertEqual(escape(b"curl/8"), "curl/8")
        self.assertEqual(escape(b'a"b\\c\nd\xff'), "a\\x22b\\x5Cc\\x0Ad\\xFF")

    def test_line(self) -> None:
        request = DummyRequest([b"x"])
        request.method = b"GET"
        request.uri = b"/x?y"
        request.clientproto = b"HTTP/1.1"
        request.client = IPv4Address("TCP", "192.0.2.1", 1234)
        request.requestHeaders.setRawHeaders(b"referer", [b"http://r/"])
        request.requestHeaders.setRawHeaders(b"user-agent", [b"UA \"q\""])
        request.code = 404
        request.startedWriting = True
        request.sentLength = 12
        line = combined_line(request, when=0, aborted=False)
        match = LINE.match(line)
        assert match is not None, line
        self.assertEqual(match["host"], "192.0.2.1")
        self.assertEqual(match["request"], "GET /x?y HTTP/1.1")
        self.assertEqual((match["status"], match["bytes"]), ("404", "12"))
        self.assertEqual((match["referer"], match["agent"]), ("http://r/", "UA \\x22q\\x22"))
        self.assertRegex(match["time"], r"0[01]/Jan/1970|31/Dec/1969")
        request.startedWriting = False
        request.sentLength = 0
        self.assertIn('" 499 - "', combined_line(request, when=0, aborted=True))

    def test_timestampPerSecond(self) -> None:
        """
        The time (formatted once per second) is the second of C{when}.
        """
        request = dummy_request()
        stamps = []
        for when in (0.0, 0.9, 1.0, 0.5, 86400 * 365.25 * 30 + 0.1):
            match = LINE.match(combined_line(request, when=when, aborted=False))
            assert match is not None
            stamps.append(match["time"])
        self.assertEqual(stamps[0], stamps[1])
        self.assertNotEqual(stamps[1], stamps[2])
        self.assertEqual(stamps[3], stamps[0])
        self.assertRegex(stamps[4], r"(31/Dec/1999|01/Jan/2000):")
        self.assertEqual(
            combined_record(request, when=5, aborted=False),
            combined_line(request, when=5, aborted=False).encode() + b"\n",
        )


    def test_longFieldsCut(self) -> None:
        """
        A request target (and a C{Referer} or C{User-Agent}) over
        L{MAX_FIELD} bytes is logged cut to its first L{MAX_FIELD} bytes,
        marked with how many were left out; one at the limit is whole.
        """
        request = dummy_request()
        target = b"/" + b"a" * 99999
        request.uri = target
        request.requestHeaders.setRawHeaders(b"referer", [b"r" * (MAX_FIELD + 1)])
        request.requestHeaders.setRawHeaders(b"user-agent", [b"u" * MAX_FIELD])
        line = combined_line(request, when=0, aborted=False)
        match = LINE.match(line)
        assert match is not None, line[:200]
        self.assertEqual(match["request"], f"GET {target[:MAX_FIELD].decode()}...[+{len(target) - MAX_FIELD}] HTTP/1.1")
        self.assertEqual(match["referer"], "r" * MAX_FIELD + "...[+1]")
        self.assertEqual(match["agent"], "u" * MAX_FIELD)
        self.assertLess(len(line), 4 * MAX_FIELD)
        request.uri = b"/" + b"b" * (MAX_FIELD - 1)
        match = LINE.match(combined_line(request, when=0, aborted=False))
        assert match is not None
        self.assertEqual(match["request"], f"GET /{'b' * (MAX_FIELD - 1)} HTTP/1.1")

    def test_twistedLogFormatter(self) -> None:
        """
        Without an access log, Twisted's own request log keeps Twisted's
        line, with long fields cut as in the access log.
        """
        request = dummy_request()
        stamp = "[01/Jan/1970:00:00:00 +0000]"
        self.assertEqual(twisted_log_formatter(stamp, request), combinedLogFormatter(stamp, request))
        request.uri = b"/" + b"a" * 100000
        request.requestHeaders.setRawHeaders(b"user-agent", [b"u" * (MAX_FIELD + 5)])
        line = twisted_log_formatter(stamp, request)
        self.assertTrue(line.startswith('"192.0.2.1" - - ' + stamp + ' "GET /aaa'), line[:100])
        self.assertIn(f"...[+{100001 - MAX_FIELD}] HTTP/1.1\" 200 2 ", line)
        self.assertTrue(line.endswith('"' + "u" * MAX_FIELD + '...[+5]"'), line[-100:])
        self.assertLess(len(line), 3 * MAX_FIELD)


class BufferTests(SynchronousTestCase):
    """
    Lines wait a moment in memory; closing the log writes them.
    """

    def test_closeWritesBufferedLines(self) -> None:
        path = os.path.join(temp_dir(self), "access.log")
        clock = Clock()
        log = AccessLog(path, reactor=clock, delay=10)
        log.open()
        request = dummy_request()
        for _ in range(3):
            log.log(request, when=0, aborted=False)
        self.assertEqual(lines(path), [])
        log.close()
        self.assertEqual(len(lines(path)), 3)
        self.assertEqual(clock.getDelayedCalls(), [])
        log.write("after")
        self.assertEqual(len(lines(path)), 3)

    def test_endOfTurn(self) -> None:
        """
        By default, lines are written once the reactor has handled the
        events at hand.
        """
        path = os.path.join(temp_dir(self), "access.log")
        clock = Clock()
        log = AccessLog(path, reactor=clock)
        log.open()
        self.addCleanup(log.close)
        log.write("one")
        log.write("two")
        self.assertEqual(lines(path), [])
        clock.advance(0)
        self.assertEqual(lines(path), ["one", "two"])


class AccessLogTests(TestCase):
    """
    Every request is logged exactly once, with what was sent.
    """

    timeout = 20

    def setUp(self) -> None:
        self.directory = temp_dir(self)
        self.path = os.path.join(self.directory, "access.log")

    def serve(self, *args: str):  # type: ignore[no-untyped-def]
        static = os.path.join(self.directory, "static")
        os.mkdir(static)
        with open(os.path.join(static, "f.txt"), "wb") as f:
            f.write(b"0123456789" * 10)
        return serve(
            self,
            "--app", APP, "--static", f"/files={static}", "--access-log", self.path,
            *args,
        )

    async def test_linesMatchResponses(self) -> None:
        served = self.serve()
        plain = await served.get("/pid", headers={"Referer": "http://ref/", "User-Agent": "tester/1"})
        streamed = await served.get("/stream?5")
        missing = await served.get("/files/nope")
        ranged = await served.get("/files/f.txt", headers={"Range": "bytes=10-29"})
        await eventually(lambda: len(lines(self.path)) == 4)
        parsed = [LINE.match(line) for line in lines(self.path)]
        self.assertNotIn(None, parsed, lines(self.path))
        got = [(m["request"], int(m["status"]), m["bytes"]) for m in parsed]  # type: ignore[index]
        self.assertEqual(
            got,
            [
                ("GET /pid HTTP/1.1", plain.code, str(len(plain.body))),
                ("GET /stream?5 HTTP/1.1", streamed.code, str(len(streamed.body))),
                ("GET /files/nope HTTP/1.1", 404, str(len(missing.body))),
                ("GET /files/f.txt HTTP/1.1", 206, "20"),
            ],
        )
        self.assertEqual(ranged.code, 206)
        self.assertEqual(streamed.length, None)  # chunked, not declared
        first = parsed[0]
        assert first is not None
        self.assertEqual(first["host"], "127.0.0.1")
        self.assertEqual((first["referer"], first["agent"]), ("http://ref/", "tester/1"))

    async def test_abortedStream(self) -> None:
        """
        A response the client walks away from is logged once it is cut,
        with the status that went out and the bytes sent so far.
        """
        served = self.serve()
        client = await RawClient.connect(("127.0.0.1", served.port), testcase=self)
        client.send(b"GET /longpoll HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b"waiting\n")
        self.assertEqual(lines(self.path), [])  # not before the end
        await client.abort()
        await eventually(lambda: lines(self.path))
        [line] = lines(self.path)
        match = LINE.match(line)
        assert match is not None, line
        self.assertEqual((match["request"], match["status"]), ("GET /longpoll HTTP/1.1", "200"))
        self.assertEqual(match["bytes"], str(len(b"waiting\n")))

    async def test_goneBeforeAnyResponse(self) -> None:
        served = self.serve()
        client = await RawClient.connect(("127.0.0.1", served.port), testcase=self)
        client.send(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: served.service.listeners and served.site.connections and any(
            getattr(p._channel, "requests", None) for p in served.site.connections
        ))
        await client.abort()
        await eventually(lambda: lines(self.path))
        [line] = lines(self.path)
        self.assertIn('"GET /never HTTP/1.1" 499 - ', line)

    async def test_failedAfterStart(self) -> None:
        """
        An application error after the headers went out cuts the response;
        the line says 200 and the bytes that were sent.
        """
        served = self.serve()
        response = await served.get("/fail", allow_partial=True)
        self.assertFalse(response.complete)
        await eventually(lambda: lines(self.path))
        [line] = lines(self.path)
        self.assertIn('"GET /fail HTTP/1.1" 200 7 ', line)
        self.flushLoggedErrors(RuntimeError)

    async def test_keepAliveRequestsEachOnce(self) -> None:
        served = self.serve()
        client = await RawClient.connect(("127.0.0.1", served.port), testcase=self)
        for path in (b"/pid", b"/files/f.txt", b"/stream?2"):
            client.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        await client.wait_for_responses(3)
        await client.close()
        await eventually(lambda: len(lines(self.path)) >= 3)
        self.assertEqual(
            [LINE.match(line)["request"] for line in lines(self.path)],  # type: ignore[index]
            ["GET /pid HTTP/1.1", "GET /files/f.txt HTTP/1.1", "GET /stream?2 HTTP/1.1"],
        )

    def test_unwritableDestination(self) -> None:
        log = AccessLog(os.path.join(self.directory, "no", "such", "dir.log"))
        self.assertRaises(OSError, log.open)


class StdoutTests(TestCase):
    """
    C{--access-log -} under C{twistd}: plain lines on standard output, not
    log events.
    """

    timeout = 30

    async def test_stdout(self) -> None:
        port = free_port()
        proc = twistd_awsgi(
            self, "--app", APP, "-l", f"tcp:{port}:interface=127.0.0.1", "--access-log", "-"
        )
        await proc.wait_for_output(b"txawsgi serving", timeout=20)
        response = await request(f"http://127.0.0.1:{port}/stream?2")
        self.assertEqual(response.code, 200)
        out = await proc.wait_for_output(b'"GET /stream?2 HTTP/1.1" 200')
        [line] = [l for l in out.decode().splitlines() if "/stream?2" in l]
        self.assertIsNotNone(LINE.match(line), line)
        self.assertEqual(line.split('" ')[1], f'200 {len(response.body)} "-')


class StopTests(TestCase):
    """
    A request in flight at SIGTERM is logged before the server exits.
    """

    timeout = 40

    async def stop_during_request(self, *args: str) -> str:
        path = os.path.join(temp_dir(self), "access.log")
        port = free_port()
        proc = twistd_awsgi(
            self, "--app", APP, "-l", f"tcp:{port}:interface=127.0.0.1", "--access-log", path, *args
        )
        await proc.wait_for_output(b"(worker-" if args else b"txawsgi serving", timeout=20)
        for _ in range(5):
            response = await request(f"http://127.0.0.1:{port}/pid")
            self.assertEqual(response.code, 200)
        client = await RawClient.connect(("127.0.0.1", port), testcase=self)
        client.send(b"GET /slow?0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b"started\n")
        proc.signal("TERM")
        self.assertEqual(await proc.wait_exit(timeout=20), -signal.SIGTERM, proc.output)
        logged = lines(path)
        self.assertEqual(len([line for line in logged if '"GET /pid HTTP/1.1" 200' in line]), 5, logged)
        [slow] = [line for line in logged if "/slow" in line]
        self.assertEqual(len(logged), 6)
        return slow

    async def test_oneProcess(self) -> None:
        slow = await self.stop_during_request()
        self.assertIn('"GET /slow?0.5 HTTP/1.1" 200 %d ' % len(b"started\nfinished\n"), slow)

    async def test_workers(self) -> None:
        slow = await self.stop_during_request("--workers", "2")
        self.assertIn('"GET /slow?0.5 HTTP/1.1" 200 %d ' % len(b"started\nfinished\n"), slow)


class NoAccessLogTests(TestCase):
    """
    C{--no-access-log}: no line per request anywhere, in one process or in
    workers; Twisted's request log is the default otherwise.
    """

    timeout = 40

    async def served_output(self, *args: str) -> str:
        """
        The whole output of a server given C{args} that served two requests
        and was stopped.
        """
        port = free_port()
        proc = twistd_awsgi(self, "--app", APP, "-l", f"tcp:{port}:interface=127.0.0.1", *args)
        await proc.wait_for_output(b"(worker-" if "--workers" in args else b"txawsgi serving", timeout=20)
        for target in ("/stream?2", "/pid"):
            response = await request(f"http://127.0.0.1:{port}{target}")
            self.assertEqual(response.code, 200)
        proc.signal("TERM")
        self.assertEqual(await proc.wait_exit(timeout=20), -signal.SIGTERM, proc.output)
        return proc.output.decode("utf-8", "replace")

    async def test_default(self) -> None:
        out = await self.served_output()
        self.assertIn('"GET /stream?2 HTTP/1.1" 200', out)
        self.assertIn('"GET /pid HTTP/1.1" 200', out)

    async def test_oneProcess(self) -> None:
        out = await self.served_output("--no-access-log")
        self.assertNotIn("GET /stream", out)
        self.assertNotIn("GET /pid", out)
        self.assertIn("txawsgi serving", out)

    async def test_workers(self) -> None:
        out = await self.served_output("--no-access-log", "--workers", "2")
        self.assertNotIn("GET /stream", out)
        self.assertNotIn("GET /pid", out)
        self.assertIn("(worker-", out)
