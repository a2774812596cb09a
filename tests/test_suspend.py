"""
C{x-wsgiorg.suspend} (L{txawsgi.suspend}) over real sockets: suspend,
yield C{b''}, and be resumed by the returned callable -- from any thread,
any number of times -- or by the timeout; stale resume callables, middleware
that copies the environ and wraps the iterable, misuse, threadpool mode,
and the C{suspend_longpoll} example under concurrent load.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.python.threadable import isInIOThread
from twisted.trial.unittest import TestCase

from txawsgi import AWSGIResource
from txawsgi.errors import ExtensionMisuse

from ._extensions import QUIET, Middleware, fetch, get, hello_while, load_example, run_example, with_hello
from ._streaming import start_pool
from .support import RawClient, eventually, listen, sleep

SUSPEND = "x-wsgiorg.suspend"


def start(start_response: Callable[..., Any]) -> None:
    start_response("200 OK", [("Content-Type", "text/plain")])


class Recorder:
    """
    An application that suspends C{times} times (each with C{timeout}),
    keeping every resume callable, and reports what happened in C{events}.
    """

    def __init__(self, times: int = 1, timeout: Any = None) -> None:
        self.times = times
        self.timeout = timeout
        self.resumes: List[Callable[[], None]] = []
        self.events: List[Any] = []

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start(start_response)
        for i in range(self.times):
            began = time.monotonic()
            self.resumes.append(environ[SUSPEND](self.timeout))
            self.events.append(("suspended", i))
            yield b""
            self.events.append(("resumed", i, isInIOThread(), time.monotonic() - began))
            yield b"resumed %d\n" % i

    @property
    def resumed(self) -> List[Any]:
        return [e for e in self.events if e[0] == "resumed"]


class SuspendTests(TestCase):
    def serve(self, app: Any, **kw: Any) -> Deferred[Any]:
        return listen(self, AWSGIResource(reactor, with_hello(app), **kw))

    @inlineCallbacks
    def test_resume_from_a_thread(self) -> Any:
        """
        The application sleeps (it is not iterated, and polls nothing)
        until C{resume()} is called from another thread; it goes on in the
        reactor thread.
        """
        app = Recorder()
        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: app.resumes)
        yield sleep(QUIET)
        self.assertEqual(app.events, [("suspended", 0)])
        self.assertEqual(client.received, b"")
        called_in: List[bool] = []

        def resume() -> None:
            called_in.append(isInIOThread())
            app.resumes[0]()

        yield deferToThread(resume)
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"resumed 0\n")
        self.assertEqual(called_in, [False])
        [(_, _, in_reactor, _)] = app.resumed
        self.assertIs(in_reactor, True)

    @inlineCallbacks
    def test_resume_twice_and_stale(self) -> Any:
        """
        Calling C{resume} twice resumes once; the resume callable of an
        earlier suspension does nothing to a later one, whose own callable
        resumes it.
        """
        app = Recorder(times=2)
        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: app.resumes)
        first = app.resumes[0]
        first()
        first()
        yield client.wait_for(b"resumed 0\n")
        yield eventually(lambda: len(app.resumes) == 2)
        first()
        yield deferToThread(first)
        yield sleep(QUIET)
        self.assertEqual(len(app.resumed), 1)
        self.assertNotIn(b"resumed 1", client.received)
        app.resumes[1]()
        app.resumes[1]()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"resumed 0\nresumed 1\n")
        self.assertEqual(len(app.resumed), 2)

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        Without C{resume()}, the float timeout resumes the application.
        """
        app = Recorder(timeout=0.05)
        server = yield self.serve(app)
        response = yield fetch(server)
        self.assertEqual(response.body, b"resumed 0\n")
        [(_, _, _, took)] = app.resumed
        self.assertGreaterEqual(took, 0.04)

    @inlineCallbacks
    def test_resume_before_timeout(self) -> Any:
        """
        A resume before the timeout resumes at once and cancels the timer
        (trial would find it pending otherwise); a late resume is a no-op.
        """
        app = Recorder(timeout=30.0)
        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: app.resumes)
        app.resumes[0]()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"resumed 0\n")
        app.resumes[0]()

    @inlineCallbacks
    def test_resume_before_yield(self) -> Any:
        """
        An application that resumes itself before it yields is not
        suspended at all.
        """

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            environ[SUSPEND]()()
            yield b""
            yield b"never slept"

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        [response] = yield client.wait_for_responses(1, timeout=2)
        self.assertEqual(response.body, b"never slept")

    @inlineCallbacks
    def test_through_middleware(self) -> Any:
        """
        Through middleware that copies the environ and wraps the iterable
        in a generator, the suspension holds, C{resume} ends it, and the
        iterables are closed.
        """
        app = Recorder()
        middleware = Middleware(app)
        server = yield self.serve(middleware)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: app.resumes)
        yield sleep(QUIET)
        self.assertEqual(middleware.chunks, [b""])
        app.resumes[0]()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"resumed 0\n")
        self.assertEqual(middleware.chunks, [b"", b"resumed 0\n"])
        self.assertEqual(middleware.closed, 1)

    @inlineCallbacks
    def test_only_its_own_resume(self) -> Any:
        """
        While suspended, the application is not resumed by another wake
        source of its exchange (its controller being put to).
        """
        puts: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            ctrl = environ["awsgi.controller"](environ)
            resume = environ[SUSPEND]()
            puts.append((ctrl, resume))
            yield b""
            yield b"resumed"

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: puts)
        ctrl, resume = puts[0]
        ctrl.put(b"ignored")
        yield sleep(QUIET)
        self.assertEqual(client.received, b"")
        resume()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"resumed")

    @inlineCallbacks
    def test_client_disconnect(self) -> Any:
        """
        A client that leaves while the application is suspended: the
        iterable is closed, the timer cancelled, and a resume after that is
        harmless.
        """
        app = Recorder(timeout=30.0)
        middleware = Middleware(app)
        server = yield self.serve(middleware)
        client = yield RawClient.connect(server)
        client.send(get())
        yield eventually(lambda: app.resumes)
        yield client.abort()
        yield eventually(lambda: middleware.closed == 1)
        app.resumes[0]()
        yield deferToThread(app.resumes[0])
        self.assertEqual(app.resumed, [])


class MisuseTests(TestCase):
    """
    Misuse is refused with L{ExtensionMisuse}.
    """

    def serve(self, app: Any) -> Deferred[Any]:
        return listen(self, AWSGIResource(reactor, app))

    @inlineCallbacks
    def test_twice_before_yield(self) -> Any:
        raised: List[str] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            environ[SUSPEND](1.0)
            try:
                environ[SUSPEND]()
            except ExtensionMisuse as e:
                raised.append(str(e))
                raise
            yield b""

        server = yield self.serve(app)
        response = yield fetch(server)
        self.assertEqual(response.code, 500)
        self.assertIn("called again before the application yielded", raised[0])
        self.assertEqual(len(self.flushLoggedErrors(ExtensionMisuse)), 1)

    @inlineCallbacks
    def test_non_empty_yield(self) -> Any:
        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            environ[SUSPEND](30.0)
            yield b"not suspended"

        server = yield self.serve(app)
        response = yield fetch(server)
        self.assertEqual(response.code, 500)
        [error] = self.flushLoggedErrors(ExtensionMisuse)
        self.assertIn("Suspender: the application must yield b''", str(error.value))

    @inlineCallbacks
    def test_bad_timeout(self) -> Any:
        raised: List[str] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start(start_response)
            for timeout in (-1, "soon"):
                try:
                    environ[SUSPEND](timeout)
                except ValueError as e:
                    raised.append(type(e).__name__)
            yield b"fine"

        server = yield self.serve(app)
        response = yield fetch(server)
        self.assertEqual((response.code, response.body), (200, b"fine"))
        self.assertEqual(raised, ["ValueError", "ValueError"])


class ThreadpoolTests(TestCase):
    """
    An application in a worker thread suspends without holding the thread
    busy: its timeout and C{resume} work from there too.
    """

    @inlineCallbacks
    def test_timeout_and_resume(self) -> Any:
        pool = start_pool(self, maxthreads=1)
        app = Recorder(times=2, timeout=0.05)
        server = yield listen(self, AWSGIResource(reactor, with_hello(app), pool))
        client = yield RawClient.connect(server)
        client.send(get())
        yield client.wait_for(b"resumed 0\n")
        app.timeout = 30.0
        yield eventually(lambda: len(app.resumes) == 2)
        # The only worker is free while the app is suspended.
        hello = yield RawClient.connect(server)
        hello.send(get(b"/hello"))
        yield hello.wait_for_responses(1)
        yield deferToThread(app.resumes[1])
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"resumed 0\nresumed 1\n")
        self.assertEqual([e[2] for e in app.resumed], [False, False])


class GreenletTests(TestCase):
    """
    In greenlet mode, a suspended application's greenlet is not waiting on
    anything: the engine's own sleep holds it.
    """

    @inlineCallbacks
    def test_suspend_and_resume(self) -> Any:
        app = Recorder(times=2, timeout=0.05)
        server = yield listen(self, AWSGIResource(reactor, with_hello(app), greenlets=True))
        client = yield RawClient.connect(server)
        client.send(get())
        yield client.wait_for(b"resumed 0\n")
        app.timeout = 30.0
        yield eventually(lambda: len(app.resumes) == 2)
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: len(app.resumed) == 1))
        self.assertLess(took, 1.0)
        yield deferToThread(app.resumes[1])
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"resumed 0\nresumed 1\n")


class LongPollExampleTests(TestCase):
    """
    The C{suspend_longpoll} example: a message board whose waiters are
    suspended requests.
    """

    def setUp(self) -> None:
        self.example = load_example("suspend_longpoll")

    def serve(self) -> Deferred[Any]:
        return listen(self, AWSGIResource(reactor, with_hello(self.example.application)))

    @inlineCallbacks
    def test_streams_under_load(self) -> Any:
        """
        Fifty clients stream the board while a hello is answered at once;
        three messages published from a thread reach every one of them,
        each as it is published.
        """
        board = self.example.BOARD
        server = yield self.serve()
        clients = []
        for _ in range(50):
            client = yield RawClient.connect(server)
            client.send(get(b"/stream?count=3"))
            clients.append(client)
        yield eventually(lambda: board.waiting == 50)
        took = yield Deferred.fromCoroutine(hello_while(server, lambda: board.waiting == 50))
        self.assertLess(took, 1.0)
        yield deferToThread(board.publish, b"one")
        yield gatherResults([c.wait_for(b"4\r\none\n\r\n") for c in clients])
        self.assertFalse(any(b"two" in c.received for c in clients))
        yield eventually(lambda: board.waiting == 50)
        yield deferToThread(board.publish, b"two")
        yield deferToThread(board.publish, b"three")
        responses = yield gatherResults([c.wait_for_responses(1) for c in clients])
        for [response] in responses:
            self.assertEqual(response.body, b"one\ntwo\nthree\n")
        self.assertEqual(board.waiting, 0)

    @inlineCallbacks
    def test_poll(self) -> Any:
        """
        C{/poll} waits for the next message, published by a request;
        C{/poll?since=0} answers at once; a poll that times out answers
        empty; a client that leaves stops waiting.
        """
        board = self.example.BOARD
        server = yield self.serve()
        waiter = yield RawClient.connect(server)
        waiter.send(get(b"/poll"))
        leaver = yield RawClient.connect(server)
        leaver.send(get(b"/poll"))
        yield eventually(lambda: board.waiting == 2)
        yield leaver.abort()
        yield eventually(lambda: board.waiting == 1)
        publisher = yield RawClient.connect(server)
        publisher.send(get(b"/publish?text=news"))
        [published] = yield publisher.wait_for_responses(1)
        self.assertEqual(published.body, b"delivered to 1 waiting\n")
        [response] = yield waiter.wait_for_responses(1)
        self.assertEqual((response.body, response.header("X-Next-Since")), (b"news\n", "1"))
        waiter.clear()
        waiter.send(get(b"/poll?since=0") + get(b"/poll?timeout=0.05"))
        first, second = yield waiter.wait_for_responses(2)
        self.assertEqual(first.body, b"news\n")
        self.assertEqual((second.code, second.body), (200, b""))

    @inlineCallbacks
    def test_runs_as_a_script(self) -> Any:
        """
        C{python examples/suspend_longpoll.py 0} serves the board.
        """
        proc, port = yield Deferred.fromCoroutine(run_example(self, "suspend_longpoll"))
        waiter = yield RawClient.connect(("127.0.0.1", port), testcase=self)
        waiter.send(get(b"/stream?count=1"))
        yield sleep(0.2)
        publisher = yield RawClient.connect(("127.0.0.1", port), testcase=self)
        publisher.send(get(b"/publish?text=hi"))
        yield publisher.wait_for_responses(1)
        [response] = yield waiter.wait_for_responses(1)
        self.assertEqual(response.body, b"hi\n")
        yield proc.terminate()
