"""
No reference cycles per exchange: once an exchange has ended and its
connection is gone, every per-request object is freed by reference counting
alone, so serving leaves no cyclic garbage behind (the collector would run
often, and each full collection walks every held long-poll).

Each test runs with the cyclic collector disabled: an object that outlives
its exchange here is kept alive by a reference cycle (or a leak).
"""

from __future__ import annotations

import gc
import os
import threading
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Set

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from tests.support import RawClient, WaitTimeout, eventually, listen, parse_response
from txawsgi import AWSGIResource
from txawsgi.controller import Controller
from txawsgi.engine import Engine
from txawsgi.environ import ErrorStream
from txawsgi.exchange import Exchange, _LossWatch
from txawsgi.fdevent import FdEvents, TimeoutFlag
from txawsgi.input import BufferedBody, SpooledBody, StreamingBody, StreamingInput
from txawsgi.response import Response
from txawsgi.site import AWSGISite
from txawsgi.suspend import Suspender
from txawsgi.timeouts import RequestDeadline

#: The objects txawsgi makes for one exchange.
PER_EXCHANGE = (
    Exchange,
    Engine,
    Controller,
    Response,
    BufferedBody,
    SpooledBody,
    StreamingBody,
    StreamingInput,
    ErrorStream,
    TimeoutFlag,
    FdEvents,
    Suspender,
    _LossWatch,
)

HELLO = b"Hello, world!\n"


def census() -> Counter[str]:
    """
    How many per-exchange objects are alive, by type.
    """
    return Counter(type(o).__name__ for o in gc.get_objects() if type(o) in PER_EXCHANGE)


def hello(environ: Dict[str, Any], start_response: Any) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))])
    return [HELLO]


class LongPolls:
    """
    The benchmark's long-poll: a controller held in a set until a broadcast,
    removed by its own C{on_close} callback (a closure over the controller:
    the controller must drop its callbacks once they ran).
    """

    def __init__(self) -> None:
        self.held: Set[Any] = set()
        self.lock = threading.Lock()

    def __call__(self, environ: Dict[str, Any], start_response: Any) -> Any:
        ctrl = environ["awsgi.controller"](environ)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        with self.lock:
            self.held.add(ctrl)
        ctrl.on_close(lambda reason: self.discard(ctrl))
        return ctrl

    def discard(self, ctrl: Any) -> None:
        with self.lock:
            self.held.discard(ctrl)

    def publish(self) -> None:
        with self.lock:
            held, self.held = self.held, set()
        for ctrl in held:
            ctrl.put(b"event\n")
            ctrl.finish()


class Counting:
    """
    Reads its request body with C{on_get} and answers its size.  (A method,
    not a nested function that passes itself to C{on_get}: such a closure is
    a reference cycle of the application's own.)
    """

    def __init__(self) -> None:
        self.received = 0

    def __call__(self, environ: Dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return _Count(self, environ["awsgi.controller"](environ)).ctrl


class _Count:
    def __init__(self, app: Counting, ctrl: Any) -> None:
        self.app = app
        self.ctrl = ctrl
        self.total = 0
        ctrl.on_get(4096, self.got, self.lost)

    def got(self, data: bytes) -> None:
        if data:
            self.total += len(data)
            self.app.received += len(data)
            self.ctrl.on_get(4096, self.got, self.lost)
        else:
            self.ctrl.put(b"%d" % self.total)
            self.ctrl.finish()

    def lost(self, reason: BaseException) -> None:
        pass


def get(path: bytes = b"/") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path


def post(body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)


class NoCyclesTests(TestCase):
    """
    Every kind of exchange ends with its objects freed by reference counting.
    """

    def setUp(self) -> None:
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        self.before = census()

    def pool(self) -> ThreadPool:
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test-no-cycles")
        pool.start()
        self.addCleanup(lambda: deferToThread(pool.stop))
        return pool

    async def serve(self, app: Any, site: Callable[[Any], Any] = lambda resource: resource, **options: Any) -> Any:
        return await listen(self, site(AWSGIResource(reactor, app, **options)))

    async def exchange(self, server: Any, data: bytes) -> bytes:
        """
        Send one request on a new connection; the response, once the server
        closed the connection.
        """
        client = await RawClient.connect(server)
        client.send(data)
        await client.wait_closed()
        return client.received

    async def assertFreed(self) -> None:
        """
        Every per-exchange object made since C{setUp} is gone (without the
        cyclic collector).
        """
        left: List[Counter[str]] = []

        def freed() -> bool:
            left[:] = [census() - self.before]
            return not left[0]

        try:
            await eventually(freed, timeout=5, interval=0.05)
        except WaitTimeout:
            self.fail(f"kept alive after the exchange ended: {dict(left[0])}")

    async def test_hello(self) -> None:
        server = await self.serve(hello)
        for _ in range(3):
            response = await self.exchange(server, get())
            self.assertTrue(response.endswith(HELLO), response)
        await self.assertFreed()

    async def test_helloAWSGISite(self) -> None:
        server = await self.serve(hello, AWSGISite)
        response = await self.exchange(server, get())
        self.assertTrue(response.endswith(HELLO), response)
        await self.assertFreed()

    async def _longPollReleased(self, **options: Any) -> None:
        app = LongPolls()
        server = await self.serve(app, AWSGISite, **options)
        clients = [await RawClient.connect(server) for _ in range(3)]
        for client in clients:
            client.send(get(b"/wait"))
        await eventually(lambda: len(app.held) == 3)
        if options.get("threadpool") is not None:
            await deferToThread(app.publish)
        else:
            app.publish()
        for client in clients:
            await client.wait_closed()
            [response] = parse_response(client.received)
            self.assertEqual(response.body, b"event\n")
        await self.assertFreed()

    async def test_longPollReleased(self) -> None:
        await self._longPollReleased()

    async def test_longPollReleasedThreadpool(self) -> None:
        await self._longPollReleased(threadpool=self.pool())

    async def test_longPollAborted(self) -> None:
        """
        The client leaves while its long-poll is held.
        """
        app = LongPolls()
        server = await self.serve(app, AWSGISite)
        client = await RawClient.connect(server)
        client.send(get(b"/wait"))
        await eventually(lambda: app.held)
        await client.abort()
        await eventually(lambda: not app.held)
        await self.assertFreed()

    async def test_streamAborted(self) -> None:
        """
        The client leaves while the response streams (the engine is the
        transport's producer then).
        """
        started: List[bool] = []

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            started.append(True)

            def chunks() -> Any:
                while True:
                    yield b"x" * 65536

            return chunks()

        server = await self.serve(app, AWSGISite)
        client = await RawClient.connect(server)
        client.send(get())
        await client.wait_for_length(200000)
        await client.abort()
        await self.assertFreed()

    async def test_threadpool(self) -> None:
        server = await self.serve(hello, AWSGISite, threadpool=self.pool())
        response = await self.exchange(server, get())
        self.assertTrue(response.endswith(HELLO), response)
        await self.assertFreed()

    async def test_threadpoolBody(self) -> None:
        """
        A body read through C{wsgi.input} in a worker thread (streamed).
        """

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]

        server = await self.serve(app, AWSGISite, threadpool=self.pool())
        response = await self.exchange(server, post(b"abc" * 1000))
        self.assertTrue(response.endswith(b"abc" * 1000), response[:200])
        await self.assertFreed()

    async def test_greenletBody(self) -> None:
        """
        A body read through C{wsgi.input} in a greenlet (streamed), and a
        long-poll held and released.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]

        server = await self.serve(app, AWSGISite, greenlets=True)
        response = await self.exchange(server, post(b"abc" * 1000))
        self.assertTrue(response.endswith(b"abc" * 1000), response[:200])
        await self.assertFreed()
        await self._longPollReleased(greenlets=True)

    async def test_streamedBody(self) -> None:
        """
        A body streamed to C{on_get} as it arrives.
        """

        server = await self.serve(Counting(), AWSGISite, stream_input=True)
        [response] = parse_response(await self.exchange(server, post(b"x" * 100000)))
        self.assertEqual(response.body, b"100000")
        await self.assertFreed()

    async def test_spooledBody(self) -> None:
        """
        A body collected before the call (a plain app under an AWSGISite).
        """

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]

        server = await self.serve(app, AWSGISite)
        response = await self.exchange(server, post(b"abc"))
        self.assertTrue(response.endswith(b"abc"), response)
        await self.assertFreed()

    async def test_spooledBodyTooLarge(self) -> None:
        """
        A body refused (413) while it was being spooled, before the call.
        """
        server = await self.serve(hello, AWSGISite, max_body=1000)
        chunk = b"x" * 3000
        response = await self.exchange(
            server,
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk),
        )
        self.assertIn(b" 413 ", response.split(b"\r\n")[0])
        await self.assertFreed()

    async def test_spooledBodyTimedOut(self) -> None:
        """
        An exchange cut off (503) while its body was still being spooled:
        the call that waited for the body is dropped.
        """
        deadline = RequestDeadline(reactor, 0.1)
        server = await self.serve(hello, AWSGISite, observers=[deadline])
        client = await RawClient.connect(server)
        client.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\nabc")
        [response] = await client.wait_for_responses(1)
        self.assertEqual(response.code, 503)
        await client.abort()
        await self.assertFreed()

    async def test_bodyCutShort(self) -> None:
        """
        The client leaves in the middle of a streamed body.
        """
        app = Counting()
        server = await self.serve(app, AWSGISite, stream_input=True)
        client = await RawClient.connect(server)
        client.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        await eventually(lambda: app.received)
        await client.abort()
        await self.assertFreed()

    async def test_suspended(self) -> None:
        """
        An app suspended with C{x-wsgiorg.suspend}, then resumed.
        """
        resumes: List[Callable[[], None]] = []

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [])
            resumes.append(environ["x-wsgiorg.suspend"](10))
            yield b""
            yield b"resumed"

        server = await self.serve(app, AWSGISite)
        client = await RawClient.connect(server)
        client.send(get())
        await eventually(lambda: resumes)
        resumes.pop()()
        await client.wait_closed()
        self.assertTrue(client.received.endswith(b"resumed\r\n0\r\n\r\n"), client.received)
        await self.assertFreed()

    async def test_fdevent(self) -> None:
        """
        An app suspended on C{x-wsgiorg.fdevent.readable}: once woken by the
        descriptor, once by the timeout.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        os.write(w, b"x")

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [])
            environ["x-wsgiorg.fdevent.readable"](r, 10)
            yield b""
            first = bool(environ["x-wsgiorg.fdevent.timeout"])
            os.read(r, 1)
            environ["x-wsgiorg.fdevent.readable"](r, 0.05)
            yield b""
            yield b"%r %r" % (first, bool(environ["x-wsgiorg.fdevent.timeout"]))

        server = await self.serve(app, AWSGISite)
        [response] = parse_response(await self.exchange(server, get()))
        self.assertEqual(response.body, b"False True")
        await self.assertFreed()

    async def test_applicationError(self) -> None:
        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            raise ValueError("boom")

        server = await self.serve(app, AWSGISite)
        response = await self.exchange(server, get())
        self.assertIn(b" 500 ", response.split(b"\r\n")[0])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        await self.assertFreed()

    async def test_controllerAfterTheEnd(self) -> None:
        """
        An app that asks for its controller only after the exchange ended
        gets a closed one, and no cycle.
        """
        kept: Dict[str, Any] = {}
        closes: List[Optional[BaseException]] = []

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            kept["environ"] = environ
            return hello(environ, start_response)

        server = await self.serve(app, AWSGISite)
        await self.exchange(server, get())
        environ = kept.pop("environ")
        ctrl = environ["awsgi.controller"](environ)
        self.assertTrue(ctrl.closed)
        self.assertFalse(ctrl.put(b"late"))
        ctrl.on_close(closes.append)
        await eventually(lambda: closes)
        self.assertEqual(closes, [None])
        del ctrl, environ
        await self.assertFreed()
