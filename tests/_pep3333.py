"""
Fixtures shared by the PEP 3333 conformance tests (C{test_pep3333_*.py}).

L{Served} is a mixin for L{twisted.trial.unittest.TestCase}: every app it
serves is wrapped in C{wsgiref.validate.validator} (unless a test opts out
because the misuse it exercises is one the validator itself flags), every
validator complaint fails the test, and log events are captured so tests can
look for the lines and errors the container logged.  Subclasses set
C{threaded = True} to run the same tests with the app in a L{ThreadPool}.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support import (
    RawClient,
    Server,
    assert_no_wsgi_warnings,
    eventually,
    listen,
    listen_unix,
    validated,
)
from txawsgi import AWSGIResource

#: A Content-Type for apps: wsgiref.validate insists on one (but for 204/304).
TEXT = ("Content-Type", "text/plain")


def raw_request(
    path: str = "/",
    method: str = "GET",
    headers: Tuple[Tuple[str, str], ...] = (),
    body: bytes = b"",
    *,
    close: bool = True,
) -> bytes:
    """
    The bytes of one HTTP/1.1 request (with C{Host}; C{Connection: close}
    unless C{close=False}; C{Content-Length} if there is a body).
    """
    lines = [f"{method} {path} HTTP/1.1", "Host: example.com"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def within(d: Deferred[Any], timeout: float = 5) -> Deferred[Any]:
    """
    C{d}, cancelled (failing with C{CancelledError}) if it has not fired
    after C{timeout} seconds: for waits on something the app does.
    """
    return d.addTimeout(timeout, reactor)


def notify(d: Deferred[Any], value: Any = None) -> None:
    """
    Fire C{d} with C{value} from any thread (always in a later reactor turn).
    """
    reactor.callFromThread(lambda: d.called or d.callback(value))


class Closing:
    """
    An app iterable that records C{close()}: C{closed} fires (from any
    thread) when it is called, C{close_calls} counts the calls.

    @param chunks: what to yield; an exception instance is raised instead.
    @param forever: after C{chunks}, yield C{b''} until closed (an app that is
        still streaming when the client leaves).
    @param close_error: raised from C{close()} if given.
    """

    def __init__(self, chunks: List[Any], *, forever: bool = False, close_error: Optional[Exception] = None) -> None:
        self._chunks = list(chunks)
        self._forever = forever
        self._close_error = close_error
        self.closed: Deferred[None] = Deferred()
        self.close_calls = 0
        self.is_closed = False

    def __iter__(self) -> "Closing":
        return self

    def __next__(self) -> bytes:
        if self._chunks:
            item = self._chunks.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        if self._forever and not self.is_closed:
            return b""
        raise StopIteration

    def close(self) -> None:
        self.close_calls += 1
        self.is_closed = True
        notify(self.closed)
        if self._close_error is not None:
            raise self._close_error


class Served:
    """
    Mixin for trial C{TestCase}s that serve validated WSGI apps over real
    sockets.

    @ivar events: every log event emitted during the test.
    @ivar threadpool: the started pool in threaded mode, else L{None}.
    """

    #: Run apps in a threadpool instead of the reactor thread.
    threaded = False

    #: The Site class serving the resources (L{AWSGISite} streams bodies).
    site_class: Any = Site

    #: Trial's per-test timeout (seconds); the waits inside are shorter.
    timeout = 60

    def setUp(self) -> None:
        # First, so (cleanups being LIFO) it checks after everything closed.
        self.validation = assert_no_wsgi_warnings(self)  # type: ignore[arg-type]
        self.addCleanup(self._check_validator_errors)  # type: ignore[attr-defined]
        self.events: List[Dict[str, Any]] = []
        observer = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)  # type: ignore[attr-defined]
        self.threadpool: Optional[ThreadPool] = None
        if self.threaded:
            pool = ThreadPool(minthreads=1, maxthreads=4, name="pep3333-tests")
            pool.start()
            self.addCleanup(self._stop_pool, pool)  # type: ignore[attr-defined]
            self.threadpool = pool

    @inlineCallbacks
    def _stop_pool(self, pool: ThreadPool) -> Iterator[Any]:
        """
        Let queued work (e.g. C{close()} calls after an abort) finish, then
        stop the pool; C{ThreadPool.stop} joins its workers.
        """
        yield eventually(lambda: not pool.working and pool._queue.qsize() == 0, timeout=10)
        pool.stop()

    def _check_validator_errors(self) -> None:
        """
        Fail if C{wsgiref.validate} raised inside the app (the container logs
        it as an application error; trial would report it too, this says
        what it was).
        """
        found = []
        for event in self.events:
            failure = event.get("log_failure")
            if isinstance(failure, Failure) and failure.check(AssertionError):
                frames = [frame[1] for frame in failure.frames]
                if any(name.replace("\\", "/").endswith("wsgiref/validate.py") for name in frames):
                    found.append(failure.getErrorMessage())
        if found:
            self.fail("wsgiref.validate raised: " + "; ".join(found))  # type: ignore[attr-defined]

    # -- serving ---------------------------------------------------------

    def resource(self, app: Callable[..., Any], *, validate: bool = True) -> AWSGIResource:
        """
        An L{AWSGIResource} for C{app}, validated unless C{validate=False},
        in this test case's mode.
        """
        return AWSGIResource(reactor, validated(app) if validate else app, threadpool=self.threadpool)

    def serve(self, app: Callable[..., Any], *, validate: bool = True, mount: Optional[bytes] = None) -> Deferred[Server]:
        """
        Listen on 127.0.0.1 with C{app} as the Site's root, or as the child
        C{mount} of a plain root resource.
        """
        resource: Any = self.resource(app, validate=validate)
        if mount is not None:
            root = Resource()
            root.putChild(mount, resource)
            resource = root
        return self.listen(resource)

    def listen(self, resource: Any, *, unix: bool = False, **kw: Any) -> Deferred[Server]:
        """
        Serve C{resource} in a L{site_class} on 127.0.0.1 (or, with
        C{unix=True}, on a UNIX socket in a temporary directory).
        """
        site = self.site_class(resource)
        if unix:
            return listen_unix(self, site, **kw)  # type: ignore[arg-type]
        return listen(self, site, **kw)  # type: ignore[arg-type]

    @inlineCallbacks
    def exchange(self, server: Server, data: bytes, n: int = 1, methods: Optional[List[str]] = None) -> Iterator[Any]:
        """
        Connect, send C{data}, and fire with C{(client, responses)} once
        C{n} complete responses arrived.
        """
        client = yield RawClient.connect(server)
        client.send(data)
        responses = yield client.wait_for_responses(n, methods=methods)
        return client, responses

    @inlineCallbacks
    def get(self, server: Server, path: str = "/", **kw: Any) -> Iterator[Any]:
        """
        One request (see L{raw_request}) on a new connection; fire with the
        L{ParsedResponse}.
        """
        client, responses = yield self.exchange(server, raw_request(path, **kw))
        final = [r for r in responses if not r.interim]
        return final[0]

    @inlineCallbacks
    def environ_for(self, path: str = "/", *, mount: Optional[bytes] = None, **kw: Any) -> Iterator[Any]:
        """
        Serve an app that records its environ, request C{path}, and fire
        with a copy of the environ it got.
        """
        seen: List[Dict[str, Any]] = []

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            seen.append(dict(environ))
            start_response("200 OK", [TEXT])
            return [b"ok"]

        server = yield self.serve(app, mount=mount)
        response = yield self.get(server, path, **kw)
        self.assertEqual(response.code, 200)  # type: ignore[attr-defined]
        self.assertEqual(len(seen), 1)  # type: ignore[attr-defined]
        return seen[0]

    # -- logs ------------------------------------------------------------

    def logged(self, text: str) -> List[str]:
        """
        The formatted log messages containing C{text}.
        """
        found = []
        for event in list(self.events):
            message = formatEvent(event)
            if text in message:
                found.append(message)
        return found


__all__ = ["Closing", "Served", "TEXT", "notify", "raw_request", "within"]
