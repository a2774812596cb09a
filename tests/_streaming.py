"""
Shared applications and helpers for the streaming-request-body tests
(C{tests/test_streaming_*.py}).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Dict, Iterator, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.python.threadable import isInIOThread
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from txawsgi import AWSGIResource
from txawsgi.site import AWSGISite


def pattern(size: int, seed: int = 0) -> bytes:
    """
    C{size} deterministic bytes that do not repeat with a short period (so a
    shifted or dropped piece changes the hash).
    """
    out = bytearray()
    block = hashlib.sha256(b"%d" % seed).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def post(path: bytes, body: bytes, *extra: bytes) -> bytes:
    """
    A complete HTTP/1.1 POST with a Content-Length body.
    """
    head = b"POST " + path + b" HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


def chunked_head(path: bytes = b"/", *extra: bytes) -> bytes:
    """
    The head of a chunked POST (the body follows as L{chunk}s).
    """
    head = b"POST " + path + b" HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n"


def chunk(data: bytes) -> bytes:
    """
    One chunk of a chunked body (C{b''} gives the terminator).
    """
    if not data:
        return b"0\r\n\r\n"
    return b"%x\r\n" % len(data) + data + b"\r\n"


def digest(body: bytes) -> bytes:
    """
    What L{Upload} answers for C{body}.
    """
    return b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())


def start_pool(testcase: TestCase, maxthreads: int = 4) -> ThreadPool:
    """
    A started L{ThreadPool}, stopped at cleanup from another thread (a
    worker blocked on the reactor must not deadlock the join).
    """
    pool = ThreadPool(minthreads=1, maxthreads=maxthreads, name=f"streaming-{testcase.id()}")
    pool.start()
    testcase.addCleanup(lambda: deferToThread(pool.stop))
    return pool


def awsgi_site(app: Any, threadpool: Optional[ThreadPool] = None, **kw: Any) -> AWSGISite:
    """
    An L{AWSGISite} whose root is an L{AWSGIResource} serving C{app}.
    """
    return AWSGISite(AWSGIResource(reactor, app, threadpool, **kw))


class Closing:
    """
    An iterable wrapping another, recording C{close()} (as middleware
    would).
    """

    def __init__(self, inner: Any, on_close: Callable[[], None]) -> None:
        self._inner = iter(inner)
        self._on_close = on_close

    def __iter__(self) -> "Closing":
        return self

    def __next__(self) -> bytes:
        return next(self._inner)

    def close(self) -> None:
        self._on_close()
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class Upload:
    """
    A reactor-thread app (serve it with C{stream_input=True}) that reads the
    body with C{on_get} and answers C{"<length> <sha256>"} once it has all
    of it.

    @ivar paths: C{PATH_INFO} of every call, in order.
    @ivar chunks: every non-empty delivery, in order (all requests).
    @ivar ended: how many bodies reached their C{b''} end.
    @ivar errors: exceptions given to the C{on_get} errback.
    @ivar closed: how many times C{close()} was called on the iterable.
    @ivar environs: the environ of every call.
    @ivar gate: if set, a L{Deferred} the app waits for before its first
        C{on_get} (the test fires it).
    """

    def __init__(self, size: int = 65536, gate: Optional[Deferred[None]] = None) -> None:
        self.size = size
        self.gate = gate
        self.paths: List[str] = []
        self.environs: List[Dict[str, Any]] = []
        self.chunks: List[bytes] = []
        self.ended = 0
        self.errors: List[BaseException] = []
        self.closed = 0

    @property
    def received(self) -> int:
        return sum(map(len, self.chunks))

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.paths.append(environ["PATH_INFO"])
        self.environs.append(environ)
        ctrl = environ["awsgi.controller"](environ)
        hasher = hashlib.sha256()
        count = [0]

        def got(data: bytes) -> None:
            if data:
                self.chunks.append(data)
                hasher.update(data)
                count[0] += len(data)
                ctrl.on_get(self.size, got, lost)
                return
            self.ended += 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            ctrl.put(b"%d %s" % (count[0], hasher.hexdigest().encode()))
            ctrl.finish()

        def lost(reason: BaseException) -> None:
            self.errors.append(reason)

        def begin(ignored: Any = None) -> None:
            ctrl.on_get(self.size, got, lost)

        if self.gate is None:
            begin()
        else:
            self.gate.addCallback(begin)
        return Closing(ctrl, self._closed)

    def _closed(self) -> None:
        self.closed += 1


class Reporter:
    """
    Collects what a worker-thread app reports, in the reactor thread, so
    tests can wait on it with L{eventually}.
    """

    def __init__(self) -> None:
        self.events: List[Any] = []

    def __call__(self, event: Any) -> None:
        if isInIOThread():
            self.events.append(event)
        else:
            reactor.callFromThread(self.events.append, event)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)
