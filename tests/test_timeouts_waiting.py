"""
C{--request-timeout} against applications that wait in a worker thread or a
greenlet: a C{wsgi.input} read on a trickling body, a greenlet's
C{wait(d)}.  When the timeout fires the wait raises L{RequestTimedOut}, the
client gets the timeout's answer (C{503}), C{close()} runs and the thread or
greenlet is free for the next request, with nothing logged as an
application error.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from txawsgi import AWSGIResource
from txawsgi.errors import RequestTimedOut
from txawsgi.site import AWSGISite
from txawsgi.timeouts import RequestDeadline

from .support import RawClient, eventually, listen, sleep

#: The request timeout, in seconds.
LIMIT = 0.3

HELLO = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


def upload_head(path: bytes, length: int = 1000) -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length


class _Closing:
    """
    An iterable of C{chunks} that records C{close()}; C{pull} (if given)
    runs before the first chunk.
    """

    def __init__(self, chunks: List[bytes], closes: List[str], pull: Optional[Callable[[], None]] = None) -> None:
        self._chunks = iter(chunks)
        self._closes = closes
        self._pull = pull

    def __iter__(self) -> "_Closing":
        return self

    def __next__(self) -> bytes:
        pull, self._pull = self._pull, None
        if pull is not None:
            pull()
        return next(self._chunks)

    def close(self) -> None:
        self._closes.append("closed")


class _WaitingTimeouts(TestCase):
    """
    The application waits on a trickling body (or a L{Deferred}) past the
    request timeout.  Subclasses say where it runs.
    """

    timeout = 30
    greenlets = False

    def setUp(self) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.raised: List[BaseException] = []
        self.closes: List[str] = []
        self.pool: Optional[ThreadPool] = None
        if not self.greenlets:
            # One worker: the next request is served only if it was freed.
            pool = self.pool = ThreadPool(minthreads=1, maxthreads=1, name="timeouts-waiting")
            pool.start()
            self.addCleanup(lambda: deferToThread(pool.stop))

    def read_body(self, environ: Dict[str, Any]) -> None:
        try:
            environ["wsgi.input"].read()
        except RequestTimedOut as e:
            self.raised.append(e)
            raise

    def app(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ["PATH_INFO"]
        if path == "/hello":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
            return [b"hello"]
        if path == "/read-in-call":
            # The application callable itself reads, and lets the timeout
            # escape.
            self.read_body(environ)
        if path == "/read-in-iterable":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return _Closing([b"unreachable"], self.closes, lambda: self.read_body(environ))
        if path == "/read-then-return":
            # Catches the timeout and returns an iterable anyway: closed.
            try:
                environ["wsgi.input"].read()
            except RequestTimedOut as e:
                self.raised.append(e)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return _Closing([b"late"], self.closes)
        if path == "/wait-in-call":
            from txawsgi.runners import wait

            never: Deferred[None] = Deferred()
            try:
                wait(never)
            except RequestTimedOut as e:
                self.raised.append(e)
                raise
        raise AssertionError(f"unexpected path {path}")  # pragma: no cover

    async def serve(self) -> Any:
        self.resource = AWSGIResource(
            reactor,
            self.app,
            threadpool=self.pool,
            greenlets=self.greenlets,
            observers=[RequestDeadline(reactor, LIMIT)],
        )
        self.server = await listen(self, AWSGISite(self.resource))
        return self.server

    def logged(self, text: str) -> List[Dict[str, Any]]:
        return [e for e in list(self.events) if text in formatEvent(e)]

    async def trickle(self, path: bytes) -> Any:
        """
        Upload to C{path} a byte every 50 ms, never finishing the body, until
        the server answers; return that answer and how long it took.
        """
        client = await RawClient.connect(self.server)
        client.send(upload_head(path) + b"x")
        start = reactor.seconds()
        for _ in range(60):
            if client.closed or b"\r\n\r\n" in client.received:
                break
            client.send(b"x")
            await sleep(0.05)
        [response] = await client.wait_for_responses(1)
        elapsed = reactor.seconds() - start
        await client.abort()
        return response, elapsed

    async def assert_freed(self) -> None:
        """
        The waiting thread or greenlet was released: the exchange is over,
        no greenlet is parked, and the next requests are served (by the one
        worker thread, in thread mode).
        """
        await eventually(lambda: self.resource.in_flight == 0)
        runner = self.resource._container.runner
        self.assertEqual(getattr(runner, "parked", 0), 0)
        for _ in range(2):
            client = await RawClient.connect(self.server)
            client.send(HELLO)
            [response] = await client.wait_for_responses(1)
            self.assertEqual((response.code, response.body), (200, b"hello"))
            await client.close()

    def assert_quiet(self, text: str = "Application woken by the request timeout") -> None:
        """
        The escaped L{RequestTimedOut} was logged at info, without a
        traceback, and nothing was logged as an application error.
        """
        self.assertEqual(self.flushLoggedErrors(), [])
        quiet = self.logged(text)
        self.assertTrue(quiet, [formatEvent(e) for e in self.events])
        self.assertEqual({e["log_level"] for e in quiet}, {LogLevel.info})
        self.assertFalse([e for e in self.events if e.get("log_level") is LogLevel.critical])

    async def test_readInCall(self) -> None:
        """
        A C{wsgi.input} read in the application callable, waiting for a
        body that trickles: it raises L{RequestTimedOut} when the timeout
        fires, the client gets a 503, and the thread or greenlet is freed.
        """
        await self.serve()
        response, elapsed = await self.trickle(b"/read-in-call")
        self.assertEqual(response.code, 503)
        self.assertLess(elapsed, LIMIT + 2)
        await eventually(lambda: self.raised)
        self.assertEqual([type(e) for e in self.raised], [RequestTimedOut])
        self.assertIn("did not finish within the request timeout", str(self.raised[0]))
        await self.assert_freed()
        self.assert_quiet()

    async def test_readInIterable(self) -> None:
        """
        The iterable reads the body in its C{__next__}: the read raises
        L{RequestTimedOut}, the client gets a 503 (nothing was sent yet),
        C{close()} runs, and the thread or greenlet is freed.
        """
        await self.serve()
        response, elapsed = await self.trickle(b"/read-in-iterable")
        self.assertEqual(response.code, 503)
        self.assertLess(elapsed, LIMIT + 2)
        await eventually(lambda: self.closes)
        self.assertEqual([type(e) for e in self.raised], [RequestTimedOut])
        await self.assert_freed()
        self.assert_quiet()

    async def test_readCaughtIterableClosed(self) -> None:
        """
        An application that catches the timeout and returns an iterable
        anyway: the client still has its 503, and the iterable is closed
        without being iterated.
        """
        await self.serve()
        response, elapsed = await self.trickle(b"/read-then-return")
        self.assertEqual((response.code, response.body.startswith(b"late")), (503, False))
        await eventually(lambda: self.closes)
        self.assertEqual([type(e) for e in self.raised], [RequestTimedOut])
        await self.assert_freed()
        self.assertEqual(self.flushLoggedErrors(), [])


class ThreadTimeoutTests(_WaitingTimeouts):
    """
    In a one-thread pool.
    """


class GreenletTimeoutTests(_WaitingTimeouts):
    """
    In greenlets; also a greenlet parked in C{wait(d)} on a L{Deferred}
    that never fires.
    """

    greenlets = True

    async def test_waitInCall(self) -> None:
        """
        C{wait(d)} on a L{Deferred} that never fires: it raises
        L{RequestTimedOut} (two reactor turns after the timeout), the
        client gets its 503, and no greenlet stays parked.
        """
        await self.serve()
        client = await RawClient.connect(self.server)
        client.send(b"GET /wait-in-call HTTP/1.1\r\nHost: x\r\n\r\n")
        [response] = await client.wait_for_responses(1)
        self.assertEqual(response.code, 503)
        await eventually(lambda: self.raised)
        self.assertEqual([type(e) for e in self.raised], [RequestTimedOut])
        await client.close()
        await self.assert_freed()
        self.assert_quiet()


# Run only through the subclasses, which say where the application runs.
del _WaitingTimeouts
