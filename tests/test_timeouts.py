"""
C{--keep-alive-timeout}, C{--header-timeout} and C{--request-timeout} on
real connections.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txawsgi.timeouts import DEFAULT_HEADER, DEFAULT_KEEP_ALIVE

from ._production import APP, parse, serve
from .support import RawClient, sleep


class OptionTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = parse()
        self.assertEqual(options["keep-alive-timeout"], DEFAULT_KEEP_ALIVE)
        self.assertEqual(options["header-timeout"], DEFAULT_HEADER)
        self.assertEqual(options["request-timeout"], 0)
        self.assertEqual(options["graceful-timeout"], 30)

    def test_site(self) -> None:
        served_options = parse("--keep-alive-timeout", "7", "--header-timeout", "0")
        self.assertEqual(served_options["keep-alive-timeout"], 7)
        self.assertEqual(served_options["header-timeout"], 0)

    def test_bad(self) -> None:
        for option in ("--keep-alive-timeout", "--header-timeout", "--request-timeout", "--graceful-timeout"):
            for value in ("-1", "soon", "inf"):
                self.assertRaises(UsageError, parse, option, value)


class TimeoutTests(TestCase):
    timeout = 20

    async def connect(self, served):  # type: ignore[no-untyped-def]
        return await RawClient.connect(("127.0.0.1", served.port), testcase=self)

    async def test_idleKeepAliveClosed(self) -> None:
        """
        A connection left idle after its response is closed once the
        keep-alive timeout passes.
        """
        served = serve(self, "--app", APP, "--keep-alive-timeout", "0.3")
        client = await self.connect(served)
        client.send(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for_responses(1)
        start = reactor.seconds()
        self.assertEqual(await client.wait_closed(timeout=3), "clean")
        self.assertGreaterEqual(reactor.seconds() - start, 0.25)

    async def test_busyConnectionNotIdle(self) -> None:
        """
        While the application holds a request (a slow response, a body it
        is not reading yet), the keep-alive timer does not run.
        """
        served = serve(self, "--app", APP, "--keep-alive-timeout", "0.2", "--stream-input")
        client = await self.connect(served)
        client.send(b"GET /slow?0.6 HTTP/1.1\r\nHost: x\r\n\r\n")
        [response] = await client.wait_for_responses(1, timeout=3)
        self.assertEqual(response.body, b"started\nfinished\n")
        # A request whose body the app never asks for, dispatched at headers.
        uploading = await self.connect(served)
        uploading.send(b"POST /slow?0.6 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
        await uploading.wait_for(b"finished\n", timeout=3)

    async def test_slowHeaders(self) -> None:
        """
        A client trickling its request head gets 408 once the header timeout
        passes, although it keeps sending (which resets the idle timer).
        """
        served = serve(self, "--app", APP, "--header-timeout", "0.4", "--keep-alive-timeout", "0.3")
        client = await self.connect(served)
        start = reactor.seconds()
        for piece in (b"GET /pid HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n", b"X-C: 3\r\n"):
            if client.closed:
                break
            client.send(piece)
            await sleep(0.15)
        await client.wait_closed(timeout=3)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), client.received)
        self.assertLess(reactor.seconds() - start, 1.5)

    async def test_headerTimeoutPerRequest(self) -> None:
        """
        The header timer starts with each request's first byte: time spent
        idle between requests does not count.
        """
        served = serve(self, "--app", APP, "--header-timeout", "0.3", "--keep-alive-timeout", "5")
        client = await self.connect(served)
        await sleep(0.5)
        client.send(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for_responses(1)
        await sleep(0.5)
        client.send(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        responses = await client.wait_for_responses(2)
        self.assertEqual([r.code for r in responses], [200, 200])

    async def test_requestTimeoutBeforeResponse(self) -> None:
        served = serve(self, "--app", APP, "--request-timeout", "0.3")
        response = await served.get("/never")
        self.assertEqual(response.code, 503)
        self.assertIn(b"timed out", response.body)

    async def test_requestTimeoutAfterStart(self) -> None:
        """
        A response that started is cut: the client sees a truncated body.
        """
        served = serve(self, "--app", APP, "--request-timeout", "0.3")
        response = await served.get("/longpoll", allow_partial=True)
        self.assertEqual(response.code, 200)
        self.assertFalse(response.complete)
        self.assertEqual(response.body, b"waiting\n")

    async def test_requestTimeoutOffByDefault(self) -> None:
        served = serve(self, "--app", APP)
        response = await served.get("/slow?0.5")
        self.assertEqual(response.body, b"started\nfinished\n")
