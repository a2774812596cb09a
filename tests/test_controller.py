"""
Tests for Eby's controller (L{txawsgi.controller}), end to end over real TCP
connections on 127.0.0.1: streaming with C{put}/C{finish}, reading the body
with C{on_get}, thread safety, misuse, middleware, disconnects, output
backpressure, fairness and threadpool mode.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.python.threadable import isInIOThread
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, TestCase

import txawsgi.response
from txawsgi import AWSGIResource
from txawsgi.controller import HIGH_WATER, Controller
from txawsgi.errors import (
    AlreadyFinished,
    ClientDisconnected,
    ControllerError,
    GetPending,
    InputReplaced,
    InvalidBody,
    WrongEnviron,
)

from ._streaming import start_pool
from .support import (
    BodyStream,
    ProcessHandle,
    RawClient,
    curl_available,
    eventually,
    listen,
    parse_response,
    request,
    sleep,
)

GET = b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n"
TERMINATOR = b"\r\n0\r\n\r\n"
MiB = 1024 * 1024


def get(path: bytes = b"/") -> bytes:
    return GET % path


class Exchange:
    """
    One request as a controller app saw it.
    """

    def __init__(self, environ: Dict[str, Any], ctrl: Controller) -> None:
        self.environ = environ
        self.ctrl = ctrl
        self.closes: List[Optional[BaseException]] = []
        self.record: Dict[str, Any] = {}


class Hub:
    """
    A controller application that records each exchange for the test to
    drive; C{setup(exchange)} runs inside the application call.

    Requests for C{/hello} get a plain C{b"hello"} response.
    """

    def __init__(
        self,
        setup: Optional[Callable[[Exchange], Any]] = None,
        headers: Optional[List[tuple]] = None,
        track_close: bool = True,
    ) -> None:
        self.setup = setup
        self.headers = headers or [("Content-Type", "text/plain")]
        self.track_close = track_close
        self.exchanges: List[Exchange] = []

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["PATH_INFO"] == "/hello":
            start_response("200 OK", [("Content-Length", "5")])
            return [b"hello"]
        start_response("200 OK", list(self.headers))
        ctrl = environ["awsgi.controller"](environ)
        exchange = Exchange(environ, ctrl)
        if self.track_close:
            ctrl.on_close(exchange.closes.append)
        self.exchanges.append(exchange)
        if self.setup is not None:
            self.setup(exchange)
        return ctrl

    def wait(self, n: int = 1, timeout: float = 5) -> Deferred[Any]:
        return eventually(lambda: len(self.exchanges) >= n, timeout=timeout)


def block(i: int, size: int = 64 * 1024) -> bytes:
    """
    A deterministic, incompressible-looking block of C{size} bytes number
    C{i}.
    """
    seed = hashlib.sha256(b"%d" % i).digest()
    return (seed * (size // len(seed) + 1))[:size]


class ServerMixin:
    """
    Serve an application on a real socket for the duration of a test.
    """

    #: Serve with an L{AWSGISite} (request bodies dispatched at headers
    #: time) instead of a plain L{Site}, with these resource options.
    awsgi_site = False
    resource_options: Dict[str, Any] = {}

    def serve(self, app: Any, threadpool: Optional[ThreadPool] = None, **kw: Any) -> Deferred[Any]:
        resource = AWSGIResource(reactor, app, threadpool, **self.resource_options)
        if self.awsgi_site:
            from txawsgi.site import AWSGISite

            return listen(self, AWSGISite(resource), **kw)  # type: ignore[arg-type]
        return listen(self, resource, **kw)  # type: ignore[arg-type]

    @inlineCallbacks
    def first_exchange(
        self, hub: Hub, app: Any = None, data: bytes = GET % b"/", threadpool: Optional[ThreadPool] = None
    ) -> Any:
        """
        Serve C{app} (C{hub} itself by default), connect and send C{data};
        once C{hub} has the request: C{(server, client, exchange)}.
        """
        server = yield self.serve(hub if app is None else app, threadpool)
        client = yield RawClient.connect(server)
        client.send(data)
        yield hub.wait()
        return server, client, hub.exchanges[0]

    @inlineCallbacks
    def assertServing(self, server: Any) -> Any:
        """
        The server still answers a plain request.
        """
        response = yield request(server, "GET", "/hello", timeout=5)
        self.assertEqual((response.code, response.body), (200, b"hello"))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# put / finish
# ---------------------------------------------------------------------------


class StreamingTests(ServerMixin, TestCase):
    """
    C{put} chunks reach the client as they are put; C{finish} ends the
    response.
    """

    @inlineCallbacks
    def test_controllerIsTheIterable(self) -> Any:
        seen: Dict[str, Any] = {}

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [])
            factory = environ["awsgi.controller"]
            ctrl = factory(environ)
            seen["again"] = factory(environ)
            seen["copy"] = factory(dict(environ))
            seen["ctrl"] = ctrl
            seen["reactor"] = environ["awsgi.reactor"]
            ctrl.put(b"body")
            ctrl.finish()
            return ctrl

        server = yield self.serve(app)
        response = yield request(server)
        self.assertEqual(response.body, b"body")
        self.assertIs(seen["again"], seen["ctrl"])
        self.assertIs(seen["copy"], seen["ctrl"])
        self.assertIs(seen["reactor"], reactor)
        self.assertIs(iter(seen["ctrl"]), seen["ctrl"])

    @inlineCallbacks
    def test_putArrivesBeforeNextPut(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        ctrl = ex.ctrl
        yield sleep(0.05)
        # Headers are held until the first chunk.
        self.assertEqual(client.received, b"")
        self.assertTrue(ctrl.put(b"chunk-one"))
        yield client.wait_for(b"chunk-one")
        self.assertNotIn(b"chunk-two", client.received)
        self.assertNotIn(b"0\r\n\r\n", client.received)
        ctrl.put(b"chunk-two")
        yield client.wait_for(b"chunk-two")
        self.assertNotIn(TERMINATOR, client.received)
        ctrl.put(b"chunk-three")
        ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.framing, "chunked")
        self.assertTrue(response.complete)
        self.assertEqual(response.chunks, [b"chunk-one", b"chunk-two", b"chunk-three"])
        self.assertTrue(client.received.endswith(b"\r\n0\r\n\r\n"))
        yield eventually(lambda: hub.exchanges[0].closes == [None])
        self.assertTrue(ctrl.closed)

    @inlineCallbacks
    def test_putAnswerMatchesWritable(self) -> Any:
        """
        C{put()} answers whether more may be put, like C{writable} after it:
        True below the high-water mark, False once it is reached.
        """
        answers: List[Any] = []

        def setup(ex: Exchange) -> None:
            ctrl = ex.ctrl
            half = b"x" * (HIGH_WATER // 2 - 1)
            answers.append((ctrl.writable, ctrl.put(half), ctrl.writable))
            answers.append((ctrl.put(half), ctrl.writable))
            answers.append((ctrl.put(b"xx"), ctrl.writable))
            ctrl.finish()

        server = yield self.serve(Hub(setup=setup))
        response = yield request(server)
        self.assertEqual(len(response.body), HIGH_WATER)
        self.assertEqual(answers, [(True, True, True), (True, True), (False, False)])

    @inlineCallbacks
    def test_finishWithoutBody(self) -> Any:
        hub = Hub(setup=lambda ex: ex.ctrl.finish())
        server = yield self.serve(hub)
        response = yield request(server)
        self.assertEqual((response.code, response.body), (200, b""))

    @inlineCallbacks
    def test_putsCoalesceWhileBusy(self) -> Any:
        """
        Puts made in one reactor turn all arrive, in order.
        """
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        ctrl = ex.ctrl
        for i in range(100):
            ctrl.put(b"<%d>" % i)
        ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"".join(b"<%d>" % i for i in range(100)))

    @inlineCallbacks
    def test_keepAlive(self) -> Any:
        """
        Two controller responses on one persistent connection.
        """
        hub = Hub()
        server = yield self.serve(hub)
        client = yield RawClient.connect(server)
        for n in (1, 2):
            client.send(get())
            yield hub.wait(n)
            ctrl = hub.exchanges[-1].ctrl
            ctrl.put(b"response %d" % n)
            ctrl.finish()
            responses = yield client.wait_for_responses(n)
            self.assertEqual(responses[-1].body, b"response %d" % n)
        self.assertEqual(server.accepted, 1)

    @inlineCallbacks
    def test_curlStreaming(self) -> Any:
        """
        C{curl -N} prints each chunk as soon as it is put.
        """
        if not curl_available():
            raise SkipTest("curl is not installed")
        hub = Hub()
        server = yield self.serve(hub)
        curl = ProcessHandle.start(
            self, ["curl", "-q", "--noproxy", "*", "-sS", "-N", server.url("/stream")]
        )
        yield hub.wait(timeout=10)
        ctrl = hub.exchanges[0].ctrl
        ctrl.put(b"first line\n")
        yield curl.wait_for_output(b"first line\n", timeout=10)
        self.assertNotIn(b"second", curl.output)
        ctrl.put(b"second line\n")
        yield curl.wait_for_output(b"second line\n", timeout=10)
        self.assertTrue(curl.running)
        ctrl.finish()
        code = yield curl.wait_exit(timeout=10)
        self.assertEqual(code, 0, curl.err)
        self.assertEqual(curl.out, b"first line\nsecond line\n")


# ---------------------------------------------------------------------------
# on_get
# ---------------------------------------------------------------------------


class BodyReader:
    """
    Reads the request body with C{on_get(length, ...)}, recording every
    delivery, then answers with the body's size and SHA-256.

    @param thread: call C{on_get} (and C{put}/C{finish}) from a new
        L{threading.Thread} each time instead of the reactor thread.
    """

    def __init__(self, length: int = 1000, thread: bool = False) -> None:
        self.length = length
        self.thread = thread
        self.deliveries: List[Dict[str, Any]] = []
        self.returned = False
        self.errors: List[BaseException] = []

    def __call__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.parts: List[bytes] = []
        self.ask()

    def _run(self, f: Callable[[], Any]) -> None:
        if self.thread:
            threading.Thread(target=f).start()
        else:
            f()

    def ask(self) -> None:
        def call() -> None:
            self.returned = False
            self.exchange.ctrl.on_get(self.length, self.got)
            self.returned = True

        self._run(call)

    def got(self, data: bytes) -> None:
        self.deliveries.append(
            {"size": len(data), "returned": self.returned, "io": isInIOThread(), "type": type(data)}
        )
        if data:
            self.parts.append(data)
            self.ask()
            return
        body = b"".join(self.parts)

        def answer() -> None:
            ctrl = self.exchange.ctrl
            ctrl.put(b"%d " % len(body))
            ctrl.put(hashlib.sha256(body).hexdigest().encode())
            ctrl.finish()

        self._run(answer)

    def check(self, testcase: TestCase, body: bytes, response: Any) -> None:
        testcase.assertEqual(response.code, 200)
        testcase.assertEqual(
            response.body, b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
        )
        sizes = [d["size"] for d in self.deliveries]
        # 1..length bytes each, then exactly one b'' at the end.
        testcase.assertEqual(sizes[-1], 0)
        testcase.assertTrue(all(1 <= s <= self.length for s in sizes[:-1]), sizes)
        testcase.assertEqual(sum(sizes), len(body))
        testcase.assertTrue(all(d["io"] for d in self.deliveries), "callback outside the reactor thread")
        testcase.assertTrue(all(d["type"] is bytes for d in self.deliveries))
        if not self.thread:
            # Never called synchronously inside on_get().
            testcase.assertTrue(all(d["returned"] for d in self.deliveries))


class OnGetTests(ServerMixin, TestCase):
    """
    C{on_get(length, callback)}: one-shot, 1..length bytes, C{b''} at the
    end, never re-entrant.
    """

    BODY = os.urandom(100_000)

    @inlineCallbacks
    def test_contentLength(self) -> Any:
        reader = BodyReader(length=1000)
        server = yield self.serve(Hub(setup=reader))
        response = yield request(server, "POST", "/upload", body=self.BODY)
        reader.check(self, self.BODY, response)
        self.assertGreaterEqual(len(reader.deliveries), 101)

    @inlineCallbacks
    def test_chunkedBody(self) -> Any:
        reader = BodyReader(length=4096)
        server = yield self.serve(Hub(setup=reader))
        body = BodyStream()
        responding = request(server, "POST", "/upload", body=body)
        yield body.started
        for i in range(0, len(self.BODY), 7000):
            body.write(self.BODY[i : i + 7000])
        body.finish()
        response = yield responding
        reader.check(self, self.BODY, response)

    @inlineCallbacks
    def test_chunkedBodyRaw(self) -> Any:
        """
        A chunked upload written byte-exactly on a raw connection.
        """
        reader = BodyReader(length=10)
        server = yield self.serve(Hub(setup=reader))
        client = yield RawClient.connect(server)
        client.send(
            b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
        )
        [response] = yield client.wait_for_responses(1)
        body = b"hello world"
        self.assertEqual(response.body, b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode()))
        self.assertEqual([d["size"] for d in reader.deliveries], [10, 1, 0])

    @inlineCallbacks
    def test_emptyBody(self) -> Any:
        reader = BodyReader()
        server = yield self.serve(Hub(setup=reader))
        response = yield request(server, "POST", "/", body=b"")
        reader.check(self, b"", response)
        self.assertEqual([d["size"] for d in reader.deliveries], [0])

    @inlineCallbacks
    def test_startResponseAfterReadingBody(self) -> Any:
        """
        The app may return the controller first and call C{start_response}
        from a callback, once it knows the status.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            parts: List[bytes] = []

            def got(data: bytes) -> None:
                if data:
                    parts.append(data)
                    ctrl.on_get(1 << 16, got)
                    return
                start_response("201 Created", [("X-Size", str(len(b"".join(parts))))])
                ctrl.put(b"created")
                ctrl.finish()

            ctrl.on_get(1 << 16, got)
            return ctrl

        server = yield self.serve(app)
        response = yield request(server, "POST", "/", body=self.BODY)
        self.assertEqual(response.code, 201)
        self.assertEqual(response.header("X-Size"), str(len(self.BODY)))
        self.assertEqual(response.body, b"created")

    @inlineCallbacks
    def test_oneShot(self) -> Any:
        """
        Each C{on_get} calls back exactly once, even if the app does not ask
        again; after the end, asking again gives C{b''} again.
        """
        calls: List[bytes] = []

        def setup(exchange: Exchange) -> None:
            ctrl = exchange.ctrl

            def first(data: bytes) -> None:
                calls.append(data)
                reactor.callLater(0.05, ctrl.on_get, 100, second)

            def second(data: bytes) -> None:
                calls.append(data)
                reactor.callLater(0.05, ctrl.on_get, 100, third)

            def third(data: bytes) -> None:
                calls.append(data)
                ctrl.put(b"|".join(calls))
                ctrl.finish()

            ctrl.on_get(3, first)

        server = yield self.serve(Hub(setup=setup))
        response = yield request(server, "POST", "/", body=b"abcdef")
        self.assertEqual(response.body, b"abc|def|")
        self.assertEqual(calls, [b"abc", b"def", b""])

    @inlineCallbacks
    def test_sharesPositionWithWsgiInput(self) -> Any:
        """
        C{wsgi.input} reads and C{on_get} deliveries share one position.
        """

        def setup(exchange: Exchange) -> None:
            head = exchange.environ["wsgi.input"].read(4)

            def got(data: bytes) -> None:
                exchange.ctrl.put(head + b"/" + data)
                exchange.ctrl.finish()

            exchange.ctrl.on_get(100, got)

        server = yield self.serve(Hub(setup=setup))
        response = yield request(server, "POST", "/", body=b"0123456789")
        self.assertEqual(response.body, b"0123/456789")


class StreamedOnGetTests(OnGetTests):
    """
    The same under an L{AWSGISite} with C{stream_input=True}: the body
    reaches C{on_get} as it arrives.
    """

    awsgi_site = True
    resource_options = {"stream_input": True}

    def test_sharesPositionWithWsgiInput(self) -> None:
        raise SkipTest("a blocking wsgi.input read in the reactor thread would raise WouldBlock")

    @inlineCallbacks
    def test_deliveredAsItArrives(self) -> Any:
        """
        With a streamed body, C{on_get} gets the first part before the client
        has sent the rest.
        """
        got: List[bytes] = []

        def setup(exchange: Exchange) -> None:
            def cb(data: bytes) -> None:
                got.append(data)
                if data:
                    exchange.ctrl.on_get(100, cb)
                else:
                    exchange.ctrl.put(b"+".join(got))
                    exchange.ctrl.finish()

            exchange.ctrl.on_get(100, cb)

        server = yield self.serve(Hub(setup=setup))
        client = yield RawClient.connect(server)
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nfirst")
        yield eventually(lambda: got == [b"first"])
        client.send(b"later")
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"first+later+")


class ThreadSafetyTests(ServerMixin, TestCase):
    """
    C{put}, C{finish} and C{on_get} from non-reactor threads; callbacks run
    in the reactor thread.
    """

    @inlineCallbacks
    def test_onGetAndPutFromThreads(self) -> Any:
        reader = BodyReader(length=3000, thread=True)
        server = yield self.serve(Hub(setup=reader))
        body = os.urandom(50_000)
        response = yield request(server, "POST", "/", body=body)
        reader.check(self, body, response)

    @inlineCallbacks
    def test_putFromCallInThread(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        results: List[Any] = []
        drained: List[bool] = []

        def work() -> None:
            results.append(isInIOThread())
            for i in range(200):
                results.append(ex.ctrl.put(b"%04d," % i))
            ex.ctrl.on_drain(lambda: drained.append(isInIOThread()))
            ex.ctrl.finish()

        yield deferToThread(work)
        [response] = yield client.wait_for_responses(1)
        self.assertFalse(results[0])
        self.assertEqual(response.body, b"".join(b"%04d," % i for i in range(200)))
        yield eventually(lambda: ex.closes == [None])
        # Due while the exchange was open, the drain callback runs (in the
        # reactor thread) unless the exchange ended first: no callback runs
        # after on_close.
        self.assertIn(drained, ([True], []))

    @inlineCallbacks
    def test_threadPutsCountAtOnce(self) -> Any:
        """
        A thread putting while the reactor is busy sees its own puts count
        against the high-water mark at once: C{put()} turns False after
        64 KiB, not after whatever the thread manages before the reactor
        catches up.
        """
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        ctrl = ex.ctrl
        answers: List[Any] = []
        piece = b"x" * 8192

        def putter() -> None:
            for i in range(20):
                answers.append((ctrl.put(piece), ctrl.writable))

        thread = threading.Thread(target=putter)
        thread.start()
        # Keep the reactor busy: nothing the thread put is queued meanwhile.
        thread.join()
        self.assertEqual(answers, [(True, True)] * 7 + [(False, False)] * 13)
        ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, piece * 20)
        self.assertEqual(ctrl._queued, 0)

    @inlineCallbacks
    def test_concurrentPutters(self) -> Any:
        """
        Four threads putting at once: nothing lost, each thread's order kept.
        """
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        ctrl = ex.ctrl

        def putter(name: bytes) -> None:
            for i in range(500):
                ctrl.put(b"%s%d;" % (name, i))

        threads = [threading.Thread(target=putter, args=(n,)) for n in (b"a", b"b", b"c", b"d")]
        for t in threads:
            t.start()
        yield eventually(lambda: not any(t.is_alive() for t in threads))
        ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        items = response.body.split(b";")[:-1]
        self.assertEqual(len(items), 2000)
        for name in (b"a", b"b", b"c", b"d"):
            self.assertEqual([int(x[1:]) for x in items if x[:1] == name], list(range(500)))

    @inlineCallbacks
    def test_onCloseFromThread(self) -> Any:
        hub = Hub(track_close=False)
        server, client, ex = yield self.first_exchange(hub)
        ctrl = ex.ctrl
        closes: List[Any] = []
        yield deferToThread(ctrl.on_close, lambda reason: closes.append((reason, isInIOThread())))
        ctrl.put(b"x")
        ctrl.finish()
        yield client.wait_for_responses(1)
        yield eventually(lambda: closes == [(None, True)])


# ---------------------------------------------------------------------------
# Misuse
# ---------------------------------------------------------------------------


class MisuseTests(ServerMixin, TestCase):
    """
    Misuse raises a precise L{txawsgi.errors} exception at the call, and the
    server keeps serving.
    """

    @inlineCallbacks
    def run_app(self, misuse: Callable[[Exchange], Any], body: Optional[bytes] = None, middleware: Any = None) -> Any:
        """
        Serve a controller app that calls C{misuse(exchange)} and answers
        with the name of the exception it raised; return that name.
        """

        def setup(exchange: Exchange) -> None:
            try:
                misuse(exchange)
            except Exception as e:
                exchange.record["raised"] = e
                name = type(e).__name__
            else:
                name = "nothing"
            if not exchange.ctrl._finish_called:
                exchange.ctrl.put(name.encode())
                exchange.ctrl.finish()

        hub = Hub(setup=setup)
        app = middleware(hub) if middleware is not None else hub
        server = yield self.serve(app)
        if body is None:
            response = yield request(server)
        else:
            response = yield request(server, "POST", "/", body=body)
        self.assertEqual(response.code, 200)
        yield self.assertServing(server)
        self.assertEqual(self.flushLoggedErrors(), [])
        return hub.exchanges[0].record.get("raised")

    @inlineCallbacks
    def test_putAfterFinish(self) -> Any:
        def misuse(ex: Exchange) -> None:
            ex.ctrl.put(b"ok")
            ex.ctrl.finish()
            ex.ctrl.put(b"late")

        raised = yield self.run_app(misuse)
        self.assertIsInstance(raised, AlreadyFinished)
        self.assertIsInstance(raised, ControllerError)

    @inlineCallbacks
    def test_putEmptyAfterFinish(self) -> Any:
        def misuse(ex: Exchange) -> None:
            ex.ctrl.finish()
            ex.ctrl.put(b"")

        raised = yield self.run_app(misuse)
        self.assertIsInstance(raised, AlreadyFinished)

    @inlineCallbacks
    def test_finishTwice(self) -> Any:
        def misuse(ex: Exchange) -> None:
            ex.ctrl.finish()
            ex.ctrl.finish()

        raised = yield self.run_app(misuse)
        self.assertIsInstance(raised, AlreadyFinished)
        self.assertIn("twice", str(raised))

    @inlineCallbacks
    def test_putNonBytes(self) -> Any:
        for bad in ("text", bytearray(b"x"), memoryview(b"x"), None, 42, [b"x"]):

            def misuse(ex: Exchange, bad: Any = bad) -> None:
                ex.ctrl.put(bad)

            raised = yield self.run_app(misuse)
            self.assertIsInstance(raised, InvalidBody, repr(bad))
            self.assertIsInstance(raised, TypeError)
            self.assertIn(type(bad).__name__, str(raised))

    @inlineCallbacks
    def test_onGetWhilePending(self) -> Any:
        def misuse(ex: Exchange) -> None:
            ex.ctrl.on_get(10, lambda data: None)
            ex.ctrl.on_get(10, lambda data: None)

        raised = yield self.run_app(misuse, body=b"abc")
        self.assertIsInstance(raised, GetPending)

    def on_get_behind(self, replace: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Deferred[Any]:
        """
        What C{on_get} raises behind middleware that hands the application
        C{replace(environ)}.
        """

        def replacing(app: Any) -> Any:
            return lambda environ, start_response: app(replace(environ), start_response)

        def misuse(ex: Exchange) -> None:
            ex.ctrl.on_get(10, lambda data: None)

        return self.run_app(misuse, body=b"original", middleware=replacing)

    @inlineCallbacks
    def test_onGetAfterInputReplaced(self) -> Any:
        def replace(environ: Dict[str, Any]) -> Dict[str, Any]:
            environ["wsgi.input"] = io.BytesIO(b"replaced")
            return environ

        raised = yield self.on_get_behind(replace)
        self.assertIsInstance(raised, InputReplaced)

    @inlineCallbacks
    def test_onGetAfterInputReplacedInCopy(self) -> Any:
        """
        Middleware that copies the environ and replaces C{wsgi.input} in the
        copy: the controller made from the copy refuses C{on_get}.
        """
        raised = yield self.on_get_behind(lambda environ: dict(environ, **{"wsgi.input": io.BytesIO(b"replaced")}))
        self.assertIsInstance(raised, InputReplaced)

    @inlineCallbacks
    def test_wrongEnviron(self) -> Any:
        others: List[Dict[str, Any]] = []

        def misuse(ex: Exchange) -> None:
            factory = ex.environ["awsgi.controller"]
            errors = []
            for foreign in ({}, dict(ex.environ, **{"awsgi.controller": lambda e: None}), None, "environ", *others):
                try:
                    factory(foreign)
                except WrongEnviron as e:
                    errors.append(e)
            others.append(ex.environ)
            if len(errors) != 4 + len(others) - 1:
                raise AssertionError(f"only {len(errors)} WrongEnviron")
            raise errors[-1]

        raised = yield self.run_app(misuse)
        self.assertIsInstance(raised, WrongEnviron)
        # A second request's factory refuses the first request's environ.
        raised = yield self.run_app(misuse)
        self.assertIsInstance(raised, WrongEnviron)

    @inlineCallbacks
    def test_onGetBadLength(self) -> Any:
        for bad in (0, -1, 1.5, "10", None, True):

            def misuse(ex: Exchange, bad: Any = bad) -> None:
                ex.ctrl.on_get(bad, lambda data: None)

            raised = yield self.run_app(misuse, body=b"abc")
            self.assertIsInstance(raised, ValueError, repr(bad))
            self.assertIn("length", str(raised))

    @inlineCallbacks
    def test_misuseFromReactorCallback(self) -> Any:
        """
        Misuse outside the application call (in a reactor callback) raises
        there too, and leaves the response intact.
        """
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        ctrl = ex.ctrl
        ctrl.put(b"fine")
        ctrl.finish()
        self.assertRaises(AlreadyFinished, ctrl.put, b"x")
        self.assertRaises(AlreadyFinished, ctrl.finish)
        self.assertRaises(InvalidBody, ctrl.put, "x")
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"fine")
        yield self.assertServing(server)


# ---------------------------------------------------------------------------
# Middleware
# ---------------------------------------------------------------------------


def upper(app: Any, counter: Optional[List[int]] = None) -> Any:
    """
    A generator middleware that upper-cases the body.
    """

    def middleware(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
        body = app(environ, start_response)
        try:
            for chunk in body:
                if counter is not None:
                    counter[0] += 1
                yield chunk.upper()
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return middleware


def buffering(app: Any) -> Any:
    """
    A middleware that collects the whole body (yielding C{b''} meanwhile),
    then sends it reversed with a Content-Length.
    """

    def middleware(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
        held: Dict[str, Any] = {}

        def capture(status: str, headers: List[tuple], exc_info: Any = None) -> Any:
            held["status"], held["headers"] = status, headers
            return lambda data: None

        body = app(environ, capture)
        parts = []
        try:
            for chunk in body:
                parts.append(chunk)
                yield b""
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        data = b"".join(parts)[::-1]
        start_response(held["status"], held["headers"] + [("Content-Length", str(len(data)))])
        yield data

    return middleware


class MiddlewareTests(ServerMixin, TestCase):
    """
    Middleware that wraps the controller's iterable still works, and the
    engine sleeps on the controller through it instead of polling.
    """

    @inlineCallbacks
    def test_generatorMiddleware(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub, upper(hub))
        ctrl = ex.ctrl
        ctrl.put(b"hello ")
        yield client.wait_for(b"HELLO ")
        ctrl.put(b"world")
        ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"HELLO WORLD")

    @inlineCallbacks
    def test_bufferingMiddleware(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub, buffering(hub))
        ctrl = ex.ctrl
        ctrl.put(b"abc")
        yield sleep(0.05)
        ctrl.put(b"def")
        yield sleep(0.05)
        self.assertEqual(client.received, b"")
        ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"fedcba")
        self.assertEqual(response.header("Content-Length"), "6")

    @inlineCallbacks
    def test_noPollingBehindMiddleware(self) -> Any:
        """
        200 requests wait on idle controllers behind a generator middleware
        and a buffering one: over 1 s the middleware is not pulled at all
        and the process uses almost no CPU; a broadcast then answers all.
        """
        pulls = [0]
        hub = Hub(track_close=False)

        def route(environ: Dict[str, Any], start_response: Any) -> Any:
            if environ["PATH_INFO"] == "/buffered":
                return buffering(hub)(environ, start_response)
            return upper(hub, pulls)(environ, start_response)

        server = yield self.serve(route)
        clients = []
        for i in range(200):
            client = yield RawClient.connect(server)
            client.send(get(b"/buffered" if i % 2 else b"/streamed"))
            clients.append(client)
        yield hub.wait(200, timeout=10)
        yield sleep(0.1)
        before = pulls[0]
        cpu = time.process_time()
        yield sleep(1.0)
        cpu = time.process_time() - cpu
        self.assertEqual(pulls[0], before, "the middleware was polled while its controller was idle")
        self.assertLess(cpu, 0.1, f"{cpu:.3f}s of CPU while 200 requests waited 1s")
        start = time.monotonic()
        for ex in hub.exchanges:
            ex.ctrl.put(b"bye")
            ex.ctrl.finish()
        for i, client in enumerate(clients):
            [response] = yield client.wait_for_responses(1)
            self.assertEqual(response.body, b"eyb" if i % 2 else b"BYE")
        self.assertLess(time.monotonic() - start, 2.0)

    @inlineCallbacks
    def test_plainGeneratorBacksOff(self) -> Any:
        """
        A generator that yields C{b''} with no controller is retried with
        exponential backoff, not polled: about 9 pulls in half a second.
        """
        pulls: List[float] = []
        go = threading.Event()

        def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
            start_response("200 OK", [])
            while not go.is_set():
                pulls.append(time.monotonic())
                yield b""
            yield b"done"

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: pulls)
        yield sleep(0.5)
        count = len(pulls)
        self.assertGreaterEqual(count, 5)
        self.assertLessEqual(count, 12)
        gaps = [b - a for a, b in zip(pulls, pulls[1:])]
        # Each wait is at least as long as the one before (1, 2, 4 ... ms).
        self.assertGreater(gaps[-1], 0.05)
        go.set()
        [response] = yield client.wait_for_responses(1, timeout=3)
        self.assertEqual(response.body, b"done")


# ---------------------------------------------------------------------------
# Disconnects
# ---------------------------------------------------------------------------


class DisconnectTests(ServerMixin, TestCase):
    """
    C{on_close}, C{closed} and C{put} when the client goes away, and the
    iterable's C{close()}.
    """

    def setUp(self) -> None:
        self.closed_ctrls: List[Controller] = []
        original = Controller.close

        def close(ctrl: Controller) -> None:
            self.closed_ctrls.append(ctrl)
            original(ctrl)

        self.patch(Controller, "close", close)
        self.writes: List[bytes] = []
        originalWrite = txawsgi.response.Response.write

        def write(response: Any, data: bytes) -> None:
            self.writes.append(data)
            originalWrite(response, data)

        self.patch(txawsgi.response.Response, "write", write)

    @inlineCallbacks
    def test_clientAbortsWhileWaiting(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        ex.ctrl.put(b"partial")
        yield client.wait_for(b"partial")
        self.assertEqual(ex.closes, [])
        self.assertFalse(ex.ctrl.closed)
        yield client.abort()
        yield eventually(lambda: ex.closes)
        [reason] = ex.closes
        self.assertIsInstance(reason, ClientDisconnected)
        self.assertIsInstance(reason, ConnectionError)
        self.assertTrue(ex.ctrl.closed)
        self.assertFalse(ex.ctrl.writable)
        self.assertEqual(self.closed_ctrls, [ex.ctrl])
        writes = len(self.writes)
        # put after the client left: silently dropped, answers False.
        self.assertIs(ex.ctrl.put(b"into the void"), False)
        self.assertIs(ex.ctrl.put(b""), False)
        ex.ctrl.finish()
        yield sleep(0.05)
        self.assertEqual(len(self.writes), writes)
        self.assertEqual(ex.ctrl._queued, 0)
        self.assertEqual(self.flushLoggedErrors(), [])
        yield self.assertServing(server)

    @inlineCallbacks
    def test_putFromThreadAfterClientLeft(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        yield client.abort()
        yield eventually(lambda: ex.closes)
        results = yield deferToThread(lambda: [ex.ctrl.put(b"x" * 100) for _ in range(10)])
        self.assertEqual(results, [False] * 10)
        yield sleep(0.05)
        self.assertEqual(self.writes, [])

    @inlineCallbacks
    def test_clientAbortsBeforeAnyOutput(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub, upper(hub))
        yield client.abort()
        yield eventually(lambda: ex.closes)
        self.assertIsInstance(ex.closes[0], ClientDisconnected)
        # Through the generator middleware, which closes the controller.
        self.assertEqual(self.closed_ctrls, [ex.ctrl])

    @inlineCallbacks
    def test_onCloseNoneAfterDelivery(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        ex.ctrl.put(b"all of it")
        ex.ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"all of it")
        yield eventually(lambda: ex.closes)
        self.assertEqual(ex.closes, [None])
        self.assertTrue(ex.ctrl.closed)
        self.assertEqual(self.closed_ctrls, [ex.ctrl])
        # A client leaving after delivery changes nothing.
        yield client.abort()
        yield sleep(0.02)
        self.assertEqual(ex.closes, [None])

    @inlineCallbacks
    def test_onCloseAfterClosedIsDeferred(self) -> Any:
        """
        C{on_close} registered after the exchange ended still calls back,
        later, from the reactor, with the reason.
        """
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        yield client.abort()
        yield eventually(lambda: ex.ctrl.closed)
        late: List[Any] = []
        registered = [False]
        ex.ctrl.on_close(lambda reason: late.append((reason, registered[0])))
        registered[0] = True
        self.assertEqual(late, [])
        yield eventually(lambda: late)
        [(reason, after)] = late
        self.assertIsInstance(reason, ClientDisconnected)
        self.assertTrue(after)

    @inlineCallbacks
    def test_onCloseCallbackError(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        ex.ctrl.on_close(lambda reason: 1 / 0)
        ex.ctrl.put(b"x")
        ex.ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"x")
        yield eventually(lambda: ex.closes == [None])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        yield self.assertServing(server)

    @inlineCallbacks
    def test_onGetAfterClientLeft(self) -> Any:
        """
        C{on_get} after the client left does not raise, and its callback is
        not run against a closed exchange.
        """
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub, data=b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        yield client.abort()
        yield eventually(lambda: ex.ctrl.closed)
        got: List[bytes] = []
        ex.ctrl.on_get(10, got.append)
        yield sleep(0.05)
        self.assertEqual(got, [])
        self.assertEqual(self.flushLoggedErrors(), [])


# ---------------------------------------------------------------------------
# Output backpressure
# ---------------------------------------------------------------------------


class Producer:
    """
    A controller app that produces C{total} bytes as fast as the controller
    lets it: it puts while C{writable} / C{put()} says so, then waits for
    C{on_drain}.
    """

    def __init__(self, total: int, size: int = 64 * 1024) -> None:
        self.total = total
        self.size = size
        self.produced = 0
        self.drains = 0
        self.digest = hashlib.sha256()
        self.blocks = 0
        self.wrong_thread = 0

    def __call__(self, exchange: Exchange) -> None:
        self.ctrl = exchange.ctrl
        self.pump(first=True)

    def pump(self, first: bool = False) -> None:
        if not first and not isInIOThread():
            # on_drain callbacks run in the reactor thread.
            self.wrong_thread += 1
        ctrl = self.ctrl
        while ctrl.writable and self.produced < self.total:
            data = block(self.blocks, self.size)
            self.blocks += 1
            self.produced += len(data)
            self.digest.update(data)
            if not ctrl.put(data):
                break
        if self.produced >= self.total:
            ctrl.finish()
        else:
            self.drains += 1
            ctrl.on_drain(self.pump)


class CountingClient(RawClient):
    """
    A raw client that hashes a Content-Length body as it arrives instead of
    keeping it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.head = b""
        self.body_bytes = 0
        self.digest = hashlib.sha256()

    def dataReceived(self, data: bytes) -> None:
        if not self.head:
            self._pending = getattr(self, "_pending", b"") + data
            end = self._pending.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = self._pending[: end + 4]
            data = self._pending[end + 4 :]
        self.body_bytes += len(data)
        self.digest.update(data)
        self._waits.poll()


class BackpressureTests(ServerMixin, TestCase):
    """
    A client that stops reading stops the application: memory is bounded,
    and everything arrives intact once it reads again.
    """

    #: Produced-but-unread bytes allowed: kernel buffers (small here),
    #: the transport's buffer and the controller's high-water mark.
    BOUND = 4 * MiB

    threadpool = False

    def pool(self) -> Optional[ThreadPool]:
        return start_pool(self) if self.threadpool else None

    @inlineCallbacks
    def settle(self, value: Callable[[], int]) -> Any:
        """
        Wait until C{value()} stops changing for 0.2 s; return it.
        """
        last = value()
        for _ in range(50):
            yield sleep(0.2)
            now = value()
            if now == last:
                return now
            last = now
        self.fail(f"still changing: {last}")

    @inlineCallbacks
    def paused_client(self, server: Any, path: bytes = b"/") -> Any:
        client = yield CountingClient.connect(server, rcvbuf=4096)
        client.pause_reading()
        client.send(get(path))
        return client

    @inlineCallbacks
    def stalled(self, producer: Producer) -> Any:
        """
        Serve C{producer} to a client that does not read, and let it produce
        all it may: C{(server, client, exchange)}.
        """
        hub = Hub(setup=producer, headers=[("Content-Length", str(producer.total))])
        server = yield self.serve(hub, self.pool(), sndbuf=65536)
        client = yield self.paused_client(server)
        yield hub.wait()
        yield self.settle(lambda: producer.produced)
        return server, client, hub.exchanges[0]

    @inlineCallbacks
    def test_controllerFollowsDrain(self) -> Any:
        total = 16 * MiB
        producer = Producer(total)
        server, client, ex = yield self.stalled(producer)
        produced = producer.produced
        self.assertLess(produced, self.BOUND)
        self.assertGreater(producer.drains, 0)
        self.assertFalse(producer.ctrl.writable)
        self.assertEqual(client.body_bytes, 0)
        client.resume_reading()
        yield eventually(lambda: client.body_bytes >= total, timeout=20)
        self.assertEqual(client.body_bytes, total)
        self.assertEqual(client.digest.hexdigest(), producer.digest.hexdigest())
        self.assertEqual(producer.wrong_thread, 0)
        self.assertIn(b" 200 ", client.head)

    @inlineCallbacks
    def test_pauseAgainMidway(self) -> Any:
        """
        Pause, resume, pause again: the app stops again each time.
        """
        total = 16 * MiB
        producer = Producer(total)
        server, client, ex = yield self.stalled(producer)
        first = producer.produced
        client.resume_reading()
        yield eventually(lambda: client.body_bytes > 6 * MiB, timeout=10)
        client.pause_reading()
        second = yield self.settle(lambda: producer.produced)
        self.assertLess(second - client.body_bytes, self.BOUND)
        self.assertLess(second, total)
        self.assertGreater(second, first)
        client.resume_reading()
        yield eventually(lambda: client.body_bytes >= total, timeout=20)
        self.assertEqual(client.digest.hexdigest(), producer.digest.hexdigest())

    @inlineCallbacks
    def test_generatorStopsWhilePaused(self) -> Any:
        """
        A plain generator producing 64 MiB to a client that is not reading:
        the engine stops pulling, so produced-but-unsent bytes stay bounded.
        """
        total = 64 * MiB
        size = 64 * 1024
        state = {"produced": 0, "digest": hashlib.sha256()}

        def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
            start_response("200 OK", [("Content-Length", str(total))])
            for i in range(total // size):
                data = block(i, size)
                state["produced"] += len(data)
                state["digest"].update(data)
                yield data

        server = yield self.serve(app, self.pool(), sndbuf=65536)
        client = yield self.paused_client(server)
        yield eventually(lambda: state["produced"])
        produced = yield self.settle(lambda: state["produced"])
        self.assertLess(produced, self.BOUND)
        client.resume_reading()
        yield eventually(lambda: client.body_bytes >= total, timeout=30)
        self.assertEqual(client.body_bytes, total)
        self.assertEqual(client.digest.hexdigest(), state["digest"].hexdigest())

    @inlineCallbacks
    def test_clientLeavesWhileAppWaitsForDrain(self) -> Any:
        """
        The client goes away while the app waits for C{on_drain}: the drain
        callback never runs, C{on_close} reports the disconnect.
        """
        producer = Producer(64 * MiB)
        server, client, ex = yield self.stalled(producer)
        drains = producer.drains
        produced = producer.produced
        yield client.abort()
        yield eventually(lambda: ex.closes)
        self.assertIsInstance(ex.closes[0], ClientDisconnected)
        yield sleep(0.1)
        self.assertEqual((producer.drains, producer.produced), (drains, produced))
        self.assertFalse(producer.ctrl.writable)
        yield self.assertServing(server)

    @inlineCallbacks
    def test_writableReflectsPause(self) -> Any:
        """
        C{writable} and C{put()}'s answer turn False while the transport is
        paused even if the controller's own queue is short.
        """
        total = 8 * MiB
        producer = Producer(total, size=8 * 1024)
        server, client, ex = yield self.stalled(producer)
        ctrl = producer.ctrl
        self.assertFalse(ctrl.writable)
        self.assertLess(ctrl._queued, HIGH_WATER + 8 * 1024)
        client.resume_reading()
        yield eventually(lambda: client.body_bytes >= total, timeout=20)
        self.assertEqual(client.digest.hexdigest(), producer.digest.hexdigest())


class ThreadpoolBackpressureTests(BackpressureTests):
    """
    The same, with the application in a threadpool.
    """

    threadpool = True

    @inlineCallbacks
    def test_writeBlocksWhilePaused(self) -> Any:
        """
        C{write()} from a worker blocks while the client is not reading.
        """
        total = 16 * MiB
        size = 64 * 1024
        state: Dict[str, Any] = {"written": 0, "digest": hashlib.sha256(), "threads": set()}

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            write = start_response("200 OK", [("Content-Length", str(total))])
            state["threads"].add(isInIOThread())
            for i in range(total // size):
                data = block(i, size)
                write(data)
                state["written"] += len(data)
                state["digest"].update(data)
            return []

        pool = self.pool()
        server = yield self.serve(app, pool, sndbuf=65536)
        client = yield self.paused_client(server)
        yield eventually(lambda: state["written"])
        written = yield self.settle(lambda: state["written"])
        self.assertLess(written, self.BOUND)
        # The worker is blocked inside write().
        self.assertEqual(len(pool.working), 1)
        client.resume_reading()
        yield eventually(lambda: client.body_bytes >= total, timeout=30)
        self.assertEqual(client.digest.hexdigest(), state["digest"].hexdigest())
        self.assertEqual(state["threads"], {False})

    @inlineCallbacks
    def test_writeReleasedWhenClientLeaves(self) -> Any:
        """
        A worker blocked in C{write()} is released when the client goes
        away, and its later writes return at once.
        """
        state: Dict[str, Any] = {"writes": 0, "done": False}

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            if environ["PATH_INFO"] == "/hello":
                start_response("200 OK", [])
                return [b"hello"]
            write = start_response("200 OK", [])
            for i in range(2000):
                write(block(i))
                state["writes"] += 1
            state["done"] = True
            return []

        pool = self.pool()
        server = yield self.serve(app, pool, sndbuf=65536)
        client = yield self.paused_client(server)
        yield eventually(lambda: state["writes"])
        yield self.settle(lambda: state["writes"])
        self.assertLess(state["writes"], 2000)
        yield client.abort()
        yield eventually(lambda: state["done"], timeout=10)
        yield eventually(lambda: not pool.working)
        yield self.assertServing(server)


# ---------------------------------------------------------------------------
# Fairness
# ---------------------------------------------------------------------------


class FairnessTests(ServerMixin, TestCase):
    """
    A response of many small chunks shares the reactor.
    """

    @inlineCallbacks
    def test_bigResponseDoesNotStarveHello(self) -> Any:
        chunks = 100_000
        progress = [0]

        def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
            if environ["PATH_INFO"] == "/hello":
                start_response("200 OK", [("Content-Length", "5")])
                yield b"hello"
                return
            start_response("200 OK", [("Content-Length", str(chunks * 16))])
            for i in range(chunks):
                progress[0] = i
                yield b"%015d\n" % i

        server = yield self.serve(app)
        big = yield CountingClient.connect(server)
        big.send(get(b"/big"))
        yield eventually(lambda: progress[0] > 1000)
        start = time.monotonic()
        response = yield request(server, "GET", "/hello")
        elapsed = time.monotonic() - start
        self.assertEqual(response.body, b"hello")
        self.assertLess(progress[0], chunks - 1, "the big response finished first; the test proves nothing")
        self.assertLess(elapsed, 0.5)
        yield eventually(lambda: big.body_bytes >= chunks * 16, timeout=30)
        self.assertEqual(progress[0], chunks - 1)


# ---------------------------------------------------------------------------
# Threadpool mode
# ---------------------------------------------------------------------------


class ThreadpoolTests(ServerMixin, TestCase):
    """
    With a threadpool the controller works the same, and waiting on an idle
    controller holds no worker thread.
    """

    @inlineCallbacks
    def test_streaming(self) -> Any:
        threads: List[bool] = []
        hub = Hub(setup=lambda ex: threads.append(isInIOThread()))
        pool = start_pool(self)
        server = yield self.serve(hub, pool)
        client = yield RawClient.connect(server)
        client.send(get())
        yield hub.wait()
        self.assertEqual(threads, [False])
        self.assertTrue(hub.exchanges[0].environ["wsgi.multithread"])
        ctrl = hub.exchanges[0].ctrl
        ctrl.put(b"one")
        yield client.wait_for(b"one")
        self.assertNotIn(b"two", client.received)
        ctrl.put(b"two")
        yield client.wait_for(b"two")
        ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.chunks, [b"one", b"two"])

    @inlineCallbacks
    def test_onGetInWorker(self) -> Any:
        reader = BodyReader(length=2000, thread=True)
        pool = start_pool(self)
        server = yield self.serve(Hub(setup=reader), pool)
        body = os.urandom(30_000)
        response = yield request(server, "POST", "/", body=body)
        reader.check(self, body, response)

    @inlineCallbacks
    def test_idleControllersHoldNoThread(self) -> Any:
        """
        50 requests wait on idle controllers with only 4 workers: none is
        held, and a broadcast answers all of them.
        """
        hub = Hub(track_close=False)
        pool = start_pool(self, maxthreads=4)
        server = yield self.serve(upper(hub), pool)
        clients = []
        for i in range(50):
            client = yield RawClient.connect(server)
            client.send(get())
            clients.append(client)
        yield hub.wait(50, timeout=10)
        yield eventually(lambda: not pool.working)
        yield sleep(0.2)
        self.assertEqual(pool.working, [])
        for i, ex in enumerate(hub.exchanges):
            ex.ctrl.put(b"item %d" % i)
            ex.ctrl.finish()
        bodies = set()
        for client in clients:
            [response] = yield client.wait_for_responses(1, timeout=10)
            bodies.add(response.body)
        self.assertEqual(bodies, {b"ITEM %d" % i for i in range(50)})

    @inlineCallbacks
    def test_backoffInWorker(self) -> Any:
        pulls: List[bool] = []
        go = threading.Event()

        def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
            start_response("200 OK", [])
            while not go.is_set():
                pulls.append(isInIOThread())
                yield b""
            yield b"done"

        pool = start_pool(self)
        server = yield self.serve(app, pool)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: pulls)
        yield sleep(0.5)
        self.assertGreaterEqual(len(pulls), 5)
        self.assertLessEqual(len(pulls), 12)
        self.assertEqual(set(pulls), {False})
        go.set()
        [response] = yield client.wait_for_responses(1, timeout=3)
        self.assertEqual(response.body, b"done")

    @inlineCallbacks
    def test_writeFromReactorCallback(self) -> Any:
        """
        C{write()} called from a controller callback (in the reactor thread)
        writes at once instead of blocking the reactor on itself.
        """
        import txawsgi.runners

        original = txawsgi.runners.blockingCallFromThread
        wrong: List[bool] = []

        def guarded(reactor: Any, f: Any, *args: Any) -> Any:
            if isInIOThread():
                # Would deadlock the reactor forever; fail the test instead.
                wrong.append(True)
                raise AssertionError("blockingCallFromThread in the reactor thread")
            return original(reactor, f, *args)

        self.patch(txawsgi.runners, "blockingCallFromThread", guarded)

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            write = start_response("200 OK", [])
            write(b"from worker, ")
            ctrl = environ["awsgi.controller"](environ)

            def got(data: bytes) -> None:
                write(b"from callback, ")
                ctrl.put(data)
                ctrl.finish()

            ctrl.on_get(10, got)
            return ctrl

        pool = start_pool(self)
        server = yield self.serve(app, pool)
        response = yield request(server, "POST", "/", body=b"body")
        self.assertEqual(wrong, [])
        self.assertEqual(response.body, b"from worker, from callback, body")

    @inlineCallbacks
    def test_disconnectWhileIdle(self) -> Any:
        hub = Hub()
        pool = start_pool(self)
        server = yield self.serve(hub, pool)
        client = yield RawClient.connect(server)
        client.send(get())
        yield hub.wait()
        ex = hub.exchanges[0]
        yield client.abort()
        yield eventually(lambda: ex.closes)
        self.assertIsInstance(ex.closes[0], ClientDisconnected)
        self.assertIs(ex.ctrl.put(b"x"), False)
        yield self.assertServing(server)


class StreamedThreadpoolTests(ThreadpoolTests):
    """
    The same under an L{AWSGISite} (threadpool mode streams the body).
    """

    awsgi_site = True


# ---------------------------------------------------------------------------
# Callbacks that raise
# ---------------------------------------------------------------------------


class CallbackErrorTests(ServerMixin, TestCase):
    """
    An exception in a controller callback is logged precisely and fails the
    response (500 before output, aborted connection after); the server
    keeps serving.
    """

    threadpool = False

    def pool(self) -> Optional[ThreadPool]:
        return start_pool(self) if self.threadpool else None

    @inlineCallbacks
    def test_onGetCallbackRaisesBeforeOutput(self) -> Any:
        hub = Hub(setup=lambda ex: ex.ctrl.on_get(10, lambda data: 1 / 0))
        server = yield self.serve(hub, self.pool())
        response = yield request(server, "POST", "/", body=b"abc")
        self.assertEqual(response.code, 500)
        self.assertEqual(response.body, b"Internal Server Error\n")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        ex = hub.exchanges[0]
        yield eventually(lambda: ex.closes)
        self.assertEqual(ex.closes, [None])
        yield self.assertServing(server)

    @inlineCallbacks
    def test_onDrainCallbackRaisesAfterOutput(self) -> Any:
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub, threadpool=self.pool())
        ex.ctrl.put(b"started")
        yield client.wait_for(b"started")

        def broken() -> None:
            raise KeyError("drain callback")

        ex.ctrl.on_drain(broken)
        reason = yield client.wait_closed()
        self.assertIn(reason, ("reset", "clean"))
        [partial] = parse_response(client.received, eof=False)
        self.assertFalse(partial.complete)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        yield eventually(lambda: ex.closes)
        self.assertTrue(ex.ctrl.closed)
        yield self.assertServing(server)

    @inlineCallbacks
    def test_onGetCallbackPutsThenRaises(self) -> Any:
        """
        The callback's error is the one logged, once, even if the app keeps
        using the controller after it.
        """

        def setup(ex: Exchange) -> None:
            def got(data: bytes) -> None:
                ex.ctrl.put(b"before")
                raise ValueError("bad body")

            ex.ctrl.on_get(10, got)

        hub = Hub(setup=setup)
        server = yield self.serve(hub, self.pool())
        response = yield request(server, "POST", "/", body=b"abc", allow_partial=True)
        self.assertEqual(response.code, 500)
        [failure] = self.flushLoggedErrors(ValueError)
        self.assertIn("bad body", str(failure.value))
        yield self.assertServing(server)


class ThreadpoolCallbackErrorTests(CallbackErrorTests):
    threadpool = True


class ThreadpoolCrashWhileCallingTests(ServerMixin, TestCase):
    """
    In threadpool mode a controller callback can fail while the application
    callable is still running in its worker.
    """

    @inlineCallbacks
    def test_callbackRaisesBeforeAppReturns(self) -> Any:
        closed: List[Controller] = []
        original = Controller.close

        def close(ctrl: Controller) -> None:
            closed.append(ctrl)
            original(ctrl)

        self.patch(Controller, "close", close)
        release = threading.Event()

        def setup(ex: Exchange) -> None:
            ex.ctrl.on_get(10, lambda data: 1 / 0)
            # Still inside the application call when the callback fails.
            release.wait(10)

        hub = Hub(setup=setup)
        pool = start_pool(self)
        # Runs before the pool stops: a worker must not stay blocked.
        self.addCleanup(release.set)
        server = yield self.serve(hub, pool)
        response = yield request(server, "POST", "/", body=b"abc")
        self.assertEqual(response.code, 500)
        self.assertFalse(release.is_set())
        release.set()
        yield eventually(lambda: closed)
        yield eventually(lambda: not pool.working)
        self.assertEqual(closed, [hub.exchanges[0].ctrl])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.flushLoggedErrors(), [])
        yield self.assertServing(server)


class MeasurementTests(ServerMixin, TestCase):
    """
    Figures worth watching, printed rather than asserted tightly.
    """

    @inlineCallbacks
    def test_cpuWhile1000Wait(self) -> Any:
        """
        CPU time of the whole process while 1000 requests wait on idle
        controllers for 2 s.
        """
        hub = Hub(track_close=False)
        server = yield self.serve(hub)
        clients = []
        for i in range(1000):
            client = yield RawClient.connect(server)
            client.send(get())
            clients.append(client)
        yield hub.wait(1000, timeout=20)
        yield sleep(0.1)
        cpu = time.process_time()
        wall = time.monotonic()
        yield sleep(2.0)
        cpu = time.process_time() - cpu
        wall = time.monotonic() - wall
        start = time.monotonic()
        for ex in hub.exchanges:
            ex.ctrl.put(b"go")
            ex.ctrl.finish()
        for client in clients:
            yield client.wait_for(TERMINATOR, timeout=10)
        broadcast = time.monotonic() - start
        message = (
            f"\n[txawsgi measurement] 1000 requests on idle controllers: "
            f"{cpu * 1000:.1f} ms CPU over {wall:.2f} s of waiting; "
            f"broadcast answered all in {broadcast * 1000:.0f} ms\n"
        )
        sys.__stdout__.write(message)
        self.assertLess(cpu, 0.5)
