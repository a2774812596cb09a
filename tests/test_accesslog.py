"""
C{--access-log}: one combined-format line per request, written once the
response has ended, with the status and body bytes that really went out.
"""

from __future__ import annotations

import os
import re
from typing import List

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from txawsgi.accesslog import AccessLog, combined_line, escape

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
