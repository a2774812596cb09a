"""
Greenlet mode (C{AWSGIResource(..., greenlets=True)}, C{twistd awsgi
--greenlets}) over real sockets: unmodified blocking applications whose
C{wsgi.input} reads, C{write()} calls and L{txawsgi.runners.wait} suspend
only their own greenlet, while the reactor answers everyone else.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any, Callable, Dict, Iterator, List
from unittest import mock

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txawsgi import AWSGIResource
from txawsgi.errors import BodyTruncated, ClientDisconnected, WouldBlock
from txawsgi.runners import wait
from txawsgi.site import AWSGISite
from txawsgi.tap import Options

from ._extensions import (
    QUIET,
    Middleware,
    fetch,
    get,
    hello_while,
    load_example,
    run_example,
    spy_on_hashing,
    stalled_download,
    with_hello,
)
from ._streaming import digest, pattern, post
from .support import ProcessHandle, RawClient, eventually, free_port, listen, project_env, sleep, twistd_argv

greenlet = __import__("greenlet")

MiB = 1024 * 1024


def serve(testcase: TestCase, app: Any, **kw: Any) -> Deferred[Any]:
    """
    Serve C{app} (and C{/hello}) in greenlet mode under an L{AWSGISite}.
    """
    resource = AWSGIResource(reactor, with_hello(app), greenlets=True)
    testcase.resource = resource  # type: ignore[attr-defined]
    return listen(testcase, AWSGISite(resource), **kw)


class Closing:
    """
    A list-like iterable that records C{close()}.
    """

    def __init__(self, chunks: List[bytes], closes: List[Any]) -> None:
        self._chunks = iter(chunks)
        self._closes = closes

    def __iter__(self) -> "Closing":
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        self._closes.append(greenlet.getcurrent())


class InputTests(TestCase):
    """
    C{wsgi.input.read(n)} and C{readline()} wait for the body as it
    streams in, suspending only their request.
    """

    @inlineCallbacks
    def test_upload_streams(self) -> Any:
        """
        A plain application reads a line, then pieces: it sees the first
        bytes before the client has sent the rest, a hello is answered
        while it waits for them, and the answer covers the whole body.
        Its environ says C{wsgi.multithread} false and has no fdevent keys.
        """
        seen: List[Any] = []
        environs: List[Dict[str, Any]] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            environs.append(environ)
            stdin = environ["wsgi.input"]
            first = stdin.readline()
            seen.append(first)
            hasher = hashlib.sha256(first)
            size = len(first)
            while True:
                data = stdin.read(10_000)
                if not data:
                    break
                seen.append(len(data))
                hasher.update(data)
                size += len(data)
            body = b"%d %s" % (size, hasher.hexdigest().encode())
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]

        server = yield serve(self, app)
        client = yield RawClient.connect(server)
        body = b"the first line\n" + pattern(200_000)
        client.send(post(b"/", body)[: -150_000])
        yield eventually(lambda: seen and sum(seen[1:]) == len(body) - 150_000 - 15)
        self.assertEqual(seen[0], b"the first line\n")
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: client.received == b""))
        self.assertLess(took, 1.0)
        client.send(body[-150_000:])
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, digest(body))
        environ = environs[0]
        self.assertIs(environ["wsgi.multithread"], False)
        self.assertNotIn("x-wsgiorg.fdevent.readable", environ)
        self.assertIn("x-wsgiorg.suspend", environ)

    @inlineCallbacks
    def test_truncated_upload(self) -> Any:
        """
        A client that leaves mid-upload: the waiting read raises a
        C{ConnectionError}, the application unwinds, its iterable is closed
        and the exchange ends.
        """
        raised: List[BaseException] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            try:
                environ["wsgi.input"].read()
            except ConnectionError as e:
                raised.append(e)
                raise
            start_response("200 OK", [])
            return [b"unreachable"]

        server = yield serve(self, app)
        client = yield RawClient.connect(server)
        client.send(post(b"/", b"x" * 1000)[:-500])
        yield sleep(0.05)
        yield client.abort()
        yield eventually(lambda: raised)
        yield eventually(lambda: self.resource.in_flight == 0)
        self.flushLoggedErrors(ConnectionError)


class WriteTests(TestCase):
    """
    C{write()} to a slow client waits for it, suspending only its request.
    """

    @inlineCallbacks
    def test_large_response_slow_reader(self) -> Any:
        """
        Writing 4 MiB to a client that does not read: the application stops
        in C{write()} (its progress stalls), a hello is answered meanwhile,
        and once the client reads, every byte arrives in order.
        """
        blocks = [pattern(64 * 1024, i) for i in range(64)]
        progress = [0]
        closes: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            write = start_response("200 OK", [("Content-Length", str(sum(map(len, blocks))))])
            for block in blocks:
                write(block)
                progress[0] += 1
            return Closing([], closes)

        server = yield serve(self, app, sndbuf=16 * 1024)
        yield Deferred.fromCoroutine(stalled_download(self, server, blocks, progress))
        self.assertEqual(progress[0], len(blocks))
        self.assertEqual(len(closes), 1)

    @inlineCallbacks
    def test_slow_reader_leaves(self) -> Any:
        """
        A client that leaves while the application is blocked in
        C{write()} inside its iterable: the write returns, the application
        finishes, its iterable is closed and the exchange ends.
        """
        closes: List[Any] = []
        writes = [0]

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
            try:
                yield b"start"
                for i in range(100):
                    write(b"x" * 65536)
                    writes[0] += 1
            finally:
                closes.append(True)

        server = yield serve(self, app, sndbuf=16 * 1024)
        client = yield RawClient.connect(server, rcvbuf=16 * 1024)
        client.pause_reading()
        client.send(get())
        yield sleep(QUIET)
        self.assertLess(writes[0], 100)
        yield client.abort()
        yield eventually(lambda: closes)
        yield eventually(lambda: self.resource.in_flight == 0)


class WaitTests(TestCase):
    """
    L{txawsgi.runners.wait}: any L{Deferred}, from plain code.
    """

    @inlineCallbacks
    def test_wait(self) -> Any:
        """
        C{wait()} returns what a L{Deferred} fires with, later or at once,
        and raises what it fails with.
        """
        got: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            got.append(wait(deferLater(reactor, 0.05, lambda: "later")))
            got.append(wait(Deferred.fromCoroutine(_at_once())))
            for failing in (fail(KeyError("now")), deferLater(reactor, 0.01, _raise)):
                try:
                    wait(failing)
                except (KeyError, ZeroDivisionError) as e:
                    got.append(type(e).__name__)
            start_response("200 OK", [("Content-Length", "4")])
            return [b"done"]

        server = yield serve(self, app)
        response = yield fetch(server)
        self.assertEqual(response.body, b"done")
        self.assertEqual(got, ["later", "at once", "KeyError", "ZeroDivisionError"])

    @inlineCallbacks
    def test_each_request_its_greenlet(self) -> Any:
        """
        Fifty requests waiting at once each run in a greenlet of their own
        (not the reactor's); a hello is answered while they all wait.
        """
        current: List[Any] = []
        main = greenlet.getcurrent()
        gate: Deferred[None] = Deferred()

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            me = greenlet.getcurrent()
            current.append(me)
            wait(gate)
            assert greenlet.getcurrent() is me
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]

        server = yield serve(self, app)
        clients = []
        for _ in range(50):
            client = yield RawClient.connect(server)
            client.send(get())
            clients.append(client)
        yield eventually(lambda: len(current) == 50)
        self.assertEqual(len(set(map(id, current))), 50)
        self.assertNotIn(main, current)
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: not gate.called))
        self.assertLess(took, 1.0)
        gate.callback(None)
        for client in clients:
            [response] = yield client.wait_for_responses(1)
            self.assertEqual(response.body, b"ok")

    @inlineCallbacks
    def test_resumed_from_another_greenlet(self) -> Any:
        """
        A request whose L{Deferred} is fired by another request's greenlet
        is resumed from there, and its next wait returns to that greenlet,
        not to the reactor's: both requests complete.
        """
        shared: List[Deferred[str]] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            if environ["PATH_INFO"] == "/wait":
                d: Deferred[str] = Deferred()
                shared.append(d)
                value = wait(d)
                wait(deferLater(reactor, 0.02, lambda: None))
                body = b"got " + value.encode()
            else:
                shared.pop().callback("news")
                wait(deferLater(reactor, 0.02, lambda: None))
                body = b"fired"
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]

        server = yield serve(self, app)
        waiter = yield RawClient.connect(server)
        waiter.send(get(b"/wait"))
        yield eventually(lambda: shared)
        firer = yield RawClient.connect(server)
        firer.send(get(b"/fire"))
        [fired] = yield firer.wait_for_responses(1)
        [waited] = yield waiter.wait_for_responses(1)
        self.assertEqual((fired.body, waited.body), (b"fired", b"got news"))

    @inlineCallbacks
    def test_outside_a_greenlet(self) -> Any:
        """
        In the reactor thread proper, C{wait()} on a pending L{Deferred}
        raises L{WouldBlock}; on a fired one it returns its result.
        """
        got: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            got.append(wait(Deferred.fromCoroutine(_at_once())))
            try:
                wait(Deferred())
            except WouldBlock as e:
                got.append(type(e).__name__)
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]

        server = yield listen(self, AWSGIResource(reactor, app))
        client = yield RawClient.connect(server)
        client.send(get())
        yield client.wait_for_responses(1)
        self.assertEqual(got, ["at once", "WouldBlock"])


async def _at_once() -> str:
    return "at once"


def _raise() -> None:
    1 / 0


class ClientLeavesTests(TestCase):
    """
    A client that leaves while its application waits: the wait raises
    (L{ClientDisconnected}, or L{BodyTruncated} for a read of the body it
    did not finish), the application unwinds, its iterable is closed, and
    no greenlet stays parked on what it waited for, which never fires.
    """

    #: How long the unwinding may take (it takes two reactor turns).
    BOUND = 2.0

    def setUp(self) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def assert_quiet(self) -> Any:
        """
        The exception the application let escape was logged once, at info
        and without a traceback, as a client that left, not as an
        application error.
        """

        def quiet() -> List[Dict[str, Any]]:
            return [e for e in list(self.events) if "Client left while the application waited" in formatEvent(e)]

        yield eventually(quiet, timeout=self.BOUND)
        self.assertEqual([e["log_level"] for e in quiet()], [LogLevel.info])
        self.assertNotIn("log_failure", quiet()[0])
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def leave_while_waiting(self, app: Any, data: bytes, started: List[Any]) -> Any:
        """
        Serve C{app}, send C{data}, and once C{started} has a greenlet in it
        (the application waits) leave; fire when that greenlet has ended,
        no greenlet waits and the exchange is over.
        """
        server = yield serve(self, app)
        client = yield RawClient.connect(server)
        client.send(data)
        yield eventually(lambda: started)
        yield sleep(0.05)
        self.assertFalse(started[0].dead)
        runner = self.resource._container.runner
        self.assertEqual(runner.parked, 1)
        yield client.abort()
        yield eventually(lambda: started[0].dead, timeout=self.BOUND)
        self.assertEqual(runner.parked, 0)
        yield eventually(lambda: self.resource.in_flight == 0, timeout=self.BOUND)

    @inlineCallbacks
    def test_call_waiting(self) -> Any:
        """
        The application callable waits: C{wait()} raises
        L{ClientDisconnected}; the application returns an iterable anyway,
        which is closed.
        """
        never: Deferred[None] = Deferred()
        started: List[Any] = []
        raised: List[BaseException] = []
        closes: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            started.append(greenlet.getcurrent())
            try:
                wait(never)
            except ClientDisconnected as e:
                raised.append(e)
            start_response("200 OK", [("Content-Length", "2")])
            return Closing([b"ok"], closes)

        yield self.leave_while_waiting(app, get(), started)
        self.assertEqual([type(e) for e in raised], [ClientDisconnected])
        yield eventually(lambda: closes, timeout=self.BOUND)
        self.assertFalse(never.called)

    @inlineCallbacks
    def test_iterable_waiting(self) -> Any:
        """
        The iterable waits for its next chunk: the wait raises
        L{ClientDisconnected} out of C{__next__}, and C{close()} runs.
        """
        never: Deferred[None] = Deferred()
        started: List[Any] = []
        closes: List[Any] = []

        class Waiting(Closing):
            def __next__(self) -> bytes:
                started.append(greenlet.getcurrent())
                wait(never)
                return b"unreachable"

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return Waiting([], closes)

        yield self.leave_while_waiting(app, get(), started)
        yield eventually(lambda: closes, timeout=self.BOUND)
        yield from self.assert_quiet()
        self.assertFalse(never.called)

    @inlineCallbacks
    def test_call_lets_it_escape(self) -> Any:
        """
        The application callable does not catch the L{ClientDisconnected}
        its wait raises: that is a client that left, logged quietly, not an
        application error.
        """
        never: Deferred[None] = Deferred()
        started: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            started.append(greenlet.getcurrent())
            wait(never)
            return [b"unreachable"]  # pragma: no cover

        yield self.leave_while_waiting(app, get(), started)
        yield from self.assert_quiet()

    @inlineCallbacks
    def test_read_lets_it_escape(self) -> Any:
        """
        The same for the L{BodyTruncated} of a C{wsgi.input} read.
        """
        started: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            started.append(greenlet.getcurrent())
            environ["wsgi.input"].read()
            return [b"unreachable"]  # pragma: no cover

        yield self.leave_while_waiting(app, post(b"/", b"x" * 1000)[:-500], started)
        yield from self.assert_quiet()

    @inlineCallbacks
    def test_read_waiting(self) -> Any:
        """
        A C{wsgi.input} read waits for the rest of the body: it raises
        L{BodyTruncated}, which says more than L{ClientDisconnected}.
        """
        started: List[Any] = []
        raised: List[BaseException] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            started.append(greenlet.getcurrent())
            try:
                environ["wsgi.input"].read()
            except ConnectionError as e:
                raised.append(e)
            start_response("200 OK", [])
            return [b"unreachable"]

        yield self.leave_while_waiting(app, post(b"/", b"x" * 1000)[:-500], started)
        self.assertEqual([type(e) for e in raised], [BodyTruncated])


class ErrorTests(TestCase):
    """
    Exceptions and C{close()} in greenlet mode.
    """

    @inlineCallbacks
    def test_error_before_output(self) -> Any:
        """
        An exception raised after a wait, before any output: a 500.
        """

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            wait(deferLater(reactor, 0.01, lambda: None))
            raise ValueError("broken")

        server = yield serve(self, app)
        response = yield fetch(server)
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @inlineCallbacks
    def test_error_after_output(self) -> Any:
        """
        An exception in the iterable after output went out: the response
        is cut (no last chunk) and the iterable closed.
        """
        closes: List[Any] = []

        def body() -> Iterator[bytes]:
            try:
                yield b"partial "
                wait(deferLater(reactor, 0.01, lambda: None))
                raise ValueError("broken")
            finally:
                closes.append(True)

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return body()

        server = yield serve(self, Middleware(app))
        client = yield RawClient.connect(server)
        client.send(get())
        yield client.wait_closed()
        self.assertIn(b"partial ", client.received)
        self.assertNotIn(b"0\r\n\r\n", client.received)
        self.assertEqual(closes, [True])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @inlineCallbacks
    def test_close_called(self) -> Any:
        """
        C{close()} is called in a greenlet once the response is delivered,
        and when the client left while the application waited (the wait
        raised L{ClientDisconnected}; the application returned anyway).
        """
        closes: List[Any] = []
        raised: List[BaseException] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if environ["PATH_INFO"] == "/slow":
                slow = deferLater(reactor, 0.2, lambda: None)
                try:
                    wait(slow)
                except ClientDisconnected as e:
                    raised.append(e)
                    slow.cancel()
            start_response("200 OK", [("Content-Length", "2")])
            return Closing([b"ok"], closes)

        server = yield serve(self, app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield client.wait_for_responses(1)
        yield eventually(lambda: len(closes) == 1)
        leaver = yield RawClient.connect(server)
        leaver.send(get(b"/slow"))
        yield sleep(0.05)
        yield leaver.abort()
        yield eventually(lambda: len(closes) == 2)
        main = greenlet.getcurrent()
        self.assertNotIn(main, closes)
        self.assertEqual([type(e) for e in raised], [ClientDisconnected])
        yield eventually(lambda: self.resource.in_flight == 0)


class ExampleTests(TestCase):
    """
    The C{greenlet_upload} example under concurrent load.
    """

    def setUp(self) -> None:
        self.example = load_example("greenlet_upload")

    @inlineCallbacks
    def test_concurrent_uploads(self) -> Any:
        """
        Twenty uploads, each half sent, all read as far as they have
        arrived; a hello is answered while they wait for the rest; then
        each gets its own answer.
        """
        pieces = spy_on_hashing(self, self.example)
        server = yield serve(self, self.example.application)
        bodies = [pattern(120_000, i) for i in range(20)]
        clients = []
        for body in bodies:
            client = yield RawClient.connect(server)
            client.send(post(b"/", body)[:-50_000])
            clients.append(client)
        # Each read(65536) has returned once; the next waits for the rest.
        yield eventually(lambda: pieces == [65536] * 20)
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: all(not c.received for c in clients)))
        self.assertLess(took, 1.0)
        for body, client in zip(bodies, clients):
            client.send(body[-50_000:])
        for body, client in zip(bodies, clients):
            [response] = yield client.wait_for_responses(1)
            self.assertEqual(response.body, b"120000 bytes, sha256 %s\n" % hashlib.sha256(body).hexdigest().encode())

    @inlineCallbacks
    def test_concurrent_downloads(self) -> Any:
        """
        Twenty 2 MiB downloads to clients that do not read: a hello is
        answered while every writer waits; then all arrive whole.
        """
        server = yield serve(self, self.example.application, sndbuf=16 * 1024)
        clients = []
        for _ in range(20):
            client = yield RawClient.connect(server, rcvbuf=16 * 1024)
            client.pause_reading()
            client.send(get(b"/download?size=%d" % (2 * MiB)))
            clients.append(client)
        yield sleep(QUIET)
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: all(len(c.received) < MiB for c in clients)))
        self.assertLess(took, 1.0)
        lines = yield Deferred.fromCoroutine(self._lines(server))
        self.assertEqual(lines, b"3 lines, 9 bytes\n")
        self.assertTrue(all(len(c.received) < MiB for c in clients))
        for client in clients:
            client.resume_reading()
        expected = (self.example.BLOCK * 33)[: 2 * MiB]
        for client in clients:
            [response] = yield client.wait_for_responses(1, timeout=10)
            self.assertEqual(response.body, expected)

    async def _lines(self, server: Any) -> bytes:
        client = await RawClient.connect(server)
        client.send(post(b"/lines", b"a\nbb\nccc\n"))
        [response] = await client.wait_for_responses(1, timeout=1)
        await client.close()
        return response.body

    @inlineCallbacks
    def test_runs_as_a_script(self) -> Any:
        """
        C{python examples/greenlet_upload.py 0} serves the example.
        """
        proc, port = yield Deferred.fromCoroutine(run_example(self, "greenlet_upload"))
        client = yield RawClient.connect(("127.0.0.1", port), testcase=self)
        client.send(post(b"/", b"from a script") + get(b"/sleep?seconds=0.01"))
        first, second = yield client.wait_for_responses(2, timeout=10)
        self.assertEqual(first.body, b"13 bytes, sha256 %s\n" % hashlib.sha256(b"from a script").hexdigest().encode())
        self.assertEqual(second.body, b"slept 0.01 s\n")
        yield client.close()
        yield proc.terminate()


class OptionsTests(SynchronousTestCase):
    """
    C{twistd awsgi --greenlets}.
    """

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--app", "tests.tapapps:hello", *argv])
        return options

    def test_flag(self) -> None:
        self.assertTrue(self.parse("--greenlets")["greenlets"])
        self.assertFalse(self.parse()["greenlets"])
        self.assertIn("--greenlets", str(Options()))

    def test_not_with_threads(self) -> None:
        e = self.assertRaises(UsageError, self.parse, "--greenlets", "--threads", "4")
        self.assertIn("--greenlets and --threads", str(e))
        self.parse("--greenlets", "--threads", "0")

    def test_greenlet_missing(self) -> None:
        with mock.patch.dict(sys.modules, {"greenlet": None}):
            e = self.assertRaises(UsageError, self.parse, "--greenlets")
        self.assertIn("pip install txawsgi[greenlet]", str(e))


class TwistdTests(TestCase):
    """
    C{twistd -n awsgi --greenlets} serves a blocking application.
    """

    @inlineCallbacks
    def test_serves(self) -> Any:
        port = free_port()
        proc = ProcessHandle.start(
            self,
            twistd_argv(
                "-n",
                "--pidfile=",
                "awsgi",
                "--greenlets",
                "--app",
                "greenlet_upload:application",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ),
            env=project_env(),
            path=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"),
        )
        yield proc.wait_for_output(b"Site starting", timeout=20)
        client = yield RawClient.connect(("127.0.0.1", port), testcase=self)
        client.send(post(b"/lines", b"one\ntwo\n") + get(b"/sleep?seconds=0.01"))
        first, second = yield client.wait_for_responses(2, timeout=10)
        self.assertEqual(first.body, b"2 lines, 8 bytes\n")
        self.assertEqual(second.body, b"slept 0.01 s\n")
        yield client.close()
        yield proc.terminate()
