"""
Streaming request bodies (L{txawsgi.site.AWSGISite}, L{txawsgi.input}):
dispatch at headers time, C{wsgi.input} in each mode, C{Expect:
100-continue}, clients that leave mid-upload, C{max_body}, pipelining after
a streamed body, and the C{upload_hash} example.

Every test talks to a real server on 127.0.0.1 with L{RawClient}, so the
order of events on the wire (what the client had sent when the app saw
what) is what is asserted.  Backpressure and memory are in
C{test_streaming_backpressure}, HTTP/2 in C{test_streaming_http2}.
"""

from __future__ import annotations

import hashlib
import threading
from tempfile import SpooledTemporaryFile
from typing import Any, Callable, Dict, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from txawsgi import AWSGIResource
from txawsgi.errors import BodyTooLarge, BodyTruncated, WouldBlock
from txawsgi.input import HIGH_WATER, SPOOL
from txawsgi.site import AWSGISite

from ._extensions import load_example, run_example, spy_on_hashing
from ._streaming import (
    Reporter,
    Upload,
    awsgi_site,
    chunk,
    chunked_head,
    digest,
    pattern,
    post,
    start_pool,
)
from .support import RawClient, eventually, listen, parse_response, sleep

#: How long "nothing happened" is watched for before it is believed.
QUIET = 0.3


def ok(start_response: Callable[..., Any], body: bytes) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@inlineCallbacks
def held_back(testcase: TestCase, server: Any, data: bytes, held: int, seen: List[Any]) -> Any:
    """
    Send C{data} but its last C{held} bytes; a while later C{seen} (what
    the server side recorded) must still be empty; send the rest:
    C{(client, response)}.
    """
    client = yield RawClient.connect(server)
    client.send(data[:-held])
    yield sleep(QUIET)
    testcase.assertEqual(seen, [])
    client.send(data[-held:])
    [response] = yield client.wait_for_responses(1)
    return client, response


# ---------------------------------------------------------------------------
# Dispatch at headers time
# ---------------------------------------------------------------------------


class DispatchTests(TestCase):
    """
    Under an L{AWSGISite} an AWSGI resource gets a request as soon as its
    headers are in; everything else is served as Twisted always did.
    """

    @inlineCallbacks
    def test_first_bytes_before_the_rest(self) -> Any:
        """
        The app's C{on_get} delivers the first half of a Content-Length body
        while the client has not sent the second half yet.
        """
        app = Upload()
        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        body = pattern(40_000)
        half = len(body) // 2
        client.send(post(b"/up", body)[: -len(body) + half])
        yield eventually(lambda: app.received == half)
        self.assertEqual(b"".join(app.chunks), body[:half])
        self.assertEqual(client.received, b"")
        client.send(body[half:])
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, digest(body))
        self.assertEqual(app.environs[0]["CONTENT_LENGTH"], str(len(body)))

    @inlineCallbacks
    def test_chunked_first_bytes_before_the_rest(self) -> Any:
        """
        The same for a chunked body; the environ has no C{CONTENT_LENGTH}
        (not even an empty one) and says C{wsgi.input_terminated}.
        """
        app = Upload()
        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        first, second = pattern(5000, 1), pattern(7000, 2)
        client.send(chunked_head(b"/c") + chunk(first))
        yield eventually(lambda: app.received == len(first))
        self.assertEqual(app.chunks, [first])
        environ = app.environs[0]
        self.assertNotIn("CONTENT_LENGTH", environ)
        self.assertIs(environ["wsgi.input_terminated"], True)
        self.assertEqual(app.ended, 0)
        client.send(chunk(second[:10]) + chunk(second[10:]))
        yield eventually(lambda: app.received == len(first) + len(second))
        self.assertEqual(app.ended, 0)
        self.assertEqual(client.received, b"")
        client.send(chunk(b""))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, digest(first + second))

    @inlineCallbacks
    def test_threadpool_app_called_at_headers(self) -> Any:
        """
        A plain app in a threadpool is called once the headers are in and
        reads the body as it comes.
        """
        pool = start_pool(self)
        report = Reporter()

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            report(("called", environ["PATH_INFO"]))
            data = b""
            while True:
                piece = environ["wsgi.input"].read(10)
                report(("read", piece))
                if not piece:
                    break
                data += piece
            return ok(start_response, data)

        server = yield listen(self, awsgi_site(app, pool))
        client = yield RawClient.connect(server)
        client.send(post(b"/t", b"0123456789abcdefghij")[:-10])
        yield eventually(lambda: ("read", b"0123456789") in report.events)
        self.assertEqual(report.events[0], ("called", "/t"))
        client.send(b"abcdefghij")
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"0123456789abcdefghij")

    @inlineCallbacks
    def test_plain_site_buffers(self) -> Any:
        """
        An L{AWSGIResource} under a plain L{Site} keeps working: Twisted
        buffers the body, the app is called once it is complete and reads it
        through C{on_get} and C{wsgi.input} alike.
        """
        app = Upload()
        server = yield listen(self, Site(AWSGIResource(reactor, app, stream_input=True)))
        body = pattern(30_000)
        client, response = yield held_back(self, server, post(b"/p", body), 1000, app.paths)
        self.assertEqual(response.body, digest(body))
        self.assertEqual(app.paths, ["/p"])

        def plain(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            return ok(start_response, environ["wsgi.input"].read())

        server = yield listen(self, Site(AWSGIResource(reactor, plain, stream_input=True)))
        client = yield RawClient.connect(server)
        client.send(post(b"/", body))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, body)

    @inlineCallbacks
    def test_plain_site_threadpool(self) -> Any:
        """
        The same with a threadpool: C{wsgi.input} is Twisted's buffer.
        """
        pool = start_pool(self)
        calls: List[int] = []

        def plain(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            calls.append(1)
            return ok(start_response, hashlib.sha256(environ["wsgi.input"].read()).hexdigest().encode())

        server = yield listen(self, Site(AWSGIResource(reactor, plain, pool)))
        body = pattern(100_000)
        client, response = yield held_back(self, server, post(b"/", body), 1, calls)
        self.assertEqual(response.body, hashlib.sha256(body).hexdigest().encode())

    @inlineCallbacks
    def test_non_awsgi_resource_keeps_buffering(self) -> Any:
        """
        In one L{AWSGISite} tree a plain Twisted resource still gets its
        body whole in C{request.content} after the last byte arrived, while
        an AWSGI sibling streams.
        """
        seen: List[bytes] = []

        class Plain(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                data = request.content.read()
                seen.append(data)
                return b"plain " + digest(data)

        app = Upload()
        root = Resource()
        root.putChild(b"plain", Plain())
        root.putChild(b"awsgi", AWSGIResource(reactor, app, stream_input=True))
        server = yield listen(self, AWSGISite(root))

        body = pattern(20_000)
        client, response = yield held_back(self, server, post(b"/plain", body), 5000, seen)
        self.assertEqual(response.body, b"plain " + digest(body))
        self.assertEqual(seen, [body])

        client.clear()
        client.send(post(b"/awsgi/x", body)[:-5000])
        yield eventually(lambda: app.received == len(body) - 5000)
        self.assertEqual(app.paths, ["/x"])
        client.send(body[-5000:])
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, digest(body))

    @inlineCallbacks
    def test_bodyless_requests_unchanged(self) -> Any:
        """
        Requests without a body (GET, or C{Content-Length: 0}) to an AWSGI
        resource under an L{AWSGISite} are served as usual, and their
        environ is complete (the request was set up by Twisted, not at
        headers time).
        """
        environs: List[Dict[str, Any]] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            environs.append(environ)
            return ok(start_response, environ["REQUEST_METHOD"].encode() + environ["wsgi.input"].read())

        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        client.send(b"GET /a?x=1 HTTP/1.1\r\nHost: test\r\n\r\n" + post(b"/b", b""))
        first, second = yield client.wait_for_responses(2)
        self.assertEqual((first.body, second.body), (b"GET", b"POST"))
        self.assertEqual(environs[0]["QUERY_STRING"], "x=1")

    @inlineCallbacks
    def test_streamed_environ(self) -> Any:
        """
        A request dispatched at headers time gets the same environ as a
        buffered one: method, paths, query, client and server address.
        """
        app = Upload()
        site_server = yield listen(self, awsgi_site(app, stream_input=True))
        plain_app = Upload()
        plain_server = yield listen(self, Site(AWSGIResource(reactor, plain_app, stream_input=True)))
        for server, got in ((site_server, app), (plain_server, plain_app)):
            client = yield RawClient.connect(server)
            client.send(post(b"/a%20b/c?q=1&r=2", b"xyz", b"Content-Type: text/plain", b"X-Thing: 1"))
            yield client.wait_for_responses(1)
        keys = [
            "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
            "CONTENT_LENGTH", "SERVER_PROTOCOL", "HTTP_X_THING", "HTTP_HOST", "REMOTE_ADDR",
            "SERVER_NAME", "wsgi.url_scheme",
        ]
        streamed = {k: app.environs[0].get(k) for k in keys}
        buffered = {k: plain_app.environs[0].get(k) for k in keys}
        self.assertEqual(streamed, buffered)
        self.assertEqual(streamed["PATH_INFO"], "/a b/c")
        self.assertEqual(streamed["QUERY_STRING"], "q=1&r=2")


# ---------------------------------------------------------------------------
# wsgi.input in each mode
# ---------------------------------------------------------------------------


class ThreadpoolInputTests(TestCase):
    """
    With a threadpool, C{wsgi.input} streams: reads block the worker (not
    the reactor) until the bytes they need are in.
    """

    def setUp(self) -> None:
        self.pool = start_pool(self)
        self.report = Reporter()

    @inlineCallbacks
    def test_readline_across_chunks(self) -> Any:
        """
        C{readline()} returns whole lines even when a line arrives in pieces
        (chunks, TCP segments), and each line as soon as its newline is in.
        """
        report = self.report

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            lines = []
            while True:
                line = environ["wsgi.input"].readline()
                report(line)
                if not line:
                    break
                lines.append(line)
            return ok(start_response, b"|".join(lines))

        server = yield listen(self, awsgi_site(app, self.pool))
        client = yield RawClient.connect(server)
        client.send(chunked_head() + chunk(b"alpha\nbr"))
        yield eventually(lambda: report.events == [b"alpha\n"])
        client.send(chunk(b"a"))
        client.send(chunk(b"vo\ncharlie"))
        yield eventually(lambda: report.events == [b"alpha\n", b"bravo\n"])
        yield sleep(0.1)
        self.assertEqual(len(report), 2)
        client.send(chunk(b"\ndelta (no newline)"))
        yield eventually(lambda: len(report) == 3)
        self.assertEqual(report.events[2], b"charlie\n")
        client.send(chunk(b""))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"alpha\n|bravo\n|charlie\n|delta (no newline)")
        self.assertEqual(report.events[3:], [b"delta (no newline)", b""])

    @inlineCallbacks
    def test_readline_size(self) -> Any:
        """
        C{readline(n)} stops at C{n} bytes, or earlier at a newline.
        """
        report = self.report

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            inp = environ["wsgi.input"]
            report([inp.readline(4), inp.readline(4), inp.readline(100), inp.readline(-1), inp.readline()])
            return ok(start_response, b"")

        server = yield listen(self, awsgi_site(app, self.pool))
        client = yield RawClient.connect(server)
        client.send(chunked_head() + chunk(b"abcdef\ngh"))
        yield sleep(0.05)
        client.send(chunk(b"\nij\n") + chunk(b""))
        yield client.wait_for_responses(1)
        self.assertEqual(report.events, [[b"abcd", b"ef\n", b"gh\n", b"ij\n", b""]])

    @inlineCallbacks
    def test_large_reads(self) -> Any:
        """
        C{read(n)} for C{n} well above the high-water mark returns exactly
        C{n} bytes until the last read, over a body of several MiB that
        arrives in pieces; nothing is lost or reordered.
        """
        report = self.report
        n = 3 * HIGH_WATER + 123

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            inp = environ["wsgi.input"]
            hasher = hashlib.sha256()
            sizes = []
            while True:
                data = inp.read(n)
                if not data:
                    break
                sizes.append(len(data))
                hasher.update(data)
            report(sizes)
            return ok(start_response, hasher.hexdigest().encode())

        server = yield listen(self, awsgi_site(app, self.pool))
        client = yield RawClient.connect(server)
        body = pattern(5 * 1024 * 1024 + 7)
        client.send(post(b"/", body))
        [response] = yield client.wait_for_responses(1, timeout=30)
        self.assertEqual(response.body, hashlib.sha256(body).hexdigest().encode())
        [sizes] = report.events
        self.assertEqual(sizes[:-1], [n] * (len(sizes) - 1))
        self.assertEqual(sum(sizes), len(body))

    @inlineCallbacks
    def test_iteration_and_readlines(self) -> Any:
        """
        Iterating C{wsgi.input} yields its lines; C{readlines()} returns the
        rest; C{read()} with no size returns everything left.
        """
        report = self.report

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            inp = environ["wsgi.input"]
            if environ["PATH_INFO"] == "/iter":
                report(list(inp))
            elif environ["PATH_INFO"] == "/readlines":
                first = inp.readline()
                report([first] + inp.readlines())
            else:
                report([inp.read(3), inp.read()])
            return ok(start_response, b"done")

        server = yield listen(self, awsgi_site(app, self.pool))
        lines = [b"line %d %s\n" % (i, b"x" * (i * 37 % 300)) for i in range(2000)]
        body = b"".join(lines) + b"tail"
        cuts = list(range(0, len(body), 4093))
        for path in (b"/iter", b"/readlines", b"/read"):
            client = yield RawClient.connect(server)
            client.send(chunked_head(path))
            for start in cuts:
                client.send(chunk(body[start : start + 4093]))
            client.send(chunk(b""))
            [response] = yield client.wait_for_responses(1)
            self.assertEqual(response.body, b"done")
        iterated, readlines, read = report.events
        self.assertEqual(iterated, lines + [b"tail"])
        self.assertEqual(readlines, lines + [b"tail"])
        self.assertEqual(read, [body[:3], body[3:]])


class SpooledInputTests(TestCase):
    """
    In the reactor thread without C{stream_input}, a plain app is called
    once the whole body is in: small bodies in memory, large ones in a
    temporary file.
    """

    def spy(self) -> Any:
        calls: List[Dict[str, Any]] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            inp = environ["wsgi.input"]
            calls.append({"input": inp, "rolled": getattr(inp, "_rolled", None)})
            return ok(start_response, digest(inp.read()))

        return app, calls

    @inlineCallbacks
    def test_called_after_last_byte(self) -> Any:
        """
        The app is not called while any of the body is missing; once the
        last byte is in, it reads it all (from memory, for a small body).
        """
        app, calls = self.spy()
        server = yield listen(self, awsgi_site(app))
        body = pattern(50_000)
        client, response = yield held_back(self, server, post(b"/", body), 1, calls)
        self.assertEqual(response.body, digest(body))
        self.assertIsInstance(calls[0]["input"], SpooledTemporaryFile)
        self.assertIs(calls[0]["rolled"], False)

    @inlineCallbacks
    def test_chunked_called_after_terminator(self) -> Any:
        """
        For a chunked body, "all in" means the terminating chunk arrived.
        """
        app, calls = self.spy()
        server = yield listen(self, awsgi_site(app))
        data = chunked_head() + chunk(b"abc") + chunk(b"def") + chunk(b"")
        client, response = yield held_back(self, server, data, len(chunk(b"")), calls)
        self.assertEqual(response.body, digest(b"abcdef"))

    @inlineCallbacks
    def test_large_body_spooled_to_disk(self) -> Any:
        """
        A body over the spool size is in a temporary file, not in memory.
        """
        app, calls = self.spy()
        server = yield listen(self, awsgi_site(app))
        client = yield RawClient.connect(server)
        body = pattern(SPOOL + 200_000)
        client.send(chunked_head() + chunk(body[:SPOOL]) + chunk(body[SPOOL:]) + chunk(b""))
        [response] = yield client.wait_for_responses(1, timeout=20)
        self.assertEqual(response.body, digest(body))
        self.assertIs(calls[0]["rolled"], True)


class ReactorStreamInputTests(TestCase):
    """
    In the reactor thread with C{stream_input=True} a plain app is called
    at headers time, and a C{wsgi.input} read that would block raises
    L{WouldBlock}.
    """

    @inlineCallbacks
    def test_read_would_block(self) -> Any:
        """
        The app is called before any body arrived; its C{read()} raises
        L{WouldBlock}, consuming nothing, until enough is in; then it
        reads.
        """
        events: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            inp = environ["wsgi.input"]
            ctrl = environ["awsgi.controller"](environ)
            try:
                inp.read(6)
            except WouldBlock as e:
                events.append(("would block", e))
            else:
                events.append("read at headers")

            got: List[bytes] = []

            def poll() -> None:
                try:
                    got.append(inp.readline() if got else inp.read(6))
                except WouldBlock:
                    events.append("again")
                    reactor.callLater(0.02, poll)
                    return
                if len(got) == 1:
                    events.append(("read", got[0]))
                    reactor.callLater(0.02, poll)
                    return
                start_response("200 OK", [])
                ctrl.put(b"".join(got))
                ctrl.finish()

            reactor.callLater(0.02, poll)
            return ctrl

        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        client.send(chunked_head())
        yield eventually(lambda: events)
        self.assertEqual(events[0][0], "would block")
        self.assertIsInstance(events[0][1], BlockingIOError)
        client.send(chunk(b"hel"))
        yield eventually(lambda: events.count("again") >= 3)
        yield sleep(0.1)
        self.assertNotIn(("read", b"hel"), events)
        client.send(chunk(b"lo wor"))
        yield eventually(lambda: ("read", b"hello ") in events)
        again = events.count("again")
        yield eventually(lambda: events.count("again") >= again + 3)
        self.assertEqual(client.received, b"")
        client.send(chunk(b"ld\nmore") + chunk(b""))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"hello world\n")

    @inlineCallbacks
    def test_read_complete_body(self) -> Any:
        """
        Once the body has ended, C{read()} returns what is left (short
        reads at the end are not L{WouldBlock}).
        """
        results: List[Any] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            ctrl = environ["awsgi.controller"](environ)

            def later() -> None:
                inp = environ["wsgi.input"]
                results.extend([inp.read(4), inp.read(100), inp.read(), inp.readline()])
                start_response("200 OK", [])
                ctrl.finish()

            reactor.callLater(0.2, later)
            return ctrl

        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        client.send(post(b"/", b"0123456789"))
        yield client.wait_for_responses(1)
        self.assertEqual(results, [b"0123", b"456789", b"", b""])


# ---------------------------------------------------------------------------
# Expect: 100-continue
# ---------------------------------------------------------------------------

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ExpectContinueTests(TestCase):
    """
    C{100 Continue} goes out when the application first asks for the body,
    not when the headers arrive.
    """

    @inlineCallbacks
    def test_sent_on_first_on_get(self) -> Any:
        """
        No C{100 Continue} while the app has not asked; its first
        C{on_get} sends it, and the body then flows.
        """
        gate: Deferred[None] = Deferred()
        app = Upload(gate=gate)
        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        body = b"the body"
        client.send(post(b"/", body, b"Expect: 100-continue")[: -len(body)])
        yield eventually(lambda: app.paths)
        yield sleep(QUIET)
        self.assertEqual(client.received, b"")
        gate.callback(None)
        yield client.wait_for(CONTINUE)
        self.assertTrue(client.received.startswith(CONTINUE))
        client.send(body)
        responses = yield client.wait_for_responses(1)
        self.assertEqual([r.code for r in responses], [100, 200])
        self.assertEqual(responses[1].body, digest(body))

    @inlineCallbacks
    def test_sent_on_first_wsgi_input_read(self) -> Any:
        """
        The same for a threadpool app's first C{wsgi.input} read.
        """
        pool = start_pool(self)
        go = Deferred()
        report = Reporter()
        event = threading.Event()
        go.addCallback(lambda _: event.set())

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            report("called")
            event.wait(10)
            return ok(start_response, environ["wsgi.input"].read())

        server = yield listen(self, awsgi_site(app, pool))
        client = yield RawClient.connect(server)
        client.send(post(b"/", b"abc", b"Expect: 100-continue")[:-3])
        yield eventually(lambda: report.events == ["called"])
        yield sleep(QUIET)
        self.assertEqual(client.received, b"")
        go.callback(None)
        yield client.wait_for(CONTINUE)
        client.send(b"abc")
        responses = yield client.wait_for_responses(1)
        self.assertEqual([r.code for r in responses], [100, 200])
        self.assertEqual(responses[1].body, b"abc")

    @inlineCallbacks
    def test_not_sent_when_answered_without_reading(self) -> Any:
        """
        An app that answers without asking for the body sends no C{100
        Continue}; a body the client sends anyway is never parsed as a
        request, and the connection closes after the response.
        """
        paths: List[str] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            paths.append(environ["PATH_INFO"])
            start_response("403 Forbidden", [("Content-Length", "2")])
            return [b"no"]

        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        evil = b"GET /evil HTTP/1.1\r\nHost: test\r\n\r\n"
        client.send(post(b"/upload", evil, b"Expect: 100-continue")[: -len(evil)])
        [response] = yield client.wait_for_responses(1)
        self.assertEqual((response.code, response.body), (403, b"no"))
        self.assertNotIn(b"100 Continue", client.received)
        client.send(evil)
        reason = yield client.wait_closed()
        self.assertEqual(reason, "clean")
        self.assertEqual(paths, ["/upload"])
        self.assertNotIn(b"/evil", client.received)
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.header("connection"), "close")

    @inlineCallbacks
    def test_early_answer_reaches_a_sending_client(self) -> Any:
        """
        An app that refuses an upload at once, while the client is still
        sending megabytes of it: the client reads the whole response and a
        clean close (the server keeps reading, and dropping, the body
        meanwhile), not a reset that could destroy the response.
        """
        calls: List[int] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            calls.append(1)
            start_response("403 Forbidden", [("Content-Length", "7")])
            return [b"refused"]

        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        body = b"x" * (8 * 1024 * 1024)
        client.send(post(b"/", body))
        reason = yield client.wait_closed(timeout=10)
        [response] = parse_response(client.received)
        self.assertEqual((response.code, response.body), (403, b"refused"))
        self.assertEqual(response.header("connection"), "close")
        self.assertEqual(reason, "clean")
        self.assertEqual(calls, [1])

    @inlineCallbacks
    def test_unread_body_is_not_a_request(self) -> Any:
        """
        Without C{Expect}, a body the app never reads, sent together with
        its headers, is still a body: C{/evil} is never served.
        """
        paths: List[str] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            paths.append(environ["PATH_INFO"])
            return ok(start_response, b"ignored")

        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        evil = b"GET /evil HTTP/1.1\r\nHost: test\r\n\r\n"
        client.send(post(b"/upload", evil))
        yield client.wait_for_responses(1)
        yield sleep(QUIET)
        if not client.closed:
            client.send(b"GET /next HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        yield client.wait_closed()
        self.assertEqual(paths[0], "/upload")
        self.assertNotIn("/evil", paths)

    @inlineCallbacks
    def test_spooled_sends_continue_at_once(self) -> Any:
        """
        A plain app in the reactor without C{stream_input} needs the whole
        body before it is called: C{100 Continue} goes out at once.
        """
        calls: List[bytes] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            calls.append(environ["wsgi.input"].read())
            return ok(start_response, calls[-1])

        server = yield listen(self, awsgi_site(app))
        client = yield RawClient.connect(server)
        client.send(post(b"/", b"spooled", b"Expect: 100-continue")[:-7])
        yield client.wait_for(CONTINUE)
        self.assertEqual(calls, [])
        client.send(b"spooled")
        responses = yield client.wait_for_responses(1)
        self.assertEqual([r.code for r in responses], [100, 200])
        self.assertEqual(calls, [b"spooled"])

    @inlineCallbacks
    def test_http10_gets_no_continue(self) -> Any:
        """
        C{100 Continue} is an HTTP/1.1 response: an HTTP/1.0 client that
        says C{Expect} gets none, but its body is read.
        """
        app = Upload()
        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        client.send(b"POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        yield eventually(lambda: app.paths)
        yield sleep(0.1)
        client.send(b"abc")
        yield client.wait_closed()
        self.assertNotIn(b"100 Continue", client.received)
        self.assertTrue(client.received.endswith(digest(b"abc")))


# ---------------------------------------------------------------------------
# The client goes away mid-upload
# ---------------------------------------------------------------------------


class TruncatedUploadTests(TestCase):
    """
    A client that disconnects before its body is complete is reported to
    the app as L{BodyTruncated}, never as a normal end.
    """

    @inlineCallbacks
    def check_truncated(self, head: bytes, part: bytes, abort: bool) -> Any:
        app = Upload()
        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        client.send(head + part)
        yield eventually(lambda: app.received == len(part) - (5 if b"chunked" in head else 0))
        if abort:
            yield client.abort()
        else:
            yield client.close()
        yield eventually(lambda: app.errors and app.closed)
        [error] = app.errors
        self.assertIsInstance(error, BodyTruncated)
        self.assertNotIsInstance(error, BodyTooLarge)
        self.assertEqual(app.ended, 0)
        self.assertEqual(app.closed, 1)

    def test_content_length_close(self) -> Any:
        """
        The client closes cleanly (FIN) after part of a Content-Length
        body.
        """
        return self.check_truncated(post(b"/", b"x" * 1000)[:-1000], b"y" * 400, abort=False)

    def test_content_length_abort(self) -> Any:
        """
        The client resets the connection.
        """
        return self.check_truncated(post(b"/", b"x" * 1000)[:-1000], b"y" * 400, abort=True)

    def test_chunked_close(self) -> Any:
        """
        The client closes between chunks of a chunked body.
        """
        return self.check_truncated(chunked_head(), chunk(b"z" * 300)[: 3 + 300 + 2], abort=False)

    @inlineCallbacks
    def test_malformed_chunked_body(self) -> Any:
        """
        A chunked body that turns out malformed is a truncated body for the
        app (never a normal end); the client gets a 400.
        """
        app = Upload()
        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        client.send(chunked_head() + chunk(b"fine"))
        yield eventually(lambda: app.received == 4)
        client.send(b"zz-not-hex\r\n")
        yield client.wait_closed()
        yield eventually(lambda: app.errors and app.closed)
        self.assertIsInstance(app.errors[0], BodyTruncated)
        self.assertEqual(app.ended, 0)
        self.assertIn(b" 400 ", client.received)

    @inlineCallbacks
    def test_threadpool_read_raises(self) -> Any:
        """
        A worker blocked in C{wsgi.input.read()} gets L{BodyTruncated} when
        the client leaves, not a short read that looks like the end.
        """
        pool = start_pool(self)
        report = Reporter()

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            inp = environ["wsgi.input"]
            report(inp.read(4))
            try:
                inp.read(100)
            except BodyTruncated as e:
                report(e)
                raise
            report("no error")
            return ok(start_response, b"")

        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = yield listen(self, awsgi_site(app, pool))
        client = yield RawClient.connect(server)
        client.send(post(b"/", b"x" * 100)[:-100] + b"abcdef")
        yield eventually(lambda: report.events == [b"abcd"])
        yield client.abort()
        yield eventually(lambda: len(report) == 2)
        self.assertIsInstance(report.events[1], BodyTruncated)
        # The app let it escape: logged quietly, not as an application error.
        yield eventually(lambda: [e for e in list(events) if "Client left while" in formatEvent(e)])
        quiet = [e for e in list(events) if "Client left while the application waited" in formatEvent(e)]
        self.assertEqual([e["log_level"] for e in quiet], [LogLevel.info])
        self.assertEqual(self.flushLoggedErrors(), [])


# ---------------------------------------------------------------------------
# max_body
# ---------------------------------------------------------------------------


class MaxBodyTests(TestCase):
    """
    C{max_body}: a larger declared body is refused with 413 before the app
    is called; a chunked body is cut off with 413 as soon as it passes the
    limit; a body of exactly the limit is accepted.
    """

    LIMIT = 100_000

    def serve(self, **kw: Any) -> Any:
        app = Upload()
        d = listen(self, awsgi_site(app, max_body=self.LIMIT, **kw))
        return d.addCallback(lambda server: (server, app))

    @inlineCallbacks
    def past_the_limit(self, server: Any) -> Any:
        """
        Send a chunked body 10 kB at a time until it passes C{LIMIT}: it is
        answered with 413 and C{Connection: close}; C{(client, response)}.
        """
        client = yield RawClient.connect(server)
        client.send(chunked_head())
        for i in range(self.LIMIT // 10_000 + 1):
            client.send(chunk(b"a" * 10_000))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.code, 413)
        self.assertEqual(response.header("connection"), "close")
        return client, response

    @inlineCallbacks
    def test_declared_too_large(self) -> Any:
        """
        A Content-Length over the limit gets 413 without the app being
        called, before the client sent any body; the connection then
        closes.
        """
        for kw in ({"stream_input": True}, {}):
            server, app = yield self.serve(**kw)
            client = yield RawClient.connect(server)
            client.send(
                b"POST / HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % (self.LIMIT + 1)
            )
            [response] = yield client.wait_for_responses(1)
            self.assertEqual(response.code, 413)
            self.assertEqual(response.header("connection"), "close")
            yield client.wait_closed()
            self.assertEqual(app.paths, [])
            self.assertNotIn(b"100 Continue", client.received)

    @inlineCallbacks
    def test_chunked_too_large(self) -> Any:
        """
        A chunked body gets 413 as soon as it passes the limit, while the
        client is still sending; the connection closes afterwards.
        """
        server, app = yield self.serve(stream_input=True)
        client, response = yield self.past_the_limit(server)
        self.assertLessEqual(app.received, self.LIMIT)
        self.assertEqual(app.ended, 0)
        [error] = app.errors
        self.assertIsInstance(error, BodyTooLarge)
        reason = yield client.wait_closed()
        self.assertEqual(reason, "clean")
        yield eventually(lambda: app.closed)

    @inlineCallbacks
    def test_chunked_too_large_spooled(self) -> Any:
        """
        The same when the body is spooled for a plain app, which is never
        called.
        """
        server, app = yield self.serve()
        client, response = yield self.past_the_limit(server)
        yield client.wait_closed()
        self.assertEqual(app.paths, [])

    @inlineCallbacks
    def test_threadpool_too_large(self) -> Any:
        """
        The same with a threadpool app reading C{wsgi.input}: its read
        raises L{BodyTooLarge} and the client gets 413.
        """
        pool = start_pool(self)
        report = Reporter()

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            try:
                while environ["wsgi.input"].read(5000):
                    pass
            except BodyTooLarge as e:
                report(e)
                raise
            return ok(start_response, b"all read")

        server = yield listen(self, awsgi_site(app, pool, max_body=self.LIMIT))
        client, response = yield self.past_the_limit(server)
        yield client.wait_closed()
        yield eventually(lambda: report.events)
        self.assertIsInstance(report.events[0], BodyTooLarge)
        self.flushLoggedErrors(BodyTooLarge)

    @inlineCallbacks
    def test_equal_to_limit(self) -> Any:
        """
        A body of exactly C{max_body} bytes is accepted, declared or
        chunked, streamed or spooled.
        """
        body = pattern(self.LIMIT)
        for kw in ({"stream_input": True}, {}):
            server, app = yield self.serve(**kw)
            client = yield RawClient.connect(server)
            client.send(post(b"/", body))
            client.send(chunked_head() + chunk(body[:60_000]) + chunk(body[60_000:]) + chunk(b""))
            first, second = yield client.wait_for_responses(2)
            self.assertEqual((first.code, first.body), (200, digest(body)))
            self.assertEqual((second.code, second.body), (200, digest(body)))


# ---------------------------------------------------------------------------
# Pipelining and keep-alive after a streamed body
# ---------------------------------------------------------------------------


class PipeliningTests(TestCase):
    """
    The connection parses what follows a streamed body as the next request.
    """

    @inlineCallbacks
    def check_pipelined(self, site: AWSGISite) -> Any:
        server = yield listen(self, site)
        client = yield RawClient.connect(server)
        one, two = pattern(70_000, 1), pattern(3000, 2)
        client.send(
            post(b"/one", one)
            + chunked_head(b"/two")
            + chunk(two[:1000])
            + chunk(two[1000:])
            + chunk(b"")
            + b"GET /three HTTP/1.1\r\nHost: test\r\n\r\n"
        )
        responses = yield client.wait_for_responses(3)
        self.assertEqual(
            [r.body for r in responses],
            [b"/one " + digest(one), b"/two " + digest(two), b"/three " + digest(b"")],
        )
        client.clear()
        client.send(post(b"/four", b"again"))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"/four " + digest(b"again"))
        self.assertFalse(client.closed)

    def test_stream_input(self) -> Any:
        """
        Two POSTs and a GET in one send, to an C{on_get} app: answered in
        order, and the connection stays usable.
        """
        inner = Upload()

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            return _Prefixed(environ["PATH_INFO"].encode() + b" ", inner(environ, start_response))

        return self.check_pipelined(awsgi_site(app, stream_input=True))

    def test_threadpool(self) -> Any:
        """
        The same with a threadpool app reading C{wsgi.input}.
        """
        return self.check_pipelined(awsgi_site(_echo_digest, start_pool(self)))

    def test_spooled(self) -> Any:
        """
        The same with a spooled body.
        """
        return self.check_pipelined(awsgi_site(_echo_digest))

    @inlineCallbacks
    def test_keep_alive_after_unread_body(self) -> Any:
        """
        An app that answers, without reading, a body that arrived whole
        (and filled the read-ahead buffer) leaves the connection usable for
        the next request.
        """
        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            ctrl = environ["awsgi.controller"](environ)

            def answer() -> None:
                start_response("200 OK", [])
                ctrl.put(environ["PATH_INFO"].encode())
                ctrl.finish()

            reactor.callLater(0.2, answer)
            return ctrl

        server = yield listen(self, awsgi_site(app, stream_input=True))
        client = yield RawClient.connect(server)
        client.send(post(b"/big", pattern(HIGH_WATER + 30_000)))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"/big")
        client.clear()
        client.send(b"GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"/next")


class _Prefixed:
    """
    Middleware-style wrapper: prefixes the first non-empty chunk.
    """

    def __init__(self, prefix: bytes, inner: Any) -> None:
        self._prefix = prefix
        self._inner = inner
        self._it = iter(inner)

    def __iter__(self) -> "_Prefixed":
        return self

    def __next__(self) -> bytes:
        data = next(self._it)
        if data and self._prefix:
            data, self._prefix = self._prefix + data, b""
        return data

    def close(self) -> None:
        self._inner.close()


def _echo_digest(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
    body = environ["wsgi.input"].read()
    return ok(start_response, environ["PATH_INFO"].encode() + b" " + digest(body))


# ---------------------------------------------------------------------------
# examples/upload_hash.py
# ---------------------------------------------------------------------------


class UploadHashExampleTests(TestCase):
    """
    C{examples/upload_hash.py} hashes uploads as they stream and answers
    each one as soon as its body ends.
    """

    def setUp(self) -> None:
        self.example = load_example("upload_hash")

    @inlineCallbacks
    def test_hashes_while_streaming(self) -> Any:
        """
        The example's app hashes a body piece by piece as the client sends
        it (it has seen the first part before the client sent the rest),
        answers before the client's next request on the same connection,
        and keeps the connection open for it.
        """
        pieces = spy_on_hashing(self, self.example)
        server = yield listen(self, self.example.make_site(reactor))
        client = yield RawClient.connect(server)
        body = pattern(300_000)
        client.send(post(b"/", body)[:-200_000])
        yield eventually(lambda: sum(pieces) == 100_000)
        self.assertEqual(client.received, b"")
        client.send(body[-200_000:])
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"%s\n" % digest(body))
        client.clear()
        client.send(chunked_head(b"/", b"Expect: 100-continue"))
        yield client.wait_for(CONTINUE)
        client.send(chunk(b"hello ") + chunk(b"world") + chunk(b""))
        responses = yield client.wait_for_responses(1)
        self.assertEqual(responses[-1].body, b"%s\n" % digest(b"hello world"))
        client.clear()
        client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.code, 405)
        self.assertFalse(client.closed)

    @inlineCallbacks
    def test_pipelined(self) -> Any:
        """
        Two uploads and a GET in one send are answered in order.
        """
        server = yield listen(self, self.example.make_site(reactor))
        client = yield RawClient.connect(server)
        one, two = pattern(200_000, 3), pattern(1000, 4)
        client.send(post(b"/", one) + chunked_head() + chunk(two) + chunk(b"") + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        responses = yield client.wait_for_responses(3)
        self.assertEqual(
            [(r.code, r.body) for r in responses[:2]],
            [(200, b"%s\n" % digest(one)), (200, b"%s\n" % digest(two))],
        )
        self.assertEqual(responses[2].code, 405)

    @inlineCallbacks
    def test_runs_as_a_script(self) -> Any:
        """
        C{python examples/upload_hash.py 0} serves the app on a free port.
        """
        proc, port = yield Deferred.fromCoroutine(run_example(self, "upload_hash"))
        client = yield RawClient.connect(("127.0.0.1", port), testcase=self)
        client.send(post(b"/", b"from a script"))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"%s\n" % digest(b"from a script"))
        yield client.close()
        yield proc.terminate()
