"""
L{txawsgi.testing}: applications tested in memory, on a controlled clock,
without sockets -- a long-poll, an upload fed in pieces, the demo's event
stream -- and C{treq.testing.StubTreq} over an L{AWSGIResource}.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Dict, Iterable, List, Optional

from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.resource import Resource

from txawsgi import AWSGIResource
from txawsgi.demo import make_demo_app
from txawsgi.testing import AppClient, IncompleteResponse, MemoryReactor, settle

#: How long a long-poll waits before answering 204.
POLL_TIMEOUT = 30.0


class LongPoll:
    """
    A long-poll app: C{GET /wait} answers with the next message published by
    C{POST /publish}, or 204 after L{POLL_TIMEOUT} seconds; a waiter whose
    client goes away is forgotten.
    """

    def __init__(self) -> None:
        self.waiting: List[Any] = []
        self.gone: List[Optional[BaseException]] = []

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        ctrl = environ["awsgi.controller"](environ)
        if environ["PATH_INFO"] == "/wait":
            timer = environ["awsgi.reactor"].callLater(POLL_TIMEOUT, self._timeout, ctrl, start_response)
            self.waiting.append((ctrl, start_response))

            def closed(reason: Optional[BaseException]) -> None:
                if timer.active():
                    timer.cancel()
                self._forget(ctrl)
                self.gone.append(reason)

            ctrl.on_close(closed)
        elif environ["PATH_INFO"] == "/publish":
            message = environ["wsgi.input"].read()
            waiting, self.waiting = self.waiting, []
            for other, other_start in waiting:
                other_start("200 OK", [("Content-Type", "text/plain")])
                other.put(message)
                other.finish()
            start_response("200 OK", [("Content-Type", "text/plain")])
            ctrl.put(b"delivered to %d\n" % len(waiting))
            ctrl.finish()
        else:
            start_response("404 Not Found", [("Content-Length", "0")])
            ctrl.finish()
        return ctrl

    def _forget(self, ctrl: Any) -> None:
        self.waiting = [(c, s) for c, s in self.waiting if c is not ctrl]

    def _timeout(self, ctrl: Any, start_response: Callable[..., Any]) -> None:
        self._forget(ctrl)
        start_response("204 No Content", [])
        ctrl.finish()


class LongPollTests(SynchronousTestCase):
    """
    A long-poll app, tested without sockets or sleeping.
    """

    def setUp(self) -> None:
        self.app = LongPoll()
        self.client = AppClient(self.app)
        self.addCleanup(self.client.close)

    def test_waits_until_published(self) -> None:
        """
        A waiter gets no response until a message is published, then gets
        that message; the publisher is told how many got it.
        """
        first = self.client.get("/wait")
        second = self.client.get("/wait")
        self.client.advance(POLL_TIMEOUT - 1)
        self.assertIsNone(first.status)
        self.assertEqual(first.body_so_far(), b"")
        self.assertFalse(first.ended)
        self.assertEqual(len(self.app.waiting), 2)

        publish = self.client.post("/publish", b"news")
        self.assertEqual(publish.body(), b"delivered to 2\n")
        for waiter in (first, second):
            self.assertEqual(waiter.status, 200)
            self.assertEqual(waiter.header("content-type"), "text/plain")
            self.assertEqual(waiter.body(), b"news")
        self.assertEqual(self.app.gone, [None, None])

    def test_times_out(self) -> None:
        """
        Without a message, the waiter gets 204 once the clock reaches the
        timeout, not a moment before.
        """
        waiter = self.client.get("/wait")
        self.client.advance(POLL_TIMEOUT - 0.5)
        self.assertIsNone(waiter.status)
        self.client.advance(0.5)
        self.assertEqual(waiter.status, 204)
        self.assertTrue(waiter.complete)
        self.assertEqual(waiter.body(), b"")
        self.assertEqual(self.app.waiting, [])

    def test_disconnect(self) -> None:
        """
        A client that goes away is forgotten (its on_close runs with the
        reason) and its timer cancelled; a later publish reaches nobody.
        """
        waiter = self.client.get("/wait")
        waiter.disconnect()
        self.assertEqual(self.app.waiting, [])
        [reason] = self.app.gone
        self.assertIsNotNone(reason)
        self.assertIsNotNone(waiter.failure)
        self.assertFalse(waiter.connected)
        self.assertEqual(self.client.reactor.getDelayedCalls(), [])
        self.assertEqual(self.client.post("/publish", b"x").body(), b"delivered to 0\n")

    def test_incomplete_body(self) -> None:
        """
        Asking for the body of a response still open says so.
        """
        waiter = self.client.get("/wait")
        error = self.assertRaises(IncompleteResponse, waiter.body)
        self.assertIn("still open", str(error))


def upload_app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """
    Read the body with on_get as it arrives, answering a progress line per
    piece, then its SHA-256.
    """
    ctrl = environ["awsgi.controller"](environ)
    digest = hashlib.sha256()
    received = [0]
    start_response("200 OK", [("Content-Type", "text/plain")])

    def got(data: bytes) -> None:
        if not data:
            ctrl.put(b"done %d %s\n" % (received[0], digest.hexdigest().encode()))
            ctrl.finish()
            return
        received[0] += len(data)
        digest.update(data)
        ctrl.put(b"received %d\n" % received[0])
        ctrl.on_get(1 << 20, got)

    ctrl.on_get(1 << 20, got)
    return ctrl


class UploadTests(SynchronousTestCase):
    """
    A request body sent piece by piece reaches an on_get handler piece by
    piece, and its answer can be read as it is written.
    """

    def check_pieces(self, **request: Any) -> None:
        client = AppClient(upload_app, stream_input=True)
        upload = client.post("/upload", stream=True, **request)
        self.assertIsNone(upload.status)
        pieces = [b"a" * 1000, b"b" * 10, b"c" * 5000]
        total = 0
        for piece in pieces[:-1]:
            upload.send_body_piece(piece)
            total += len(piece)
            self.assertEqual(upload.status, 200)
            self.assertEqual(upload.take(), b"received %d\n" % total)
        upload.send_body_piece(pieces[-1])
        upload.finish_body()
        digest = hashlib.sha256(b"".join(pieces)).hexdigest().encode()
        self.assertEqual(upload.take(), b"received 6010\ndone 6010 %s\n" % (digest,))
        self.assertTrue(upload.complete)

    def test_chunked(self) -> None:
        """
        A chunked body: each piece is one chunk.
        """
        self.check_pieces()

    def test_content_length(self) -> None:
        """
        A body with a declared length arrives piece by piece too.
        """
        self.check_pieces(length=6010)

    def test_continue(self) -> None:
        """
        C{Expect: 100-continue}: the server answers C{100 Continue} once the
        application asks for the body (on_get), and the interim response is
        recorded.
        """
        client = AppClient(upload_app, stream_input=True)
        upload = client.post("/upload", headers={"Expect": "100-continue"}, stream=True, length=3)
        self.assertEqual(upload.interim, [100])
        upload.send_body_piece(b"abc")
        upload.finish_body()
        self.assertEqual(upload.body().splitlines()[0], b"received 3")

    def test_max_body(self) -> None:
        """
        A streamed body over C{max_body} is cut off with 413 before it ends.
        """
        client = AppClient(lambda environ, start_response: iter([]), stream_input=True, max_body=10)
        upload = client.post("/upload", stream=True, length=100)
        self.assertEqual(upload.status, 413)

    def test_client_gives_up(self) -> None:
        """
        The client going away in the middle of a body reaches the app's
        on_get errback.
        """
        lost: List[BaseException] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            start_response("200 OK", [])

            def got(data: bytes) -> None:
                ctrl.on_get(100, got, lost.append)

            ctrl.on_get(100, got, lost.append)
            return ctrl

        client = AppClient(app, stream_input=True)
        upload = client.post("/upload", b"part", stream=True)
        self.assertEqual(lost, [])
        upload.disconnect()
        self.assertEqual(len(lost), 1)
        self.assertEqual(client.open_connections, 0)

    def test_greenlets(self) -> None:
        """
        In greenlet mode a blocking C{wsgi.input.read()} waits for pieces
        sent later, without a thread.
        """
        try:
            import greenlet  # noqa: F401
        except ImportError:
            raise SkipTest("greenlet is not installed")

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body.upper()]

        client = AppClient(app, greenlets=True)
        upload = client.post("/up", b"abc", stream=True)
        self.assertIsNone(upload.status)
        upload.send_body_piece(b"def")
        self.assertIsNone(upload.status)
        upload.finish_body()
        self.assertEqual(upload.body(), b"ABCDEF")


class DemoTests(SynchronousTestCase):
    """
    The built-in demo: chat, clock and upload progress over server-sent
    events, step by step.
    """

    def setUp(self) -> None:
        self.client = AppClient(make_demo_app())
        self.addCleanup(self.client.close)

    def events(self, response: Any) -> List[tuple]:
        """
        The server-sent events received since the last call, as (event,
        data) pairs.
        """
        found = []
        for block in response.take().decode().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in fields:
                found.append((fields["event"], json.loads(fields["data"])))
        return found

    def test_page(self) -> None:
        page = self.client.get("/")
        self.assertEqual(page.status, 200)
        self.assertIn(b"EventSource", page.body())
        self.assertEqual(self.client.get("/nope").status, 404)

    def test_chat_and_clock(self) -> None:
        """
        Two pages: each hears the clock every second and every message.
        """
        alice = self.client.get("/events?client=a")
        bob = self.client.get("/events?client=b")
        self.assertEqual(alice.header("content-type"), "text/event-stream")
        self.assertEqual([e for e, _ in self.events(alice)], ["tick"])
        self.assertEqual([e for e, _ in self.events(bob)], ["tick"])
        self.client.advance(3, step=1)
        ticks = self.events(alice)
        self.assertEqual([d["time"] for _, d in ticks], ["00:00:01 UTC", "00:00:02 UTC", "00:00:03 UTC"])
        self.assertEqual(ticks[-1][1]["listeners"], 2)
        sent = self.client.post(
            "/send", json.dumps({"name": "alice", "text": "hi bob"}).encode(), {"Content-Type": "application/json"}
        )
        self.assertEqual(sent.status, 204)
        expected = [("message", {"name": "alice", "text": "hi bob"})]
        self.assertEqual(self.events(alice), expected)
        self.assertEqual([e for e in self.events(bob) if e[0] == "message"], expected)
        alice.disconnect()
        self.client.advance(1)
        self.assertEqual(self.events(bob)[-1][1]["listeners"], 1)
        bob.disconnect()
        self.assertEqual(self.client.reactor.getDelayedCalls(), [])

    def test_upload_progress(self) -> None:
        """
        The uploader's page hears the progress of its upload as the pieces
        arrive; everyone hears that it is done.
        """
        page = self.client.get("/events?client=up")
        other = self.client.get("/events?client=other")
        self.events(page)
        self.events(other)
        upload = self.client.post("/upload?client=up&name=f.bin&by=carol", stream=True, length=1000)
        seen = []
        for _ in range(4):
            upload.send_body_piece(b"z" * 250)
            seen += [d["received"] for e, d in self.events(page) if e == "progress"]
        self.assertEqual(seen, [250, 500, 750, 1000])
        self.assertEqual(
            upload.json(), {"name": "f.bin", "bytes": 1000, "sha256": hashlib.sha256(b"z" * 1000).hexdigest()}
        )
        self.assertEqual(self.events(other), [("message", {"name": "carol", "text": "uploaded f.bin (1000 bytes)"})])


def hello(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"method": environ["REQUEST_METHOD"], "query": environ["QUERY_STRING"], "body": body.decode()}).encode()]


def hello_later(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    ctrl = environ["awsgi.controller"](environ)
    start_response("200 OK", [("Content-Type", "text/plain")])
    environ["awsgi.reactor"].callLater(5, lambda: (ctrl.put(b"later"), ctrl.finish()))
    return ctrl


class StubTreqTests(SynchronousTestCase):
    """
    C{treq.testing.StubTreq} drives an L{AWSGIResource} built on a
    L{MemoryReactor}, with L{settle}.
    """

    def setUp(self) -> None:
        try:
            from treq.testing import StubTreq
        except ImportError:
            raise SkipTest("treq is not installed (pip install txawsgi[compat])")
        self.StubTreq = StubTreq

    def test_request(self) -> None:
        clock = MemoryReactor()
        treq = self.StubTreq(AWSGIResource(clock, hello))
        d = treq.post("http://example.com/hi", params={"a": "1"}, data=b"payload")
        settle(clock, treq)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        body = self.successResultOf(response.json())
        self.assertEqual(body, {"method": "POST", "query": "a=1", "body": "payload"})

    def test_timed(self) -> None:
        """
        An answer scheduled on the clock arrives once the clock gets there.
        """
        clock = MemoryReactor()
        treq = self.StubTreq(AWSGIResource(clock, hello_later))
        d = treq.get("http://example.com/")
        settle(clock, treq)
        self.assertNoResult(d)
        clock.advance(4.9)
        settle(clock, treq)
        self.assertNoResult(d)
        clock.advance(0.1)
        settle(clock, treq)
        response = self.successResultOf(d)
        content = response.content()
        settle(clock, treq)
        self.assertEqual(self.successResultOf(content), b"later")

    def test_child(self) -> None:
        """
        Under a plain resource tree, too.
        """
        clock = MemoryReactor()
        root = Resource()
        root.putChild(b"app", AWSGIResource(clock, hello))
        treq = self.StubTreq(root)
        d = treq.get("http://example.com/app/x?q")
        settle(clock, treq)
        self.assertEqual(self.successResultOf(self.successResultOf(d).json())["query"], "q")


class AppClientTests(SynchronousTestCase):
    """
    What L{AppClient} accepts and refuses.
    """

    def test_resource(self) -> None:
        """
        Given an L{AWSGIResource}, it drives that resource's reactor.
        """
        clock = MemoryReactor()
        client = AppClient(AWSGIResource(clock, hello_later))
        self.assertIs(client.reactor, clock)
        response = client.get("/")
        self.assertIsNone(response.status)
        client.advance(5)
        self.assertEqual(response.body(), b"later")

    def test_real_reactor_refused(self) -> None:
        self.assertRaises(ValueError, AppClient, AWSGIResource(reactor, hello))

    def test_head_and_headers(self) -> None:
        client = AppClient(hello)
        head = client.request("HEAD", "/", headers={"X-Thing": ["1", "2"]})
        self.assertEqual(head.status, 200)
        self.assertTrue(head.complete)
        self.assertEqual(head.body(), b"")

    def test_spinning(self) -> None:
        """
        An app that reschedules itself with callLater(0) forever is
        reported, not looped on.
        """

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            clock = environ["awsgi.reactor"]

            def spin() -> None:
                clock.callLater(0, spin)

            start_response("200 OK", [])
            clock.callLater(0, spin)
            return []

        client = AppClient(app)
        self.assertRaises(RuntimeError, client.get, "/")
