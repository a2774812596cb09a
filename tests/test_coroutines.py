"""
Coroutine applications (L{txawsgi.coroutines}) over real sockets: C{async
def app(environ, start_response, stream)} whose nested helpers await the
request body, the client's pace and any L{Deferred}; errors, client
disconnects, middleware around the returned iterable, and the
C{coroutine_stream} example under concurrent load.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Dict, Iterator, List

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python.threadable import isInIOThread
from twisted.trial.unittest import TestCase

from txawsgi import AWSGIResource
from txawsgi.coroutines import Stream, coroutine_app
from txawsgi.errors import BodyTruncated, ClientDisconnected
from txawsgi.site import AWSGISite

from ._extensions import Middleware, fetch, get, hello_while, load_example, run_example, stalled_download, with_hello
from ._streaming import chunk, chunked_head, digest, pattern, post, start_pool
from .support import RawClient, eventually, listen, sleep

Environ = Dict[str, Any]


def serve(testcase: TestCase, app: Any, threadpool: Any = None, **kw: Any) -> Deferred[Any]:
    """
    Serve C{app} (and C{/hello}) under an L{AWSGISite}, streaming bodies.
    """
    listen_options = kw.pop("listen", {})
    resource = AWSGIResource(reactor, with_hello(app), threadpool, stream_input=threadpool is None, **kw)
    testcase.resource = resource  # type: ignore[attr-defined]
    return listen(testcase, AWSGISite(resource), **listen_options)


async def count(stream: Stream, seen: List[int]) -> bytes:
    """
    A helper two calls deep that awaits the body piece by piece.
    """
    hasher = hashlib.sha256()
    total = 0
    while piece := await stream.read(16 * 1024):
        seen.append(len(piece))
        hasher.update(piece)
        total += len(piece)
    return b"%d %s" % (total, hasher.hexdigest().encode())


class BodyTests(TestCase):
    """
    Awaiting the request body.
    """

    @inlineCallbacks
    def test_nested_read(self) -> Any:
        """
        A nested helper awaits C{stream.read()}: the application sees the
        first bytes before the client sent the rest, a hello is answered
        while it waits for them, and it answers for the whole body.
        """
        seen: List[int] = []

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            async def answer() -> None:
                result = await count(stream, seen)
                start_response("200 OK", [("Content-Length", str(len(result)))])
                stream.write(result)

            await answer()

        server = yield serve(self, app)
        client = yield RawClient.connect(server)
        body = pattern(100_000)
        client.send(post(b"/", body)[:-60_000])
        yield eventually(lambda: sum(seen) == 40_000)
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: client.received == b""))
        self.assertLess(took, 1.0)
        client.send(body[-60_000:])
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, digest(body))

    @inlineCallbacks
    def test_read_all(self) -> Any:
        """
        C{read_all()} gathers a chunked body; over its limit it raises
        C{ValueError}, a 500.
        """

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            limit = 10 if environ["PATH_INFO"] == "/small" else None
            data = await stream.read_all(limit)
            start_response("200 OK", [("Content-Type", "text/plain")])
            await stream.send(data[::-1])

        server = yield serve(self, app)
        client = yield RawClient.connect(server)
        client.send(chunked_head(b"/") + chunk(b"abc") + chunk(b"def") + chunk(b""))
        client.send(chunked_head(b"/small") + chunk(b"more than ten bytes") + chunk(b""))
        first, second = yield client.wait_for_responses(2)
        self.assertEqual((first.code, first.body), (200, b"fedcba"))
        self.assertEqual(second.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @inlineCallbacks
    def test_body_too_large(self) -> Any:
        """
        A body over C{max_body} while the coroutine reads it: a 413, the
        read raises, and no application error is logged.
        """
        raised: List[BaseException] = []

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            try:
                await stream.read_all()
            except BaseException as e:
                raised.append(e)
                raise

        server = yield serve(self, app, max_body=1000)
        client = yield RawClient.connect(server)
        client.send(chunked_head(b"/") + chunk(b"x" * 600))
        yield sleep(0.05)
        client.send(chunk(b"x" * 600))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.code, 413)
        yield eventually(lambda: raised)
        self.assertIsInstance(raised[0], BodyTruncated)
        yield sleep(0.01)
        self.assertEqual(self.flushLoggedErrors(), [])


class OutputTests(TestCase):
    """
    Writing at the client's pace, and awaiting anything.
    """

    @inlineCallbacks
    def test_drain_backpressure(self) -> Any:
        """
        C{await stream.send()} waits while the client does not read: the
        coroutine's progress stalls far short of the end; once the client
        reads, all of it arrives, in order.
        """
        blocks = [pattern(64 * 1024, i) for i in range(64)]
        progress = [0]
        refused = [0]

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            start_response("200 OK", [("Content-Length", str(sum(map(len, blocks))))])
            for block in blocks:
                if not stream.write(block):
                    refused[0] += 1
                    await stream.drain()
                progress[0] += 1

        server = yield serve(self, app, listen={"sndbuf": 16 * 1024})
        yield Deferred.fromCoroutine(stalled_download(self, server, blocks, progress))
        self.assertGreater(refused[0], 0)

    @inlineCallbacks
    def test_await_anything(self) -> Any:
        """
        The coroutine and its helpers await L{Deferred}s (fired later, or
        failing), other coroutines and C{stream.sleep()}, all in the
        reactor thread.
        """
        got: List[Any] = []

        async def helper() -> str:
            await deferLater(reactor, 0.01, lambda: None)
            return "helper"

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            got.append(await deferLater(reactor, 0.01, lambda: "deferred"))
            got.append(await helper())
            await stream.sleep(0.01)
            try:
                await deferLater(reactor, 0.01, lambda: 1 / 0)
            except ZeroDivisionError:
                got.append("raised")
            got.append(isInIOThread())
            start_response("200 OK", [("Content-Type", "text/plain")])
            await stream.send(b"done")

        server = yield serve(self, app)
        response = yield fetch(server)
        self.assertEqual(response.body, b"done")
        self.assertEqual(got, ["deferred", "helper", "raised", True])


class ErrorTests(TestCase):
    """
    Exceptions and disconnects.
    """

    @inlineCallbacks
    def test_error_before_output(self) -> Any:
        """
        An exception before any output, at once or after an await: a 500.
        """

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            if environ["PATH_INFO"] == "/later":
                await stream.sleep(0.01)
            start_response("200 OK", [])
            raise ValueError("broken")

        server = yield serve(self, app)
        client = yield RawClient.connect(server)
        client.send(get(b"/now") + get(b"/later"))
        first, second = yield client.wait_for_responses(2)
        self.assertEqual((first.code, second.code), (500, 500))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

    @inlineCallbacks
    def test_error_after_output(self) -> Any:
        """
        An exception after output went out: the response is cut (no last
        chunk) and the iterable closed.
        """

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            start_response("200 OK", [("Content-Type", "text/plain")])
            await stream.send(b"partial ")
            await stream.sleep(0.05)
            raise ValueError("broken")

        middleware = Middleware(app)
        server = yield serve(self, middleware)
        client = yield RawClient.connect(server)
        client.send(get())
        yield client.wait_closed()
        self.assertIn(b"partial ", client.received)
        self.assertNotIn(b"0\r\n\r\n", client.received)
        self.assertEqual(middleware.closed, 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @inlineCallbacks
    def test_disconnect_cancels(self) -> Any:
        """
        A client that goes away cancels its coroutine: one awaiting a
        timer gets L{CancelledError} (and the timer is gone), one awaiting
        the body gets L{BodyTruncated}; C{on_close} hears why; nothing is
        logged as an error.
        """
        raised: Dict[str, Any] = {}
        closes: List[Any] = []

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            path = environ["PATH_INFO"]
            stream.controller.on_close(closes.append)
            start_response("200 OK", [("Content-Type", "text/plain")])
            await stream.send(b"started\n")
            try:
                if path == "/sleep":
                    await stream.sleep(30)
                else:
                    await stream.read()
            except BaseException as e:
                raised[path] = e
                raise

        server = yield serve(self, app)
        sleeper = yield RawClient.connect(server)
        sleeper.send(get(b"/sleep"))
        reader = yield RawClient.connect(server)
        reader.send(chunked_head(b"/read"))
        yield gatherResults([sleeper.wait_for(b"started"), reader.wait_for(b"started")])
        yield sleeper.abort()
        yield reader.abort()
        yield eventually(lambda: len(raised) == 2 and len(closes) == 2)
        self.assertIsInstance(raised["/sleep"], CancelledError)
        self.assertIsInstance(raised["/read"], BodyTruncated)
        self.assertTrue(all(isinstance(reason, ClientDisconnected) for reason in closes))
        yield eventually(lambda: self.resource.in_flight == 0)
        self.assertEqual(self.flushLoggedErrors(), [])


class MiddlewareTests(TestCase):
    """
    The decorated application returns the controller: middleware wraps it.
    """

    @inlineCallbacks
    def test_wrapping_middleware(self) -> Any:
        """
        Middleware that copies the environ and wraps the iterable sees
        every chunk (the empty ones while the coroutine waits, too) and
        closes it; one that transforms the chunks transforms the response.
        """

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            assert environ["test.middleware"]
            start_response("200 OK", [("Content-Type", "text/plain")])
            for word in (b"one ", b"two ", b"three"):
                await stream.send(word)
                await stream.sleep(0.02)

        def upper(inner: Any) -> Callable[..., Iterator[bytes]]:
            def wrapped(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
                iterable = inner(environ, start_response)
                try:
                    for piece in iterable:
                        yield piece.upper()
                finally:
                    iterable.close()

            return wrapped

        middleware = Middleware(app)
        server = yield serve(self, upper(middleware))
        response = yield fetch(server)
        self.assertEqual(response.body, b"ONE TWO THREE")
        self.assertEqual(b"".join(middleware.chunks), b"one two three")
        self.assertIn(b"", middleware.chunks)
        self.assertEqual(middleware.closed, 1)


class ThreadpoolTests(TestCase):
    @inlineCallbacks
    def test_threadpool_mode(self) -> Any:
        """
        Called from a worker thread, the coroutine still runs in the
        reactor thread.
        """
        threads: List[bool] = []

        @coroutine_app
        async def app(environ: Environ, start_response: Callable[..., Any], stream: Stream) -> None:
            threads.append(isInIOThread())
            start_response("200 OK", [("Content-Type", "text/plain")])
            await stream.send(await stream.read_all())

        server = yield serve(self, app, start_pool(self))
        client = yield RawClient.connect(server)
        client.send(post(b"/", b"echo me"))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"echo me")
        self.assertEqual(threads, [True])


class ExampleTests(TestCase):
    """
    The C{coroutine_stream} example.
    """

    def setUp(self) -> None:
        self.example = load_example("coroutine_stream")

    @inlineCallbacks
    def test_concurrent_streams(self) -> Any:
        """
        Fifty streams of ticks, each waiting on timers between lines: a
        hello is answered while they are all still streaming, and each
        gets all its ticks.
        """
        server = yield serve(self, self.example.application)
        clients = []
        for _ in range(50):
            client = yield RawClient.connect(server)
            client.send(get(b"/ticks?n=5&interval=0.2"))
            clients.append(client)
        yield eventually(lambda: all(b"tick 0" in c.received for c in clients))
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: not any(b"tick 4" in c.received for c in clients)))
        self.assertLess(took, 0.5)
        responses = yield gatherResults([c.wait_for_responses(1) for c in clients])
        for [response] in responses:
            self.assertEqual(response.body, b"".join(b"tick %d\n" % i for i in range(5)))

    @inlineCallbacks
    def test_shout_and_download(self) -> Any:
        """
        C{/shout} answers each piece of the body as it arrives; C{/download}
        sends exactly what was asked for.
        """
        server = yield serve(self, self.example.application)
        client = yield RawClient.connect(server)
        client.send(chunked_head(b"/shout") + chunk(b"hello "))
        yield client.wait_for(b"HELLO ")
        client.send(chunk(b"world") + chunk(b""))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"HELLO WORLD(11 bytes)\n")
        client.clear()
        client.send(get(b"/download?size=300000"))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, (self.example.BLOCK * 5)[:300_000])

    @inlineCallbacks
    def test_runs_as_a_script(self) -> Any:
        """
        C{python examples/coroutine_stream.py 0} serves the example.
        """
        proc, port = yield Deferred.fromCoroutine(run_example(self, "coroutine_stream"))
        client = yield RawClient.connect(("127.0.0.1", port), testcase=self)
        client.send(get(b"/ticks?n=2&interval=0.01"))
        [response] = yield client.wait_for_responses(1, timeout=10)
        self.assertEqual(response.body, b"tick 0\ntick 1\n")
        yield client.close()
        yield proc.terminate()
