"""
Tests for L{tests.support}, against plain Twisted resources over real sockets.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, List

from zope.interface import implementer

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.support import (
    BodyStream,
    ClosedBeforeMatch,
    ParseError,
    ProcessHandle,
    RawClient,
    RequestTimeout,
    WaitTimeout,
    assert_no_wsgi_warnings,
    check_validator_clean,
    curl_available,
    eventually,
    free_port,
    listen,
    listen_unix,
    parse_response,
    request,
    run_curl,
    sleep,
    spawn,
    twistd_argv,
    validated,
)

# ---------------------------------------------------------------------------
# Plain Twisted resources
# ---------------------------------------------------------------------------


class Fixed(Resource):
    """
    A body returned from render: Site adds Content-Length.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        request.responseHeaders.addRawHeader(b"x-dup", b"one")
        request.responseHeaders.addRawHeader(b"x-dup", b"two")
        return b"0123456789"


class Chunked(Resource):
    """
    Writes without a length: chunked on HTTP/1.1.
    """

    isLeaf = True

    def render(self, request: Request) -> object:
        request.write(b"hello ")
        request.write(b"world")
        request.finish()
        return NOT_DONE_YET


class Echo(Resource):
    """
    Echoes the method and request body.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        return request.method + b" " + request.content.read()


class Slow(Resource):
    """
    Writes C{count} chunks C{interval} seconds apart, cancelling its timer if
    the client goes away.
    """

    isLeaf = True

    def __init__(self, count: int = 5, interval: float = 0.02) -> None:
        super().__init__()
        self.count = count
        self.interval = interval

    def render(self, request: Request) -> object:
        state: dict = {"n": 0, "call": None}

        def tick() -> None:
            request.write(b"tick %d\n" % state["n"])
            state["n"] += 1
            if state["n"] < self.count:
                state["call"] = reactor.callLater(self.interval, tick)
            else:
                state["call"] = None
                request.finish()

        def gone(_: object) -> None:
            if state["call"] is not None and state["call"].active():
                state["call"].cancel()

        request.notifyFinish().addErrback(gone)
        tick()
        return NOT_DONE_YET


class Hang(Resource):
    """
    Never answers.
    """

    isLeaf = True

    def render(self, request: Request) -> object:
        return NOT_DONE_YET


class Abort(Resource):
    """
    Sends part of a Content-Length body, then resets the connection.
    """

    isLeaf = True

    def render(self, request: Request) -> object:
        request.setHeader(b"content-length", b"100")
        request.write(b"partial")
        reactor.callLater(0.01, request.channel.transport.abortConnection)
        return NOT_DONE_YET


class Truncate(Resource):
    """
    Sends part of a Content-Length body, then closes cleanly (FIN).
    """

    isLeaf = True

    def render(self, request: Request) -> object:
        request.setHeader(b"content-length", b"100")
        request.write(b"partial")
        reactor.callLater(0.01, request.channel.transport.loseConnection)
        return NOT_DONE_YET


@implementer(IPushProducer)
class Bulk:
    """
    A push producer writing C{total} bytes to a request as fast as the
    transport lets it, counting flow-control calls.
    """

    def __init__(self, request: Request, total: int, chunk: int = 16384) -> None:
        self.request = request
        self.total = total
        self.data = b"x" * chunk
        self.written = 0
        self.pauses = 0
        self.resumes = 0
        self.paused = False
        self.stopped = False

    def start(self) -> None:
        self.request.setHeader(b"content-length", b"%d" % self.total)
        self.request.registerProducer(self, True)
        self._produce()

    def _produce(self) -> None:
        while not self.paused and not self.stopped and self.written < self.total:
            data = self.data[: self.total - self.written]
            self.written += len(data)
            self.request.write(data)
        if self.written >= self.total and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.resumes += 1
        self.paused = False
        self._produce()

    def stopProducing(self) -> None:
        self.stopped = True


class Large(Resource):
    isLeaf = True

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.producers: List[Bulk] = []

    def render(self, request: Request) -> object:
        producer = Bulk(request, self.total)
        self.producers.append(producer)
        producer.start()
        return NOT_DONE_YET


def tree() -> Resource:
    root = Resource()
    root.putChild(b"fixed", Fixed())
    root.putChild(b"chunked", Chunked())
    root.putChild(b"echo", Echo())
    root.putChild(b"slow", Slow())
    root.putChild(b"hang", Hang())
    root.putChild(b"abort", Abort())
    root.putChild(b"truncate", Truncate())
    return root


GET = b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n"

# ---------------------------------------------------------------------------
# parse_response (unit level)
# ---------------------------------------------------------------------------


class ParseResponseTests(SynchronousTestCase):
    def test_contentLength(self) -> None:
        [r] = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a:  2 \r\n\r\nhello"
        )
        self.assertEqual((r.version, r.code, r.reason), ("HTTP/1.1", 200, "OK"))
        self.assertEqual(r.headers, [("Content-Length", "5"), ("X-A", "1"), ("x-a", "2")])
        self.assertEqual(r.header("x-A"), "1, 2")
        self.assertEqual(r.header_values("X-A"), ["1", "2"])
        self.assertIsNone(r.header("missing"))
        self.assertEqual((r.body, r.framing, r.complete), (b"hello", "content-length", True))

    def test_contentLengthTruncated(self) -> None:
        [r] = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        self.assertEqual((r.body, r.complete), (b"hello", False))

    def test_chunked(self) -> None:
        data = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1;ext=1\r\n \r\nA \r\n0123456789\r\n0\r\nX-T: t\r\n\r\n"
        )
        [r] = parse_response(data)
        self.assertEqual(r.framing, "chunked")
        self.assertTrue(r.complete)
        self.assertEqual(r.body, b"hello 0123456789")
        self.assertEqual(r.chunks, [b"hello", b" ", b"0123456789"])
        self.assertEqual(r.trailers, [("X-T", "t")])
        self.assertEqual(r.raw, data)

    def test_chunkedNoTerminator(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        for tail in (b"", b"0\r\n", b"0\r\n\r", b"3\r\nab"):
            [r] = parse_response(head + tail)
            self.assertFalse(r.complete, tail)
            self.assertEqual(r.chunks, [b"hello"])
        [r] = parse_response(head + b"3\r\nab")
        self.assertEqual(r.body, b"helloab")

    def test_chunkedBadFraming(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.assertRaises(ParseError, parse_response, head + b"5\r\nhelloX\r\n0\r\n\r\n")
        self.assertRaises(ParseError, parse_response, head + b"zz\r\n")

    def test_pipelined(self) -> None:
        data = (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nbc\r\n0\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\n\r\n"
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        rs = parse_response(data)
        self.assertEqual([r.code for r in rs], [200, 404, 204, 200])
        self.assertEqual([r.body for r in rs], [b"a", b"bc", b"", b""])
        self.assertEqual(b"".join(r.raw for r in rs), data)
        self.assertTrue(all(r.complete for r in rs))

    def test_interim(self) -> None:
        data = (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        rs = parse_response(data)
        self.assertEqual([(r.code, r.interim) for r in rs], [(100, True), (103, True), (200, False)])
        self.assertEqual(rs[2].body, b"ok")

    def test_head(self) -> None:
        data = (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        rs = parse_response(data, methods=["HEAD", "GET"])
        self.assertEqual([(r.framing, r.body) for r in rs], [("none", b""), ("content-length", b"ok")])
        self.assertRaises(ParseError, parse_response, data)

    def test_readToClose(self) -> None:
        data = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome body"
        [r] = parse_response(data)
        self.assertEqual((r.framing, r.body, r.complete), ("close", b"some body", True))
        [r] = parse_response(data, eof=False)
        self.assertFalse(r.complete)

    def test_truncatedHeaders(self) -> None:
        data = b"HTTP/1.1 200 OK\r\nContent-Le"
        self.assertEqual(parse_response(data, eof=False), [])
        self.assertRaises(ParseError, parse_response, data)
        self.assertEqual(parse_response(b""), [])

    def test_upgrade(self) -> None:
        [r] = parse_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n\x00\x01")
        self.assertEqual((r.framing, r.body), ("upgrade", b"\x00\x01"))

    def test_strictness(self) -> None:
        for bad in (
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",  # bare LF
            b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\ngarbage",
        ):
            self.assertRaises(ParseError, parse_response, bad)


# ---------------------------------------------------------------------------
# listen / request
# ---------------------------------------------------------------------------


class RequestTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.server = yield listen(self, tree())

    @inlineCallbacks
    def test_contentLength(self):
        r = yield request(self.server, path="/fixed")
        self.assertEqual((r.code, r.phrase, r.body), (200, "OK", b"0123456789"))
        self.assertEqual(r.length, 10)
        self.assertIsNone(r.header("Content-Length"))  # consumed by the Agent
        self.assertEqual(r.header("x-dup"), "one, two")
        self.assertTrue(r.complete)

    @inlineCallbacks
    def test_chunked(self):
        r = yield request(self.server.url("/chunked"))
        self.assertEqual(r.body, b"hello world")
        self.assertIsNone(r.length)

    @inlineCallbacks
    def test_postBytes(self):
        r = yield request(self.server, "POST", "/echo", {"X-A": ["1", "2"]}, b"payload")
        self.assertEqual(r.body, b"POST payload")

    @inlineCallbacks
    def test_postStream(self):
        body = BodyStream()
        d = request(self.server, "PUT", "/echo", [("Content-Type", "x/y")], body)
        body.write(b"early ")
        yield body.started
        body.write(b"late")
        yield sleep(0.01)
        body.finish()
        r = yield d
        self.assertEqual(r.body, b"PUT early late")

    @inlineCallbacks
    def test_slow(self):
        r = yield request(self.server, path="/slow")
        self.assertEqual(r.body, b"".join(b"tick %d\n" % i for i in range(5)))

    @inlineCallbacks
    def test_partial(self):
        r = yield request(self.server, path="/truncate", allow_partial=True)
        self.assertEqual((r.code, r.body, r.complete), (200, b"partial", False))
        self.assertTrue(r.failure.check(ResponseFailed))
        yield self.assertFailure(request(self.server, path="/truncate"), ResponseFailed)

    @inlineCallbacks
    def test_timeout(self):
        start = reactor.seconds()
        yield self.assertFailure(request(self.server, path="/hang", timeout=0.2), RequestTimeout)
        self.assertLess(reactor.seconds() - start, 1)
        yield eventually(lambda: not self.server.connections)

    @inlineCallbacks
    def test_connectionsTracked(self):
        self.assertEqual(self.server.connections, [])
        client = yield RawClient.connect(self.server)
        yield eventually(lambda: len(self.server.connections) == 1)
        self.assertEqual(self.server.accepted, 1)
        self.assertEqual(self.server.channels[0].site, self.server.site)
        yield client.close()
        yield eventually(lambda: not self.server.connections)
        self.assertEqual(len(self.server.lost), 1)

    @inlineCallbacks
    def test_shutdown(self):
        """
        The listen cleanup stops listening and aborts open server connections.
        """
        client = yield RawClient.connect(self.server)
        client.send(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        yield eventually(lambda: self.server.connections)
        host, port = self.server.host, self.server.port
        yield self.server.shutdown()
        self.assertEqual(self.server.connections, [])
        reason = yield client.wait_closed()
        self.assertEqual(reason, "reset")
        yield self.assertFailure(
            RawClient.connect((host, port), testcase=self), ConnectionRefusedError
        )


class UnixTests(TestCase):
    @inlineCallbacks
    def test_unix(self):
        server = yield listen_unix(self, tree())
        self.assertEqual(server.kind, "unix")
        self.assertTrue(os.path.exists(server.unix_path))
        r = yield request(server, path="/fixed")
        self.assertEqual(r.body, b"0123456789")
        client = yield RawClient.connect(server)
        client.send(GET % b"/chunked")
        [resp] = yield client.wait_for_responses(1)
        self.assertEqual((resp.framing, resp.body), ("chunked", b"hello world"))


# ---------------------------------------------------------------------------
# RawClient
# ---------------------------------------------------------------------------


class RawClientTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.server = yield listen(self, tree())

    @inlineCallbacks
    def test_pipelined(self):
        client = yield RawClient.connect(self.server)
        client.send(GET % b"/fixed" + GET % b"/chunked")
        rs = yield client.wait_for_responses(2)
        self.assertEqual([r.body for r in rs], [b"0123456789", b"hello world"])
        self.assertEqual([r.framing for r in rs], ["content-length", "chunked"])
        self.assertEqual(b"".join(r.raw for r in rs), client.received)
        self.assertFalse(client.closed)

    @inlineCallbacks
    def test_expectContinue(self):
        client = yield RawClient.connect(self.server)
        client.send(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        yield client.wait_for(b"100 Continue\r\n\r\n")
        client.send(b"abc")
        rs = yield client.wait_for_responses(1)
        self.assertEqual([(r.code, r.body) for r in rs], [(100, b""), (200, b"POST abc")])

    @inlineCallbacks
    def test_streamingVisible(self):
        client = yield RawClient.connect(self.server)
        client.send(GET % b"/slow")
        yield client.wait_for(b"tick 1\n")
        [partial] = parse_response(client.received, eof=False)
        self.assertFalse(partial.complete)
        self.assertNotIn(b"tick 4", client.received)
        n = len(client.received)
        yield client.wait_for(lambda data: b"tick 3" in data[n:])
        [r] = yield client.wait_for_responses(1)
        self.assertTrue(r.complete)

    @inlineCallbacks
    def test_waitForTimeout(self):
        client = yield RawClient.connect(self.server)
        client.send(GET % b"/fixed")
        yield client.wait_for(b"0123456789")
        e = yield self.assertFailure(client.wait_for(b"never", timeout=0.05), WaitTimeout)
        self.assertIn("b'never'", str(e))
        self.assertIn("0123456789", str(e))
        yield self.assertFailure(client.wait_for(b"0123", after=len(client.received), timeout=0.05), WaitTimeout)

    @inlineCallbacks
    def test_predicateError(self):
        client = yield RawClient.connect(self.server)

        def boom(data: bytes) -> bool:
            raise ZeroDivisionError()

        yield self.assertFailure(client.wait_for(boom), ZeroDivisionError)

    @inlineCallbacks
    def test_closedClean(self):
        client = yield RawClient.connect(self.server)
        d = client.wait_for(b"not coming")
        client.send(b"GET /fixed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reason = yield client.wait_closed()
        self.assertEqual(reason, "clean")
        self.assertEqual(client.closed_reason, "clean")
        e = yield self.assertFailure(d, ClosedBeforeMatch)
        self.assertIn("0123456789", str(e))
        [r] = parse_response(client.received)
        self.assertEqual(r.body, b"0123456789")
        yield self.assertFailure(client.wait_for(b"zzz"), ClosedBeforeMatch)

    @inlineCallbacks
    def test_closedTruncated(self):
        """
        A clean close in the middle of a body: 'clean', but the parsed
        response is incomplete.
        """
        client = yield RawClient.connect(self.server)
        client.send(GET % b"/truncate")
        self.assertEqual((yield client.wait_closed()), "clean")
        [r] = parse_response(client.received)
        self.assertEqual((r.body, r.complete), (b"partial", False))

    @inlineCallbacks
    def test_closedReset(self):
        client = yield RawClient.connect(self.server)
        client.send(GET % b"/abort")
        self.assertEqual((yield client.wait_closed()), "reset")
        [r] = parse_response(client.received)
        self.assertEqual((r.body, r.complete), (b"partial", False))

    @inlineCallbacks
    def test_clientAbort(self):
        client = yield RawClient.connect(self.server)
        yield eventually(lambda: self.server.connections)
        self.assertEqual((yield client.abort()), "aborted")
        yield eventually(lambda: not self.server.connections)
        yield self.assertFailure(client.wait_closed(timeout=0.01).addCallback(lambda r: 1 / 0), ZeroDivisionError)

    @inlineCallbacks
    def test_waitClosedTimeout(self):
        client = yield RawClient.connect(self.server)
        e = yield self.assertFailure(client.wait_closed(timeout=0.05), WaitTimeout)
        self.assertIn("still open", str(e))

    @inlineCallbacks
    def test_backpressure(self):
        """
        A paused reader with a small receive buffer makes the server's
        transport pause the request's producer, and keeps it paused.
        """
        total = 4 * 1024 * 1024
        large = Large(total)
        server = yield listen(self, large, sndbuf=16384)
        client = yield RawClient.connect(server, rcvbuf=4096)
        client.pause_reading()
        client.send(GET % b"/")
        yield eventually(lambda: large.producers and large.producers[0].paused)
        producer = large.producers[0]
        yield sleep(0.1)
        self.assertTrue(producer.paused)
        self.assertGreaterEqual(producer.pauses, 1)
        self.assertLess(producer.written, total // 4)
        self.assertLess(len(client.received), 1024 * 1024)
        client.resume_reading()
        yield client.wait_for_length(total, timeout=10)
        [r] = yield client.wait_for_responses(1)
        self.assertEqual(len(r.body), total)
        self.assertTrue(r.complete)
        self.assertGreaterEqual(producer.resumes, 1)


# ---------------------------------------------------------------------------
# Processes and curl
# ---------------------------------------------------------------------------


class ProcessTests(TestCase):
    @inlineCallbacks
    def test_spawn(self):
        code, out, err = yield spawn(
            [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper()); "
             "sys.stderr.write('e'); sys.exit(3)"],
            stdin=b"abc",
        )
        self.assertEqual((code, out, err), (3, b"ABC", b"e"))

    @inlineCallbacks
    def test_spawnEnvPath(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, tmp)
        code, out, _ = yield spawn(
            [sys.executable, "-c", "import os; print(os.getcwd(), os.environ['SUPPORT_X'])"],
            env={**os.environ, "SUPPORT_X": "y"},
            path=tmp,
        )
        self.assertEqual(out.split(), [os.path.realpath(tmp).encode(), b"y"])

    @inlineCallbacks
    def test_spawnTimeout(self):
        e = yield self.assertFailure(
            spawn([sys.executable, "-c", "print('hi', flush=True); import time; time.sleep(30)"], timeout=0.5),
            WaitTimeout,
        )
        self.assertIn("hi", str(e))

    @inlineCallbacks
    def test_processHandle(self):
        proc = ProcessHandle.start(
            self,
            [sys.executable, "-u", "-c", "import sys, time\nprint('ready')\n"
             "for line in sys.stdin: print('got', line.strip())"],
        )
        yield proc.wait_for_output(b"ready\n")
        proc.write(b"one\n")
        yield proc.wait_for_output(b"got one")
        self.assertTrue(proc.running)
        code = yield proc.terminate()
        self.assertEqual(code, -15)
        self.assertFalse(proc.running)
        yield self.assertFailure(proc.wait_for_output(b"nope"), ClosedBeforeMatch)

    @inlineCallbacks
    def test_processExit(self):
        proc = ProcessHandle.start(self, [sys.executable, "-c", "print('bye')"])
        d = proc.wait_for_output(b"never")
        self.assertEqual((yield proc.wait_exit()), 0)
        yield self.assertFailure(d, ClosedBeforeMatch)
        self.assertEqual(proc.out, b"bye\n")

    @inlineCallbacks
    def test_twistd(self):
        """
        A real twistd, on a port from free_port, reached with request().
        """
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        with open(os.path.join(tmp, "hello.txt"), "wb") as f:
            f.write(b"from twistd")
        port = free_port()
        proc = ProcessHandle.start(
            self,
            twistd_argv("-n", "--pidfile=", "web", "--listen",
                        f"tcp:{port}:interface=127.0.0.1", "--path", tmp),
            path=tmp,
        )
        yield proc.wait_for_output(b"Starting factory", timeout=15)
        r = yield request(f"http://127.0.0.1:{port}/hello.txt")
        self.assertEqual(r.body, b"from twistd")
        # twistd re-raises SIGTERM after its clean shutdown
        self.assertEqual((yield proc.terminate()), -15)
        self.assertIn(b"Server Shut Down.", proc.output)


class CurlTests(TestCase):
    def setUp(self):
        if not curl_available():
            raise SkipTest("curl not installed")

    @inlineCallbacks
    def test_fetch(self):
        server = yield listen(self, tree())
        code, out, err = yield run_curl(["-i", server.url("/fixed")])
        self.assertEqual(code, 0, err)
        [r] = parse_response(out)
        self.assertEqual((r.code, r.body), (200, b"0123456789"))

    @inlineCallbacks
    def test_streaming(self):
        server = yield listen(self, tree())
        code, out, err = yield run_curl(["-N", server.url("/slow")])
        self.assertEqual((code, out), (0, b"".join(b"tick %d\n" % i for i in range(5))))

    @inlineCallbacks
    def test_unix(self):
        server = yield listen_unix(self, tree())
        code, out, err = yield run_curl(server.curl_args("/chunked"))
        self.assertEqual((code, out), (0, b"hello world"), err)

    @inlineCallbacks
    def test_failure(self):
        code, out, err = yield run_curl([f"http://127.0.0.1:{free_port()}/"])
        self.assertEqual(code, 7)
        self.assertIn(b"onnect", err)


# ---------------------------------------------------------------------------
# eventually / sleep / free_port / validator
# ---------------------------------------------------------------------------


class MiscTests(TestCase):
    @inlineCallbacks
    def test_eventually(self):
        box: List[int] = []
        reactor.callLater(0.02, box.append, 1)
        self.assertEqual((yield eventually(lambda: box)), [1])

    @inlineCallbacks
    def test_eventuallyAssertion(self):
        def check() -> bool:
            assert False, "still 42"

        e = yield self.assertFailure(eventually(check, timeout=0.05), WaitTimeout)
        self.assertIn("still 42", str(e))

    @inlineCallbacks
    def test_sleep(self):
        start = reactor.seconds()
        yield sleep(0.05)
        self.assertGreaterEqual(reactor.seconds() - start, 0.04)

    def test_freePort(self):
        port = free_port()
        self.assertTrue(0 < port < 65536)


def _environ() -> dict:
    import io

    return {
        "REQUEST_METHOD": "GET", "SERVER_NAME": "x", "SERVER_PORT": "80",
        "QUERY_STRING": "", "SCRIPT_NAME": "", "PATH_INFO": "/",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }


class ValidatorTests(TestCase):
    def test_clean(self):
        validation = assert_no_wsgi_warnings(self)

        def app(environ: dict, start_response: Any) -> List[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        it = validated(app)(_environ(), lambda s, h, e=None: None)
        self.assertEqual(list(it), [b"ok"])
        it.close()
        validation.check()

    def test_warning(self):
        def app(environ: dict, start_response: Any) -> List[bytes]:
            start_response("200", [("Content-Type", "text/plain")])
            return [b"ok"]

        it = validated(app)(_environ(), lambda s, h, e=None: None)
        list(it)
        it.close()
        e = self.assertRaises(self.failureException, check_validator_clean, self)
        self.assertIn("status string", str(e))
        check_validator_clean(self)  # reported once

    def test_unclosed(self):
        validation = assert_no_wsgi_warnings(self)

        def app(environ: dict, start_response: Any) -> List[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        it = validated(app)(_environ(), lambda s, h, e=None: None)
        list(it)
        del it
        e = self.assertRaises(self.failureException, validation.check)
        self.assertIn("without being closed", str(e))
