"""
Applications that break the rules (PEP 3333's and the controller's), hang,
or fail in callbacks: each gets a precise logged error and the response the
situation allows (a 500 if nothing was sent, a cut connection if something
was), its iterable is closed, and the server serves the next request -- on
the same connection when the failed response was complete.

Run in the reactor thread and, for the table of PEP 3333 misuses, in a
threadpool too.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from txawsgi import AWSGIResource
from txawsgi.errors import (
    AlreadyFinished,
    GetPending,
    HopByHopHeader,
    InputReplaced,
    InvalidBody,
    InvalidHeader,
    InvalidStatus,
    StartResponseError,
    WrongEnviron,
)
from txawsgi.server import ServerSite
from txawsgi.timeouts import RequestDeadline

from .support import RawClient, eventually, listen, parse_response, sleep

TEXT = ("Content-Type", "text/plain")
HELLO = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


def request(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode()


class Closing:
    """
    An iterable that counts its C{close()} calls.
    """

    def __init__(self, chunks: List[Any], close_error: Optional[Exception] = None) -> None:
        self._chunks = list(chunks)
        self._close_error = close_error
        self.closes = 0

    def __iter__(self) -> "Closing":
        return self

    def __next__(self) -> Any:
        if not self._chunks:
            raise StopIteration
        item = self._chunks.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closes += 1
        if self._close_error is not None:
            raise self._close_error


def pep3333_misuses() -> List[Tuple[str, Callable[..., Any], str, Type[BaseException], str]]:
    """
    C{(name, app, outcome, error type, message fragment)}: the outcome is
    C{"500"} (a complete 500, the connection reusable) or C{"cut"} (the
    response had started: the connection is closed without a clean end).
    """

    def twice(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [TEXT])
        start_response("200 OK", [TEXT])
        return [b"x"]

    def never_started(environ: Any, start_response: Any) -> Any:
        return []

    def body_first(environ: Any, start_response: Any) -> Any:
        def body() -> Iterator[bytes]:
            yield b"early"
            start_response("200 OK", [TEXT])

        return body()

    def status(value: Any) -> Callable[..., Any]:
        def app(environ: Any, start_response: Any) -> Any:
            start_response(value, [TEXT])
            return [b"x"]

        return app

    def headers(value: Any) -> Callable[..., Any]:
        def app(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", value)
            return [b"x"]

        return app

    def yielding(*chunks: Any) -> Callable[..., Any]:
        def app(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", [TEXT])
            return Closing(list(chunks))

        return app

    def returning(value: Any) -> Callable[..., Any]:
        def app(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", [TEXT])
            return value

        return app

    def raising(environ: Any, start_response: Any) -> Any:
        raise ValueError("the application failed")

    def exc_info_late(environ: Any, start_response: Any) -> Any:
        def body() -> Iterator[bytes]:
            start_response("200 OK", [TEXT])
            yield b"started"
            try:
                raise KeyError("late failure")
            except KeyError:
                import sys

                start_response("500 Oops", [TEXT], sys.exc_info())
            yield b"never"

        return body()

    def bad_iter(environ: Any, start_response: Any) -> Any:
        class Broken:
            def __iter__(self) -> Any:
                raise LookupError("no iterator here")

        start_response("200 OK", [TEXT])
        return Broken()

    return [
        ("start_response twice", twice, "500", StartResponseError, "called a second time without exc_info"),
        ("no start_response", never_started, "500", StartResponseError, "without calling start_response"),
        ("body before start_response", body_first, "500", StartResponseError, "body data before start_response"),
        ("int status", status(200), "500", InvalidStatus, "must be a native str"),
        ("bytes status", status(b"200 OK"), "500", InvalidStatus, "must be a native str"),
        ("status without reason", status("200"), "500", InvalidStatus, "must look like '200 OK'"),
        ("status with CRLF", status("200 OK\r\nX-Injected: 1"), "500", InvalidStatus, "control character"),
        ("headers not a list", headers(((("A", "b"),))), "500", InvalidHeader, "must be a list"),
        ("header triple", headers([("A", "b", "c")]), "500", InvalidHeader, "(name, value) tuple"),
        ("bytes header value", headers([("A", b"b")]), "500", InvalidHeader, "native str"),
        ("header name with space", headers([("A B", "c")]), "500", InvalidHeader, "invalid header name"),
        ("response splitting", headers([("X", "a\r\nSet-Cookie: evil=1")]), "500", InvalidHeader, "control character"),
        ("hop-by-hop header", headers([("Connection", "close")]), "500", HopByHopHeader, "hop-by-hop header 'Connection'"),
        ("Transfer-Encoding header", headers([("Transfer-Encoding", "chunked")]), "500", HopByHopHeader, "hop-by-hop"),
        ("Status header", headers([("Status", "200 OK")]), "500", InvalidHeader, "'Status' is not a response header"),
        ("bad Content-Length", headers([("Content-Length", "-1")]), "500", InvalidHeader, "Content-Length"),
        ("yields str", yielding("text"), "500", InvalidBody, "yielded str, not bytes"),
        ("yields int", yielding(42), "500", InvalidBody, "yielded int, not bytes"),
        ("yields str after bytes", yielding(b"ok", "text"), "cut", InvalidBody, "yielded str, not bytes"),
        ("returns None", returning(None), "500", TypeError, "'NoneType' object is not iterable"),
        ("returns a str", returning("body"), "500", InvalidBody, "yielded str, not bytes"),
        ("__iter__ raises", bad_iter, "500", LookupError, "no iterator here"),
        ("app raises", raising, "500", ValueError, "the application failed"),
        ("iterable raises", yielding(OSError("disk on fire")), "500", OSError, "disk on fire"),
        ("iterable raises mid-body", yielding(b"partial", RuntimeError("mid-body")), "cut", RuntimeError, "mid-body"),
        ("exc_info after headers", exc_info_late, "cut", KeyError, "late failure"),
    ]


class _Misbehaving(TestCase):
    """
    Serves C{self.apps[PATH_INFO]} (C{/hello}: a plain answer) through the
    production site and records the log.
    """

    timeout = 60
    threaded = False

    def setUp(self) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.apps: Dict[str, Callable[..., Any]] = {}
        self.pool: Optional[ThreadPool] = None
        if self.threaded:
            pool = self.pool = ThreadPool(minthreads=1, maxthreads=4, name="misbehaving")
            pool.start()
            self.addCleanup(lambda: deferToThread(pool.stop))

    def app(self, environ: Dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/hello":
            start_response("200 OK", [TEXT, ("Content-Length", "5")])
            return [b"hello"]
        return self.apps[path](environ, start_response)

    async def serve(self, **kw: Any) -> Any:
        self.resource = AWSGIResource(reactor, self.app, threadpool=self.pool, **kw)
        self.server = await listen(self, ServerSite(self.resource, reactor=reactor))
        return self.server

    def logged(self, text: str) -> List[str]:
        return [m for m in (formatEvent(e) for e in list(self.events)) if text in m]

    def errors(self, kind: Type[BaseException], fragment: str) -> None:
        """
        Exactly the logged failures of C{kind} carrying C{fragment} were
        logged (and are flushed, so trial does not fail the test for them).
        """
        failures = self.flushLoggedErrors(kind)
        self.assertTrue(failures, f"no {kind.__name__} logged")
        messages = [f.getErrorMessage() for f in failures]
        self.assertTrue(any(fragment in m for m in messages), messages)

    async def healthy(self) -> None:
        client = await RawClient.connect(self.server)
        client.send(HELLO)
        [response] = await client.wait_for_responses(1)
        self.assertEqual((response.code, response.body), (200, b"hello"))
        await client.close()


class PEP3333MisuseTests(_Misbehaving):
    async def test_table(self) -> None:
        """
        Each misuse: a 500 (then the same connection serves the next
        request) or a cut connection, its precise error in the log, the
        iterable closed, and the server healthy.
        """
        await self.serve()
        for index, (name, app, outcome, kind, fragment) in enumerate(pep3333_misuses()):
            path = f"/case{index}"
            closings: List[Closing] = []

            def tracking(environ: Any, start_response: Any, app: Any = app) -> Any:
                result = app(environ, start_response)
                if isinstance(result, Closing):
                    closings.append(result)
                return result

            self.apps[path] = tracking
            client = await RawClient.connect(self.server)
            if outcome == "500":
                client.send(request(path) + HELLO)
                responses = await client.wait_for_responses(2)
                self.assertEqual([r.code for r in responses], [500, 200], name)
                self.assertEqual(responses[0].body, b"Internal Server Error\n", name)
                self.assertEqual(responses[1].body, b"hello", name)
                await client.close()
            else:
                client.send(request(path))
                await client.wait_closed()
                [response] = parse_response(client.received, eof=False)
                self.assertEqual(response.code, 200, name)
                self.assertFalse(response.complete, f"{name}: a cut response must not look complete")
            self.errors(kind, fragment)
            for closing in closings:
                await eventually(lambda: closing.closes == 1)
            await self.healthy()

    async def test_contentLengthMismatch(self) -> None:
        """
        More bytes than the declared Content-Length: the excess is dropped
        and logged, the response is complete.  Fewer: logged, and the
        connection closed so the client sees the truncation.
        """
        self.apps["/over"] = lambda environ, sr: (sr("200 OK", [TEXT, ("Content-Length", "3")]), [b"abcdef"])[1]
        self.apps["/under"] = lambda environ, sr: (sr("200 OK", [TEXT, ("Content-Length", "10")]), [b"abc"])[1]
        await self.serve()
        client = await RawClient.connect(self.server)
        client.send(request("/over") + HELLO)
        responses = await client.wait_for_responses(2)
        self.assertEqual([(r.code, r.body) for r in responses], [(200, b"abc"), (200, b"hello")])
        self.assertTrue(self.logged("Application sent more than its Content-Length 3"))
        client = await RawClient.connect(self.server)
        client.send(request("/under"))
        await client.wait_closed()
        [response] = parse_response(client.received, eof=True)
        self.assertFalse(response.complete)
        self.assertTrue(self.logged("Application sent 3 bytes of a declared Content-Length of 10"))
        await self.healthy()

    async def test_closeRaises(self) -> None:
        """
        An error in C{close()} is logged; the response already went out.
        """
        closing = Closing([b"fine"], close_error=ZeroDivisionError("close failed"))
        self.apps["/close"] = lambda environ, sr: (sr("200 OK", [TEXT]), closing)[1]
        await self.serve()
        client = await RawClient.connect(self.server)
        client.send(request("/close") + HELLO)
        responses = await client.wait_for_responses(2)
        self.assertEqual([(r.code, r.body) for r in responses], [(200, b"fine"), (200, b"hello")])
        self.assertEqual(closing.closes, 1)
        self.errors(ZeroDivisionError, "close failed")
        self.assertTrue(self.logged("Error in the application iterable's close()"))

    async def test_generatorIgnoresGeneratorExit(self) -> None:
        """
        A generator that yields from C{finally} when closed early (the
        client left): Python's RuntimeError is logged, nothing else breaks.
        """
        stuck = threading.Event()

        def app(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", [TEXT])

            def body() -> Iterator[bytes]:
                try:
                    while True:
                        yield b"x" * 1024
                        yield b""
                finally:
                    stuck.set()
                    yield b"refusing to stop"

            return body()

        self.apps["/stubborn"] = app
        await self.serve()
        client = await RawClient.connect(self.server)
        client.send(request("/stubborn"))
        await client.wait_for(b"xxxx")
        await client.abort()
        await eventually(lambda: stuck.is_set())
        await eventually(lambda: self.flushLoggedErrors(RuntimeError))
        await self.healthy()


class ThreadedPEP3333MisuseTests(PEP3333MisuseTests):
    threaded = True


class ControllerMisuseTests(_Misbehaving):
    async def expect_500(self, path: str, app: Callable[..., Any], kind: Type[BaseException], fragment: str) -> None:
        self.apps[path] = app
        client = await RawClient.connect(self.server)
        client.send(request(path) + HELLO)
        responses = await client.wait_for_responses(2)
        self.assertEqual([r.code for r in responses], [500, 200], path)
        self.errors(kind, fragment)

    async def expect_cut(self, path: str, app: Callable[..., Any], kind: Type[BaseException], fragment: str) -> None:
        self.apps[path] = app
        client = await RawClient.connect(self.server)
        client.send(request(path))
        await client.wait_closed()
        [response] = parse_response(client.received, eof=False)
        self.assertFalse(response.complete, path)
        self.errors(kind, fragment)

    def ctrl_app(self, body: Callable[[Any, Dict[str, Any]], Any], *, start: bool = True) -> Callable[..., Any]:
        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            if start:
                start_response("200 OK", [TEXT])
            body(ctrl, environ)
            return ctrl

        return app

    async def test_inTheApplicationCall(self) -> None:
        """
        Misuse raised inside the application call: a 500.
        """
        await self.serve()

        def put_after_finish(ctrl: Any, environ: Any) -> None:
            ctrl.finish()
            ctrl.put(b"late")

        def finish_twice(ctrl: Any, environ: Any) -> None:
            ctrl.finish()
            ctrl.finish()

        def put_str(ctrl: Any, environ: Any) -> None:
            ctrl.put("text")

        def get_twice(ctrl: Any, environ: Any) -> None:
            ctrl.on_get(10, lambda data: None)
            ctrl.on_get(10, lambda data: None)

        def replaced_input(ctrl: Any, environ: Any) -> None:
            import io

            environ["wsgi.input"] = io.BytesIO(b"forged")
            ctrl.on_get(10, lambda data: None)

        def bad_length(ctrl: Any, environ: Any) -> None:
            ctrl.on_get(0, lambda data: None)

        def wrong_environ(environ: Dict[str, Any], start_response: Any) -> Any:
            environ["awsgi.controller"](dict(environ, **{"awsgi.controller": None}))

        await self.expect_500("/a", self.ctrl_app(put_after_finish), AlreadyFinished, "put() after finish()")
        await self.expect_500("/b", self.ctrl_app(finish_twice), AlreadyFinished, "finish() called twice")
        await self.expect_500("/c", self.ctrl_app(put_str), InvalidBody, "put() takes bytes, not str")
        await self.expect_500("/d", self.ctrl_app(get_twice), GetPending, "before its callback ran")
        await self.expect_500("/e", self.ctrl_app(replaced_input), InputReplaced, "middleware replaced wsgi.input")
        await self.expect_500("/f", self.ctrl_app(bad_length), ValueError, "must be a positive int")
        await self.expect_500("/g", wrong_environ, WrongEnviron, "the environ of its own request")
        await self.healthy()

    async def test_inCallbacks(self) -> None:
        """
        Misuse and errors in controller callbacks, which run later in the
        reactor: a 500 before output, a cut connection after.
        """
        await self.serve()

        def raise_in_get(ctrl: Any, environ: Any) -> None:
            def got(data: bytes) -> None:
                raise ValueError("on_get callback failed")

            ctrl.on_get(10, got)

        def misuse_in_get(ctrl: Any, environ: Any) -> None:
            def got(data: bytes) -> None:
                ctrl.finish()
                ctrl.put(b"late")

            ctrl.on_get(10, got)

        def raise_in_drain(ctrl: Any, environ: Any) -> None:
            ctrl.put(b"started")

            def drained() -> None:
                raise KeyError("on_drain callback failed")

            ctrl.on_drain(drained)

        def fail_later(ctrl: Any, environ: Any) -> None:
            def later() -> None:
                try:
                    raise ConnectionRefusedError("backend is down")
                except ConnectionRefusedError:
                    ctrl.fail()

            reactor.callLater(0.01, later)

        await self.expect_500("/a", self.ctrl_app(raise_in_get), ValueError, "on_get callback failed")
        await self.expect_500("/b", self.ctrl_app(misuse_in_get), AlreadyFinished, "put() after finish()")
        await self.expect_cut("/c", self.ctrl_app(raise_in_drain), KeyError, "on_drain callback failed")
        await self.expect_500("/d", self.ctrl_app(fail_later), ConnectionRefusedError, "backend is down")
        await self.healthy()

    async def test_onCloseRaises(self) -> None:
        """
        An C{on_close} callback that raises is logged; the delivered
        response is not affected.
        """
        await self.serve()

        def body(ctrl: Any, environ: Any) -> None:
            def closed(reason: Any) -> None:
                raise IndexError("on_close callback failed")

            ctrl.on_close(closed)
            ctrl.put(b"done")
            ctrl.finish()

        self.apps["/x"] = self.ctrl_app(body)
        client = await RawClient.connect(self.server)
        client.send(request("/x") + HELLO)
        responses = await client.wait_for_responses(2)
        self.assertEqual([(r.code, r.body) for r in responses], [(200, b"done"), (200, b"hello")])
        await eventually(lambda: self.logged("Error in a controller on_close callback"))
        self.errors(IndexError, "on_close callback failed")

    async def test_onShutdownRaises(self) -> None:
        """
        An C{on_shutdown} callback that raises fails its own exchange (a
        500 here), logged; the drain still completes.
        """
        await self.serve()

        def body(ctrl: Any, environ: Any) -> None:
            def stopping() -> None:
                raise OverflowError("on_shutdown callback failed")

            ctrl.on_shutdown(stopping)

        self.apps["/x"] = self.ctrl_app(body)
        client = await RawClient.connect(self.server)
        client.send(request("/x"))
        await eventually(lambda: self.resource.in_flight == 1)
        await self.resource.shutdown()
        [response] = await client.wait_for_responses(1)
        self.assertEqual(response.code, 500)
        self.errors(OverflowError, "on_shutdown callback failed")

    async def test_putFromThreadAfterClientLeft(self) -> None:
        """
        A worker thread that goes on putting after the client left: C{put}
        answers C{False}, C{finish} is a no-op, nothing is raised or
        logged as an error, C{closed} says why, and the exchange is gone.
        """
        await self.serve()
        left = threading.Event()
        results: List[Any] = []

        def body(ctrl: Any, environ: Any) -> None:
            ctrl.on_close(lambda reason: left.set())

            def worker() -> None:
                ctrl.put(b"first\n")
                left.wait(10)
                time.sleep(0.05)
                try:
                    results.append([ctrl.put(b"x" * 100000) for _ in range(20)])
                    ctrl.finish()
                    results.append(ctrl.closed)
                except Exception as e:  # pragma: no cover - the failure
                    results.append(e)

            threading.Thread(target=worker, daemon=True).start()

        self.apps["/x"] = self.ctrl_app(body)
        client = await RawClient.connect(self.server)
        client.send(request("/x"))
        await client.wait_for(b"first\n")
        await client.abort()
        await eventually(lambda: len(results) == 2)
        self.assertEqual(results, [[False] * 20, True])
        await eventually(lambda: self.resource.in_flight == 0)
        self.assertEqual(self.flushLoggedErrors(), [])
        await self.healthy()


class HangingAppTests(_Misbehaving):
    async def test_neverFinishesWithDeadline(self) -> None:
        """
        With a request timeout, an application that never answers gets a
        503 and a precise log line; one that started answering is cut.
        """
        self.apps["/silent"] = lambda environ, sr: (sr("200 OK", [TEXT]), environ["awsgi.controller"](environ))[1]

        def started(environ: Any, sr: Any) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            sr("200 OK", [TEXT])
            ctrl.put(b"waiting\n")
            return ctrl

        self.apps["/started"] = started
        await self.serve(observers=[RequestDeadline(reactor, 0.3)])
        client = await RawClient.connect(self.server)
        client.send(request("/silent"))
        [response] = await client.wait_for_responses(1)
        self.assertEqual(response.code, 503)
        self.assertTrue(self.logged("GET /silent did not finish within the request timeout of 0.3s"))
        client = await RawClient.connect(self.server)
        client.send(request("/started"))
        await client.wait_closed()
        [response] = parse_response(client.received, eof=False)
        self.assertFalse(response.complete)
        await self.healthy()

    async def test_neverFinishesWithoutDeadline(self) -> None:
        """
        Without one, it holds only its own connection: others are served
        meanwhile, and when its client leaves it is closed and forgotten.
        """
        closing = Closing([])

        def forever(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", [TEXT])

            class Forever(Closing):
                def __next__(self) -> bytes:
                    return b""

            self.forever = Forever([])
            return self.forever

        self.apps["/forever"] = forever
        await self.serve()
        client = await RawClient.connect(self.server)
        client.send(request("/forever"))
        await eventually(lambda: self.resource.in_flight == 1)
        before = time.process_time()
        start = time.monotonic()
        for _ in range(5):
            await self.healthy()
        await sleep(1.5)
        # Backing off (1 ms doubling to 1 s), the spinning iterable costs
        # next to nothing.
        self.assertLess(time.process_time() - before, 0.5 * (time.monotonic() - start))
        await client.abort()
        await eventually(lambda: self.resource.in_flight == 0)
        self.assertEqual(self.forever.closes, 1)
        self.assertEqual(closing.closes, 0)
