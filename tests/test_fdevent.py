"""
C{x-wsgiorg.fdevent} (L{txawsgi.fdevent}) over real sockets: applications
written to the wsgi.org text -- call C{readable(fd)} or C{writable(fd)},
yield C{b''}, go on when resumed -- waiting on pipes (int descriptors and
file objects), on non-blocking sockets to a backend, with timeouts, on
hang-ups and errors, through middleware that copies the environ and wraps
the iterable, and misused.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any, Callable, Dict, Iterator, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase

from txawsgi import AWSGIResource
from txawsgi.errors import ExtensionMisuse
from txawsgi.fdevent import _Descriptor

from ._extensions import QUIET, Middleware, Pipe, fetch, get, hello_while, load_example, run_example, with_hello
from .support import RawClient, eventually, listen, sleep
from ._streaming import start_pool

READABLE = "x-wsgiorg.fdevent.readable"
WRITABLE = "x-wsgiorg.fdevent.writable"
TIMEOUT = "x-wsgiorg.fdevent.timeout"


def watched() -> List[Any]:
    """
    The descriptors fdevent has registered with the reactor right now.
    """
    return [d for d in list(reactor.getReaders()) + list(reactor.getWriters()) if isinstance(d, _Descriptor)]


def no_watches() -> bool:
    return not watched()


def start(start_response: Callable[..., Any]) -> None:
    start_response("200 OK", [("Content-Type", "text/plain")])


class ServeMixin:
    def serve(self, app: Any, **kw: Any) -> Deferred[Any]:
        return listen(self, AWSGIResource(reactor, with_hello(app), **kw))  # type: ignore[arg-type]


class PipeTests(ServeMixin, TestCase):
    """
    Waiting on a pipe: by descriptor number or by an object with
    C{fileno()}, for reading and writing, with and without a timeout.
    """

    @inlineCallbacks
    def test_readable_int(self) -> Any:
        """
        An application waiting on C{readable(fd)} with an int descriptor is
        not iterated again until the pipe has data (nor does it spin while
        it waits), is resumed each time it does, with the timeout flag
        false, and streams what it reads.
        """
        pipe = Pipe(self)
        events: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            while True:
                environ[READABLE](pipe.r)
                events.append("wait")
                yield b""
                events.append(environ[TIMEOUT])
                data = os.read(pipe.r, 100)
                if not data:
                    return
                yield data

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: events == ["wait"])
        yield sleep(QUIET)
        self.assertEqual(events, ["wait"])
        self.assertEqual(client.received, b"")
        self.assertEqual([d.fileno() for d in watched()], [pipe.r])

        os.write(pipe.w, b"first")
        yield client.wait_for(b"first")
        self.assertEqual(events, ["wait", False, "wait"])
        self.assertIs(events[1] == False, True)  # noqa: E712 (the flag compares to bools)
        os.write(pipe.w, b"second")
        yield client.wait_for(b"second")
        pipe.close_write()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"firstsecond")
        self.assertEqual(events, ["wait", False, "wait", False, "wait", False])
        self.assertEqual(watched(), [])

    @inlineCallbacks
    def test_file_objects(self) -> Any:
        """
        File objects are watched through their C{fileno()}: C{readable} on
        the read end, then C{writable} on a full write end, which resumes
        the application only once the test has drained the pipe.
        """
        pipe = Pipe(self)
        reader = os.fdopen(os.dup(pipe.r), "rb", buffering=0)
        writer = os.fdopen(os.dup(pipe.w), "wb", buffering=0)
        self.addCleanup(reader.close)
        self.addCleanup(writer.close)
        events: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            environ[READABLE](reader)
            events.append("readable?")
            yield b""
            yield reader.read(100) + b"\n"
            while writer.write(b"y" * 65536) is not None:
                pass
            environ[WRITABLE](writer)
            events.append("writable?")
            yield b""
            events.append(bool(environ[TIMEOUT]))
            yield b"writable again\n"

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: events == ["readable?"])
        os.write(pipe.w, b"from the test")
        yield client.wait_for(b"from the test\n")
        yield eventually(lambda: events == ["readable?", "writable?"])
        yield sleep(QUIET)
        self.assertEqual(events, ["readable?", "writable?"])
        self.assertNotIn(b"writable again", client.received)
        self.assertGreater(pipe.drain(), 0)
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"from the test\nwritable again\n")
        self.assertEqual(events, ["readable?", "writable?", False])

    @inlineCallbacks
    def test_float_timeout_through_middleware(self) -> Any:
        """
        A float timeout resumes the application with the flag true; the
        next wait, ended by data, leaves it false -- read from the copy of
        the environ that middleware made, through a generator that wraps
        the iterable.  The second wait's timer does not outlive it.
        """
        pipe = Pipe(self)
        seen: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            assert environ["test.middleware"]
            start(start_response)
            began = time.monotonic()
            environ[READABLE](pipe.r, 0.05)
            yield b""
            seen.append((bool(environ[TIMEOUT]), time.monotonic() - began))
            environ[READABLE](pipe.r, 30.0)
            seen.append("waiting")
            yield b""
            seen.append(bool(environ[TIMEOUT]))
            yield os.read(pipe.r, 100)

        middleware = Middleware(app)
        server = yield self.serve(middleware)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: "waiting" in seen)
        timed_out, took = seen[0]
        self.assertIs(timed_out, True)
        self.assertGreaterEqual(took, 0.04)
        os.write(pipe.w, b"data")
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"data")
        self.assertEqual(seen[1:], ["waiting", False])
        self.assertEqual(middleware.chunks, [b"", b"", b"data"])
        self.assertEqual(middleware.closed, 1)
        # No fdevent timer left behind (trial would also call it dirty).
        self.assertEqual([c for c in reactor.getDelayedCalls() if "FdEvents" in repr(c)], [])

    @inlineCallbacks
    def test_hang_up(self) -> Any:
        """
        Closing the write end of a pipe (a hang-up, no data) resumes an
        application waiting to read it, with the flag false.
        """
        pipe = Pipe(self)

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            environ[READABLE](pipe.r, 30)
            yield b""
            yield b"eof=%r timeout=%r" % (os.read(pipe.r, 10), bool(environ[TIMEOUT]))

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: watched())
        pipe.close_write()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"eof=b'' timeout=False")

    @inlineCallbacks
    def test_error_condition(self) -> Any:
        """
        Closing the read end of a full pipe (an error condition for the
        writer) resumes an application waiting to write to it.
        """
        pipe = Pipe(self)
        pipe.fill()

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            environ[WRITABLE](pipe.w, 30)
            yield b""
            try:
                os.write(pipe.w, b"more")
            except BrokenPipeError:
                yield b"broken pipe, timeout=%r" % bool(environ[TIMEOUT])

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: watched())
        pipe.close_read()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"broken pipe, timeout=False")

    @inlineCallbacks
    def test_many_waiting_and_hello(self) -> Any:
        """
        Twenty requests each waiting on its own pipe hold no thread: a
        hello is answered while they all wait, and each is resumed by its
        own pipe alone.
        """
        pipes = [Pipe(self) for _ in range(20)]

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            pipe = pipes[int(environ["PATH_INFO"][1:])]
            start(start_response)
            environ[READABLE](pipe.r)
            yield b""
            yield os.read(pipe.r, 100)

        server = yield self.serve(app)
        clients = []
        for i in range(len(pipes)):
            client = yield RawClient.connect(server)
            client.send(get(b"/%d" % i))
            clients.append(client)
        yield eventually(lambda: len(watched()) == len(pipes))
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: len(watched()) == len(pipes)))
        self.assertLess(took, 1.0)
        for i in reversed(range(len(pipes))):
            os.write(pipes[i].w, b"pipe %d" % i)
            [response] = yield clients[i].wait_for_responses(1)
            self.assertEqual(response.body, b"pipe %d" % i)
            self.assertEqual(len(watched()), i)

    @inlineCallbacks
    def test_client_disconnect(self) -> Any:
        """
        When the client goes away, the watch is removed before the
        application's generator is closed (so it may close its descriptor).
        """
        pipe = Pipe(self)
        closed: List[int] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            try:
                environ[READABLE](pipe.r)
                yield b""
            finally:
                closed.append(len(watched()))
                pipe.close_read()

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: watched())
        yield client.abort()
        yield eventually(lambda: closed)
        self.assertEqual(closed, [0])
        self.assertEqual(watched(), [])


class BackendTests(ServeMixin, TestCase):
    """
    The C{fdevent_backend} example: a plain fdevent generator that talks to
    a backend over a non-blocking socket, unchanged.
    """

    def setUp(self) -> Any:
        self.example = load_example("fdevent_backend")
        return self.backend(delay=0.1)

    def backend(self, delay: float) -> Deferred[None]:
        """
        Start the example's backend, answering a line every C{delay}
        seconds, and point the application at it.
        """
        listening = serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            self.example.backend_factory(reactor, delay=delay)
        )
        return listening.addCallback(self._backend)

    def _backend(self, port: Any) -> None:
        self.addCleanup(port.stopListening)
        self.example.BACKEND = ("127.0.0.1", port.getHost().port)

    @inlineCallbacks
    def test_streams_backend_replies(self) -> Any:
        """
        Each reply is streamed to the client as the backend sends it: the
        first word is in before the backend has answered the last.
        """
        server = yield self.serve(self.example.application)
        client = yield RawClient.connect(server)
        began = time.monotonic()
        client.send(get(b"/?w=one&w=two&w=three"))
        yield client.wait_for(b"ONE\n")
        self.assertNotIn(b"THREE", client.received)
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"ONE\nTWO\nTHREE\n")
        self.assertGreaterEqual(time.monotonic() - began, 0.3)
        self.assertEqual(watched(), [])

    @inlineCallbacks
    def test_concurrent(self) -> Any:
        """
        Ten requests wait on the backend at once; a hello is answered while
        all of them wait, and each gets its own words back.
        """
        yield self.backend(delay=0.5)
        server = yield self.serve(self.example.application)
        clients = []
        for i in range(10):
            client = yield RawClient.connect(server)
            client.send(get(b"/?w=a%d&w=b%d" % (i, i)))
            clients.append(client)
        yield eventually(lambda: len(watched()) == 10)
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: all(not c.received for c in clients)))
        self.assertLess(took, 0.5)
        for i, client in enumerate(clients):
            [response] = yield client.wait_for_responses(1)
            self.assertEqual(response.body, b"A%d\nB%d\n" % (i, i))

    @inlineCallbacks
    def test_connection_refused(self) -> Any:
        """
        A refused connection (an error on the socket) resumes the
        application, which answers 502.
        """
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            self.example.BACKEND = unused.getsockname()
        server = yield self.serve(self.example.application)
        response = yield fetch(server)
        self.assertEqual(response.code, 502)
        self.assertIn(b"ECONNREFUSED", response.body)

    @inlineCallbacks
    def test_backend_timeout(self) -> Any:
        """
        A backend slower than the application's timeout: the flag tells it
        so, and it says so and ends.
        """
        self.patch(self.example, "TIMEOUT", 0.05)
        server = yield self.serve(self.example.application)
        response = yield fetch(server, b"/?w=late")
        self.assertEqual(response.body, b"(the backend is too slow; giving up)\n")

    @inlineCallbacks
    def test_runs_as_a_script(self) -> Any:
        """
        C{python examples/fdevent_backend.py 0} starts its backend and
        serves the application on a free port.
        """
        proc, port = yield Deferred.fromCoroutine(run_example(self, "fdevent_backend"))
        client = yield RawClient.connect(("127.0.0.1", port), testcase=self)
        client.send(get(b"/?w=from&w=a&w=script"))
        [response] = yield client.wait_for_responses(1, timeout=10)
        self.assertEqual(response.body, b"FROM\nA\nSCRIPT\n")
        yield client.close()
        yield proc.terminate()


class RawBackendTests(ServeMixin, TestCase):
    """
    A backend that is a plain Twisted echo server, and an application that
    is nothing but the fdevent idiom on a socket.
    """

    @inlineCallbacks
    def test_echo(self) -> Any:
        """
        Connect, wait writable, send, wait readable, receive: the echo of
        what was sent, in one response.
        """
        echo = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            Factory.forProtocol(type("Echo", (Protocol,), {"dataReceived": lambda self, data: self.transport.write(data)}))
        )
        self.addCleanup(echo.stopListening)
        address = ("127.0.0.1", echo.getHost().port)

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            sock = socket.socket()
            sock.setblocking(False)
            try:
                assert sock.connect_ex(address) in (0, errno.EINPROGRESS)
                environ[WRITABLE](sock.fileno(), 5.0)
                yield b""
                sock.send(b"ping")
                received = b""
                while len(received) < 4:
                    environ[READABLE](sock, 5.0)
                    yield b""
                    assert not environ[TIMEOUT]
                    received += sock.recv(4)
                start(start_response)
                yield received
            finally:
                sock.close()

        server = yield self.serve(app)
        response = yield fetch(server)
        self.assertEqual(response.body, b"ping")


class MisuseTests(ServeMixin, TestCase):
    """
    Misuse is refused precisely, and leaves nothing watched.
    """

    @inlineCallbacks
    def test_second_call_before_yield(self) -> Any:
        """
        A second call before the application yielded raises
        L{ExtensionMisuse} at the call; let through, it is a 500.
        """
        pipe = Pipe(self)
        raised: List[BaseException] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            environ[READABLE](pipe.r)
            try:
                environ[WRITABLE](pipe.w)
            except ExtensionMisuse as e:
                raised.append(e)
                raise
            yield b""

        server = yield self.serve(app)
        response = yield fetch(server)
        self.assertEqual(response.code, 500)
        self.assertIn("called again before the application yielded", str(raised[0]))
        self.assertEqual(len(self.flushLoggedErrors(ExtensionMisuse)), 1)
        self.assertEqual(watched(), [])

    @inlineCallbacks
    def test_non_empty_yield(self) -> Any:
        """
        A non-empty chunk right after the call fails the request with
        L{ExtensionMisuse} (a 500, logged) and removes the watch.
        """
        pipe = Pipe(self)

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            environ[READABLE](pipe.r, 30)
            yield b"too soon"

        server = yield self.serve(Middleware(app))
        response = yield fetch(server)
        self.assertEqual(response.code, 500)
        self.assertNotIn(b"too soon", response.body)
        [error] = self.flushLoggedErrors(ExtensionMisuse)
        self.assertIn("must yield b''", str(error.value))
        self.assertEqual(watched(), [])

    @inlineCallbacks
    def test_bad_arguments(self) -> Any:
        """
        A descriptor that is neither an int nor has C{fileno()}, a negative
        timeout, or a descriptor the reactor refuses (not open) raise at the
        call and leave nothing armed: the application may go on and yield
        data.
        """
        if type(reactor).__name__ != "EPollReactor":
            raise SkipTest("needs a reactor that checks descriptors when they are added (epoll)")
        raised: List[str] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            for fd, timeout in [("nope", None), (0, -1.0), (999_999, None)]:
                try:
                    environ[READABLE](fd, timeout)
                except Exception as e:
                    raised.append(type(e).__name__)
            yield b"still fine"

        server = yield self.serve(app)
        response = yield fetch(server)
        self.assertEqual((response.code, response.body), (200, b"still fine"))
        self.assertEqual(raised, ["TypeError", "ValueError", "OSError"])
        self.assertEqual(watched(), [])


class ModesTests(TestCase):
    """
    fdevent is a reactor-thread extension.
    """

    @inlineCallbacks
    def test_not_in_threadpool_mode(self) -> Any:
        keys: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            keys.append(sorted(k for k in environ if k.startswith("x-wsgiorg.")))
            start(start_response)
            return [b"ok"]

        server = yield listen(self, AWSGIResource(reactor, app, start_pool(self)))
        client = yield RawClient.connect(server)
        client.send(get())
        yield client.wait_for_responses(1)
        self.assertEqual(keys, [["x-wsgiorg.suspend"]])
