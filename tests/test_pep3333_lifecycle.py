"""
PEP 3333 conformance: the iterable's C{close()}, Content-Length
enforcement, C{HEAD}, C{wsgi.file_wrapper} and threadpool mode.

Every app is wrapped in C{wsgiref.validate.validator}; the validator's
complaints fail the test (see L{tests._pep3333.Served}).
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Dict, Iterator, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from tests._pep3333 import TEXT, Closing, Served, notify, raw_request, within
from tests.support import RawClient, eventually, parse_response, request, validated
from txawsgi import AWSGIResource

#: Size of the file served through wsgi.file_wrapper.
FILE_SIZE = 20 * 1024 * 1024


class _CloseTests(Served):
    """
    The server calls the iterable's C{close()} on every path.
    """

    def serve_iterable(self, iterable: Any, headers: List[Any] = [TEXT]) -> Deferred[Any]:
        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", list(headers))
            return iterable

        return self.serve(app)

    @inlineCallbacks
    def test_closeAfterNormalEnd(self) -> Iterator[Any]:
        """
        C{close()} is called once after the iterable is exhausted.
        """
        iterable = Closing([b"a", b"b"])
        server = yield self.serve_iterable(iterable)
        response = yield self.get(server, "/")
        self.assertEqual(response.body, b"ab")
        yield within(iterable.closed)
        self.assertEqual(iterable.close_calls, 1)

    @inlineCallbacks
    def test_closeAfterIterationError(self) -> Iterator[Any]:
        """
        C{close()} is called when the iterable raises.
        """
        iterable = Closing([b"a", ValueError("boom")])
        server = yield self.serve_iterable(iterable)
        client = yield RawClient.connect(server)
        client.send(raw_request("/"))
        yield within(iterable.closed)
        self.assertEqual(iterable.close_calls, 1)
        yield client.wait_closed()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @inlineCallbacks
    def test_closeOnClientDisconnect(self) -> Iterator[Any]:
        """
        C{close()} is called when the client goes away while the app is
        still streaming.
        """
        iterable = Closing([b"first chunk"], forever=True)
        server = yield self.serve_iterable(iterable)
        client = yield RawClient.connect(server)
        client.send(raw_request("/"))
        yield client.wait_for(b"first chunk")
        self.assertFalse(iterable.closed.called)
        yield client.abort()
        yield within(iterable.closed)
        self.assertEqual(iterable.close_calls, 1)

    @inlineCallbacks
    def test_closeOnDisconnectBeforeOutput(self) -> Iterator[Any]:
        """
        C{close()} is called when the client goes away before the app wrote
        anything.
        """
        iterable = Closing([], forever=True)
        started: Deferred[None] = Deferred()

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [TEXT])
            notify(started)
            return iterable

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(raw_request("/"))
        yield within(started)
        yield client.abort()
        yield within(iterable.closed)
        self.assertEqual(iterable.close_calls, 1)
        self.assertEqual(client.received, b"")

    @inlineCallbacks
    def test_closeErrorLogged(self) -> Iterator[Any]:
        """
        An exception from C{close()} is logged and the server goes on
        serving.
        """
        broken = Closing([b"one"], close_error=RuntimeError("close failed"))
        fine = Closing([b"two"])
        iterables = [broken, fine]

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [TEXT])
            return iterables.pop(0)

        server = yield self.serve(app)
        first = yield self.get(server, "/")
        yield within(broken.closed)
        yield eventually(lambda: self.flushLoggedErrors(RuntimeError))
        second = yield self.get(server, "/")
        self.assertEqual((first.code, first.body, second.code, second.body), (200, b"one", 200, b"two"))
        yield within(fine.closed)


class _ContentLengthTests(Served):
    """
    The declared Content-Length is what goes on the wire.
    """

    @inlineCallbacks
    def test_longerBodyIsCut(self) -> Iterator[Any]:
        """
        An app that declares 5 bytes and yields 10: the client gets exactly
        5 and the connection serves the next request.
        """
        iterables: List[Closing] = []

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            if environ["PATH_INFO"] == "/next":
                start_response("200 OK", [TEXT])
                return [b"next"]
            start_response("200 OK", [TEXT, ("Content-Length", "5")])
            iterables.append(Closing([b"0123", b"456789", b"never"]))
            return iterables[-1]

        server = yield self.serve(app)
        client, [first, second] = yield self.exchange(
            server, raw_request("/", close=False) + raw_request("/next"), n=2
        )
        self.assertEqual(first.body, b"01234")
        self.assertEqual(second.body, b"next")
        self.assertNotIn(b"56789", client.received)
        self.assertNotIn(b"never", client.received)
        self.assertTrue(self.logged("more than its Content-Length"))
        yield within(iterables[0].closed)

    @inlineCallbacks
    def test_shorterBodyClosesConnection(self) -> Iterator[Any]:
        """
        An app that declares 10 bytes and yields 5: the connection is closed
        after the 5 and the error is logged.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            start_response("200 OK", [TEXT, ("Content-Length", "10")])
            return [b"01234"]

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(raw_request("/", close=False))
        yield client.wait_closed()
        [response] = parse_response(client.received)
        self.assertEqual(response.header("Content-Length"), "10")
        self.assertEqual(response.body, b"01234")
        self.assertFalse(response.complete)
        self.assertTrue(self.logged("declared Content-Length of 10"))

    @inlineCallbacks
    def test_head(self) -> Iterator[Any]:
        """
        C{HEAD} gets the headers and no body; the connection then serves the
        next request.
        """
        methods: List[str] = []

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            methods.append(environ["REQUEST_METHOD"])
            start_response("200 OK", [TEXT, ("Content-Length", "5"), ("X-App", "1")])
            return [b"hello"]

        server = yield self.serve(app)
        client, [head, get] = yield self.exchange(
            server, raw_request("/", "HEAD", close=False) + raw_request("/"), n=2, methods=["HEAD", "GET"]
        )
        self.assertEqual((head.code, head.header("Content-Length"), head.header("X-App")), (200, "5", "1"))
        self.assertEqual(head.body, b"")
        self.assertEqual(get.body, b"hello")
        self.assertEqual(client.received.count(b"hello"), 1)
        self.assertEqual(methods, ["HEAD", "GET"])

    @inlineCallbacks
    def test_headWithoutContentLength(self) -> Iterator[Any]:
        """
        C{HEAD} without a declared length: still no body, and the next
        request on the connection is served.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            start_response("200 OK", [TEXT])
            return [b"hello", b" world"]

        server = yield self.serve(app)
        client, [head, get] = yield self.exchange(
            server, raw_request("/", "HEAD", close=False) + raw_request("/"), n=2, methods=["HEAD", "GET"]
        )
        self.assertEqual(head.body, b"")
        self.assertEqual(get.body, b"hello world")
        self.assertEqual(client.received.count(b"hello"), 1)


class _CountingFile:
    """
    A binary file that counts the bytes read from it.
    """

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb")
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.read_bytes += len(data)
        return data

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()


class _FileWrapperTests(Served):
    """
    C{wsgi.file_wrapper} streams a file, closes it, and respects
    backpressure.
    """

    def setUp(self) -> None:
        super().setUp()
        self.path = self.mktemp()
        data = os.urandom(FILE_SIZE)
        self.digest = hashlib.sha256(data).hexdigest()
        with open(self.path, "wb") as f:
            f.write(data)
        self.files: List[_CountingFile] = []

    def file_app(self, environ: Dict[str, Any], start_response: Any) -> Any:
        f = _CountingFile(self.path)
        self.files.append(f)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(FILE_SIZE))])
        return environ["wsgi.file_wrapper"](f, 8192)

    @inlineCallbacks
    def test_largeFileIntact(self) -> Iterator[Any]:
        """
        A 20 MiB file arrives intact, and is closed at the end.
        """
        server = yield self.serve(self.file_app)
        response = yield request(server, "GET", "/", timeout=30)
        self.assertEqual(len(response.body), FILE_SIZE)
        self.assertEqual(hashlib.sha256(response.body).hexdigest(), self.digest)
        yield eventually(lambda: self.files[0].closed)

    @inlineCallbacks
    def test_slowReaderBoundsMemory(self) -> Iterator[Any]:
        """
        While the client does not read, the server stops reading the file:
        what it read minus what the client got stays small.  Then the rest
        arrives intact.
        """
        server = yield self.listen(self.resource(self.file_app), sndbuf=32768)
        client = yield RawClient.connect(server, rcvbuf=32768)
        client.pause_reading()
        client.send(raw_request("/"))
        history: List[int] = []

        def stalled() -> bool:
            files = self.files
            history.append(files[0].read_bytes if files else 0)
            return len(history) > 10 and history[-1] > 0 and history[-1] == history[-10]

        yield eventually(stalled, timeout=10, interval=0.02)
        in_flight = self.files[0].read_bytes - len(client.received)
        self.assertLess(in_flight, 4 * 1024 * 1024, f"read {self.files[0].read_bytes}, received {len(client.received)}")
        client.resume_reading()
        yield client.wait_closed(timeout=30)
        [response] = parse_response(client.received)
        self.assertTrue(response.complete)
        self.assertEqual(hashlib.sha256(response.body).hexdigest(), self.digest)
        yield eventually(lambda: self.files[0].closed)


class CloseTests(_CloseTests, TestCase):
    """
    Apps running in the reactor thread.
    """


class ThreadpoolCloseTests(_CloseTests, TestCase):
    """
    Apps running in a threadpool.
    """

    threaded = True


class ContentLengthTests(_ContentLengthTests, TestCase):
    """
    Apps running in the reactor thread.
    """


class ThreadpoolContentLengthTests(_ContentLengthTests, TestCase):
    """
    Apps running in a threadpool.
    """

    threaded = True


class FileWrapperTests(_FileWrapperTests, TestCase):
    """
    Apps running in the reactor thread.
    """


class ThreadpoolFileWrapperTests(_FileWrapperTests, TestCase):
    """
    Apps running in a threadpool.
    """

    threaded = True


class ThreadpoolBlockingTests(Served, TestCase):
    """
    A blocking app in the threadpool does not hold up the reactor.
    """

    threaded = True

    @inlineCallbacks
    def test_blockingAppDoesNotBlockReactor(self) -> Iterator[Any]:
        """
        While a threadpool app blocks, a reactor-mode resource on the same
        Site answers another request.
        """
        entered: Deferred[None] = Deferred()
        release = threading.Event()
        self.addCleanup(release.set)
        order: List[str] = []

        def blocking(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            assert environ["wsgi.multithread"] is True
            notify(entered)
            release.wait(10)
            order.append("slow")
            start_response("200 OK", [TEXT])
            return [b"slow"]

        def quick(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            assert environ["wsgi.multithread"] is False
            order.append("fast")
            start_response("200 OK", [TEXT])
            return [b"fast"]

        root = Resource()
        root.putChild(b"slow", self.resource(blocking))
        root.putChild(b"fast", AWSGIResource(reactor, validated(quick)))
        server = yield self.listen(root)
        slow = request(server, "GET", "/slow")
        yield within(entered)
        fast = yield request(server, "GET", "/fast")
        self.assertEqual(fast.body, b"fast")
        self.assertEqual(order, ["fast"])
        release.set()
        slow = yield slow
        self.assertEqual(slow.body, b"slow")
        self.assertEqual(order, ["fast", "slow"])
