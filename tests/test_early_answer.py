"""
Responses that end before their request body does: the application answers
(a 413, a 403, a redirect) without reading a body the client has sent, or is
still sending.

Whatever the client does with the rest of its body (sends it all at once,
sends it slowly before reading anything, as C{requests} and C{http.client}
do, or reads the response and goes on sending, as C{curl} does), it reads
the whole response, then either the connection serves its next request or
the response said C{Connection: close} and the connection ends with a FIN,
never a reset that destroys a response not yet read (the lingering-close
problem: see Apache's C{lingering_close}).  The rest of the body is never
parsed as a request.

Everything runs on real sockets on 127.0.0.1; the clients that must not
notice the server's FIN (a blocking client still in C{sendall}) are plain
sockets in a thread.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from txawsgi import AWSGIResource
from txawsgi import site as site_module
from txawsgi.errors import BodyTruncated
from txawsgi.input import HIGH_WATER
from txawsgi.server import ServerSite
from txawsgi.timeouts import Timeouts

from ._streaming import awsgi_site, chunk, chunked_head, pattern, post
from .support import RawClient, eventually, listen, parse_response, read_to_eof

REFUSAL = b"too big!"

#: How long the slow clients below go on sending after the response: longer
#: than a close that lingers for a fixed time, not for as long as the client
#: sends.
SENDING = 3.0


class Refuser:
    """
    An app that answers at once (or after C{delay} seconds), without reading
    the body, with C{413} and a short body, or with C{size} bytes of C{200}.
    """

    def __init__(self, delay: float = 0, size: Optional[int] = None) -> None:
        self.delay = delay
        self.size = size
        self.paths: List[str] = []

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.paths.append(environ["PATH_INFO"])
        ctrl = environ["awsgi.controller"](environ)

        def answer() -> None:
            if environ["REQUEST_METHOD"] == "GET":
                body = environ["PATH_INFO"].encode()
                start_response("200 OK", [("Content-Length", str(len(body)))])
            elif self.size is None:
                body = REFUSAL
                start_response("413 Content Too Large", [("Content-Length", str(len(body)))])
            else:
                body = b"r" * self.size
                start_response("200 OK", [("Content-Length", str(len(body)))])
            ctrl.put(body)
            ctrl.finish()

        if self.delay:
            reactor.callLater(self.delay, answer)
        else:
            answer()
        return ctrl


def blocking_exchange(
    port: int,
    head: bytes,
    body: bytes,
    *,
    read_first: bool,
    seconds: float = SENDING,
    piece: int = 16384,
) -> Tuple[bytes, Optional[str], Optional[str]]:
    """
    A blocking client: send C{head}, then C{body} in C{piece}s spread over
    C{seconds}; if C{read_first}, read the response (whatever arrives within
    a second) before sending the body.  Then read to the end of the stream.

    @return: everything received, the error C{sendall} raised (if any) and
        how the stream ended (L{None}: EOF; else the error C{recv} raised).
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(20)
    received = bytearray()
    send_error: Optional[str] = None
    end: Optional[str] = None
    try:
        sock.sendall(head)
        if read_first:
            sock.settimeout(1)
            try:
                while b"\r\n\r\n" not in received:
                    data = sock.recv(65536)
                    if not data:
                        break
                    received += data
            except socket.timeout:
                pass
            sock.settimeout(20)
        pause = seconds * piece / max(len(body), 1)
        try:
            for start in range(0, len(body), piece):
                sock.sendall(body[start : start + piece])
                time.sleep(pause)
        except OSError as e:
            send_error = repr(e)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except OSError as e:
            end = repr(e)
    finally:
        sock.close()
    return bytes(received), send_error, end


class _EarlyAnswer(TestCase):
    timeout = 60

    def serve(self, app: Any, production: bool = False) -> Any:
        site: site_module.AWSGISite
        if production:
            site = ServerSite(AWSGIResource(reactor, app, stream_input=True), reactor=reactor, timeouts=Timeouts(header=5))
        else:
            site = awsgi_site(app, stream_input=True)
        return listen(self, site)

    @inlineCallbacks
    def check_outcome(self, app: Refuser, client: RawClient, expected: bytes = REFUSAL) -> Any:
        """
        The client has the whole response; then the connection either
        serves another request or said it would close and closes cleanly.
        """
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, expected)
        if response.header("connection") == "close":
            reason = yield client.wait_closed(timeout=20)
            self.assertEqual(reason, "clean")
            [again] = parse_response(client.received, eof=True)
            self.assertEqual(again.body, expected)
        else:
            client.clear()
            client.send(b"GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
            [response] = yield client.wait_for_responses(1)
            self.assertEqual(response.body, b"/next")
            self.assertEqual(app.paths[-1], "/next")
        self.assertEqual(app.paths[0], "/big")
        self.assertTrue(all(path in ("/big", "/next") for path in app.paths), app.paths)


class SentWholeTests(_EarlyAnswer):
    """
    The client sends head and body in one go, reading as it sends.
    """

    @inlineCallbacks
    def check(self, data: bytes, delay: float = 0, production: bool = False) -> Any:
        app = Refuser(delay)
        server = yield self.serve(app, production)
        client = yield RawClient.connect(server)
        client.send(data)
        yield self.check_outcome(app, client)

    def test_200k(self) -> Any:
        return self.check(post(b"/big", pattern(200 * 1024)))

    def test_1m(self) -> Any:
        return self.check(post(b"/big", pattern(1 << 20)))

    def test_8m(self) -> Any:
        return self.check(post(b"/big", pattern(8 << 20)))

    def test_8m_production(self) -> Any:
        return self.check(post(b"/big", pattern(8 << 20)), production=True)

    def test_chunked(self) -> Any:
        body = pattern(1 << 20)
        pieces = [chunk(body[i : i + 65536]) for i in range(0, len(body), 65536)]
        return self.check(chunked_head(b"/big") + b"".join(pieces) + chunk(b""))

    def test_answered_later(self) -> Any:
        """
        The shape of C{test_keep_alive_after_unread_body}, with bodies that
        go on well past the read-ahead buffer.
        """

        @inlineCallbacks
        def sizes() -> Any:
            for extra in (30_000, 40_000, 70_000, 200_000, 1 << 20):
                yield self.check(post(b"/big", pattern(HIGH_WATER + extra)), delay=0.2)

        return sizes()


class SlowSenderTests(_EarlyAnswer):
    """
    Clients that go on sending for seconds after the response is out, and
    do not notice the server's FIN meanwhile.
    """

    @inlineCallbacks
    def exchange(
        self, head: bytes, body: bytes, read_first: bool, size: Optional[int] = None, production: bool = False
    ) -> Any:
        app = Refuser(size=size)
        server = yield self.serve(app, production)
        received, send_error, end = yield deferToThread(
            blocking_exchange, server.port, head, body, read_first=read_first
        )
        self.assertIsNone(send_error)
        self.assertIsNone(end)
        [response] = parse_response(received, eof=True)
        self.assertEqual(response.body, REFUSAL if size is None else b"r" * size)
        self.assertEqual(response.header("connection"), "close")
        self.assertEqual(app.paths, ["/big"])

    def test_uploads_then_reads(self) -> Any:
        """
        Like C{requests}: the whole body, slowly, then the response.
        """
        body = pattern(2 << 20)
        return self.exchange(post(b"/big", body)[: -len(body)], body, read_first=False)

    def test_uploads_then_reads_production(self) -> Any:
        body = pattern(2 << 20)
        return self.exchange(post(b"/big", body)[: -len(body)], body, read_first=False, production=True)

    def test_uploads_chunked_then_reads(self) -> Any:
        data = b"".join(chunk(pattern(8192, i)) for i in range(256)) + chunk(b"")
        return self.exchange(chunked_head(b"/big"), data, read_first=False)

    def test_reads_then_goes_on_sending(self) -> Any:
        """
        Like C{curl}: the response is read as soon as it comes, and the body
        goes on.
        """
        body = pattern(2 << 20)
        return self.exchange(post(b"/big", body)[: -len(body)], body, read_first=True)

    def test_large_response_to_an_uploader(self) -> Any:
        """
        A response far larger than the socket buffers, to a client that
        reads nothing until it has sent its body: the server must go on
        reading (and dropping) the body while the response waits, or
        neither side moves.
        """
        body = pattern(2 << 20)
        return self.exchange(post(b"/big", body)[: -len(body)], body, read_first=False, size=8 << 20)

    def test_expect_continue_body_sent_anyway(self) -> Any:
        """
        C{Expect: 100-continue}, answered at once with no C{100}; the client
        sends its body anyway (as curl does once its wait is over): no
        C{100}, the response, then a clean end.
        """
        body = pattern(1 << 20)
        head = post(b"/big", body, b"Expect: 100-continue")[: -len(body)]

        @inlineCallbacks
        def run() -> Any:
            app = Refuser()
            server = yield self.serve(app)
            received, send_error, end = yield deferToThread(
                blocking_exchange, server.port, head, body, read_first=True
            )
            self.assertEqual((send_error, end), (None, None))
            self.assertNotIn(b"100 Continue", received)
            [response] = parse_response(received, eof=True)
            self.assertEqual((response.code, response.body), (413, REFUSAL))
            self.assertEqual(app.paths, ["/big"])

        return run()


class ExpectContinueTests(_EarlyAnswer):
    """
    C{Expect: 100-continue} answered without reading: no C{100}; the client
    sends no body; the connection serves the next request or closes
    cleanly.
    """

    @inlineCallbacks
    def test_no_body_sent(self) -> Any:
        app = Refuser()
        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        body = pattern(1 << 20)
        client.send(post(b"/big", body, b"Expect: 100-continue")[: -len(body)])
        yield self.check_outcome(app, client)
        self.assertNotIn(b"100 Continue", client.received)

    @inlineCallbacks
    def test_no_body_sent_production(self) -> Any:
        app = Refuser()
        server = yield self.serve(app, production=True)
        client = yield RawClient.connect(server)
        client.send(post(b"/big", b"x" * 5000, b"Expect: 100-continue")[:-5000])
        yield self.check_outcome(app, client)
        self.assertNotIn(b"100 Continue", client.received)


class BoundTests(_EarlyAnswer):
    """
    Lingering is bounded: a client that sends for ever is cut off after
    C{LINGER_MAX} seconds.
    """

    @inlineCallbacks
    def test_endless_sender_cut_off(self) -> Any:
        self.patch(site_module, "LINGER", 0.2)
        self.patch(site_module, "LINGER_MAX", 1.0)
        app = Refuser()
        server = yield self.serve(app)
        body = pattern(4 << 20)
        started = time.monotonic()
        received, send_error, end = yield deferToThread(
            blocking_exchange, server.port, post(b"/big", body)[: -len(body)], body, read_first=True, seconds=6
        )
        self.assertLess(time.monotonic() - started, 5)
        self.assertIsNotNone(send_error)
        self.assertTrue(received.startswith(b"HTTP/1.1 413 "), received[:100])


class MalformedMidResponseTests(_EarlyAnswer):
    """
    A chunked body that turns out malformed while the app is already
    streaming its response: no C{400} is written into that response (it
    cannot be repaired); the connection is cut, and the app learns its body
    was truncated.
    """

    @inlineCallbacks
    def check(self, bad: bytes, production: bool) -> Any:
        errors: List[BaseException] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            start_response("200 OK", [("Content-Type", "text/plain")])
            ctrl.put(b"streaming-")

            def got(data: bytes) -> None:
                if data:
                    ctrl.put(b"[%d]" % len(data))
                    ctrl.on_get(65536, got, lost)
                else:
                    ctrl.finish()

            def lost(reason: BaseException) -> None:
                errors.append(reason)

            ctrl.on_get(65536, got, lost)
            return ctrl

        server = yield self.serve(app, production)
        client = yield RawClient.connect(server)
        client.send(chunked_head(b"/big") + chunk(b"fine"))
        yield client.wait_for(b"[4]")
        client.send(bad)
        yield client.wait_closed(timeout=10)
        self.assertNotIn(b"400", client.received)
        self.assertNotIn(b"Bad Request", client.received)
        [partial] = parse_response(client.received, eof=False)
        self.assertFalse(partial.complete)
        self.assertTrue(partial.body.startswith(b"streaming-[4]"), partial.body)
        yield eventually(lambda: errors)
        self.assertIsInstance(errors[0], BodyTruncated)

    def test_bad_size(self) -> Any:
        return self.check(b"zz-not-hex\r\n", False)

    def test_bad_size_production(self) -> Any:
        return self.check(b"zz-not-hex\r\n", True)

    def test_bad_chunk_end(self) -> Any:
        return self.check(b"3\r\nabcXY", True)

    def test_oversized_trailer(self) -> Any:
        return self.check(b"0\r\nX-T: " + b"t" * 100_000 + b"\r\n\r\n", True)


class PlainCloseTests(_EarlyAnswer):
    """
    A client that said it sends nothing more ("Connection: close", or
    HTTP/1.0) and left nothing unread gets a plain close: the server does
    not wait for its FIN (L{site_module.LINGER}) before it lets the
    connection go.  Anything left unread still makes it linger.
    """

    @inlineCallbacks
    def closes_at_once(self, head: bytes, production: bool) -> Any:
        app = Refuser()
        server = yield self.serve(app, production)
        sock = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(sock.close)
        sock.sendall(head)
        received = yield deferToThread(read_to_eof, sock)
        [response] = parse_response(received, eof=True)
        self.assertEqual((response.code, response.body), (200, b"/hello"))
        # The client holds its end open; a lingering server would wait
        # LINGER seconds for its FIN.
        self.assertGreater(site_module.LINGER, 1.0)
        yield eventually(lambda: not server.connections, timeout=1.0)
        self.assertEqual(app.paths, ["/hello"])

    def test_connection_close(self) -> Any:
        return self.closes_at_once(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", False)

    def test_connection_close_production(self) -> Any:
        return self.closes_at_once(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, close\r\n\r\n", True)

    def test_http10(self) -> Any:
        return self.closes_at_once(b"GET /hello HTTP/1.0\r\n\r\n", True)

    @inlineCallbacks
    def test_pipelined_after_close_lingers(self) -> Any:
        """
        A request pipelined after "Connection: close" is left unread: the
        server lingers (no reset) until the client closes.
        """
        app = Refuser()
        server = yield self.serve(app, True)
        sock = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(sock.close)
        sock.sendall(
            b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        received = yield deferToThread(read_to_eof, sock)
        [response] = parse_response(received, eof=True)
        self.assertEqual(response.body, b"/hello")
        yield deferToThread(time.sleep, 0.5)
        self.assertEqual(len(server.connections), 1)
        sock.close()
        yield eventually(lambda: not server.connections, timeout=5)
        self.assertEqual(app.paths, ["/hello"])

    @inlineCallbacks
    def test_keep_alive_server_close_lingers(self) -> Any:
        """
        A close the server decides on (the client asked for nothing) lingers
        as before: the client may be sending its next request.
        """
        app = Refuser()
        server = yield self.serve(app, True)
        sock = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(sock.close)
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        yield eventually(lambda: app.paths == ["/hello"])
        [channel] = [c._channel for c in server.connections]
        channel.close_after_request()
        channel.loseConnection()
        received = yield deferToThread(read_to_eof, sock)
        self.assertEqual(parse_response(received, eof=True)[0].body, b"/hello")
        yield deferToThread(time.sleep, 0.5)
        self.assertEqual(len(server.connections), 1)
