"""
PEP 3333 conformance: C{start_response}, the C{write} callable, status and
header validation, and what the client sees when the app fails.

Every app is wrapped in C{wsgiref.validate.validator} except where a test
says otherwise: those exercise a misuse the validator itself would flag
first, so they call the container directly.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, Iterator, List

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests._pep3333 import TEXT, Served, notify, raw_request, within
from tests.support import RawClient, parse_response, sleep
from txawsgi.errors import HopByHopHeader, InvalidHeader, InvalidStatus, StartResponseError
from txawsgi.response import ERROR_BODY


class _StartResponseTests(Served):
    """
    C{start_response} and C{write}.
    """

    @inlineCallbacks
    def test_headersWaitForFirstNonEmptyChunk(self) -> Iterator[Any]:
        """
        Headers are held while the app yields C{b''}: the client gets
        nothing until the first non-empty chunk.
        """
        gate = threading.Event()
        polls: List[None] = []
        polled: Deferred[None] = Deferred()

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [TEXT, ("X-Test", "held")])

            def body() -> Iterator[bytes]:
                while not gate.is_set():
                    polls.append(None)
                    if len(polls) == 3:
                        notify(polled)
                    yield b""
                yield b"data"

            return body()

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(raw_request("/"))
        yield within(polled)
        # Give wrongly sent headers every chance to arrive.
        yield sleep(0.05)
        self.assertEqual(client.received, b"")
        gate.set()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual((response.code, response.body), (200, b"data"))
        self.assertEqual(response.header("X-Test"), "held")

    @inlineCallbacks
    def test_headersSentAtEndOfEmptyBody(self) -> Iterator[Any]:
        """
        With no body bytes at all, the headers go out when the iterable
        ends, as a complete empty response.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [TEXT, ("X-Test", "empty")])
            return iter([b"", b""])

        server = yield self.serve(app)
        response = yield self.get(server, "/")
        self.assertEqual((response.code, response.body), (200, b""))
        self.assertTrue(response.complete)
        self.assertEqual(response.header("X-Test"), "empty")

    @inlineCallbacks
    def test_excInfoReplacesStatusBeforeOutput(self) -> Iterator[Any]:
        """
        Before any output, C{start_response} with C{exc_info} replaces the
        status and headers.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            start_response("200 OK", [TEXT, ("X-First", "1")])
            try:
                raise ValueError("oops")
            except ValueError:
                start_response("500 Internal Server Error", [TEXT, ("X-Second", "2")], sys.exc_info())
            return [b"custom error page"]

        server = yield self.serve(app)
        response = yield self.get(server, "/")
        self.assertEqual((response.code, response.body), (500, b"custom error page"))
        self.assertIsNone(response.header("X-First"))
        self.assertEqual(response.header("X-Second"), "2")

    @inlineCallbacks
    def test_excInfoAfterOutputReraises(self) -> Iterator[Any]:
        """
        After output, C{start_response} with C{exc_info} re-raises the
        original exception; the connection is aborted and the client sees
        a truncated response.
        """
        original = ValueError("late failure")
        seen: List[BaseException] = []

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            write = start_response("200 OK", [TEXT])
            write(b"partial")
            try:
                raise original
            except ValueError:
                try:
                    start_response("500 Internal Server Error", [TEXT], sys.exc_info())
                except ValueError as e:
                    seen.append(e)
                    raise
            return [b"never"]

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(raw_request("/"))
        yield client.wait_closed()
        self.assertEqual(seen, [original])
        [response] = parse_response(client.received)
        self.assertEqual(response.code, 200)
        self.assertFalse(response.complete)
        self.assertEqual(response.body, b"partial")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @inlineCallbacks
    def test_secondCallRaises(self) -> Iterator[Any]:
        """
        A second call without C{exc_info} raises L{StartResponseError}, which
        the app can catch; the first status stands.
        """
        caught: List[BaseException] = []

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            start_response("200 OK", [TEXT])
            try:
                start_response("201 Created", [TEXT])
            except StartResponseError as e:
                caught.append(e)
            return [b"first"]

        server = yield self.serve(app)
        response = yield self.get(server, "/")
        self.assertEqual((response.code, response.body), (200, b"first"))
        self.assertEqual(len(caught), 1)
        self.assertIsInstance(caught[0], StartResponseError)

    @inlineCallbacks
    def test_writeCallablePrecedesIterable(self) -> Iterator[Any]:
        """
        Bytes given to C{write()} are sent, before the iterable's.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            write = start_response("200 OK", [TEXT])
            write(b"one,")
            write(b"two,")
            return [b"three,", b"four"]

        server = yield self.serve(app)
        response = yield self.get(server, "/")
        self.assertEqual(response.body, b"one,two,three,four")

    # -- status and header validation --------------------------------------

    @inlineCallbacks
    def assertRefused(self, status: Any, headers: Any, error: type, *, validate: bool = True) -> Iterator[Any]:
        """
        An app calling C{start_response(status, headers)} and not catching
        the error: the container raises C{error} at it, the client gets a
        short 500 and nothing the app asked for reaches the wire.
        """
        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            start_response(status, headers)
            return [b"must not be sent"]

        server = yield self.serve(app, validate=validate)
        client = yield RawClient.connect(server)
        client.send(raw_request("/"))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual((response.code, response.body), (500, ERROR_BODY))
        self.assertNotIn(b"must not be sent", client.received)
        self.assertNotIn(b"evil", client.received)
        self.assertNotIn(b"X-Bad", client.received)
        self.assertEqual([name.lower() for name, value in response.headers if name.lower() == "set-cookie"], [])
        failures = self.flushLoggedErrors(error)
        self.assertEqual(len(failures), 1, failures)
        self.assertIs(type(failures[0].value), error)
        yield client.close()

    @inlineCallbacks
    def test_statusNotStr(self) -> Iterator[Any]:
        """
        A non-C{str} status is refused with L{InvalidStatus}.  (Not
        validated: the validator rejects it itself.)
        """
        yield self.assertRefused(b"200 OK", [TEXT], InvalidStatus, validate=False)

    @inlineCallbacks
    def test_statusMalformed(self) -> Iterator[Any]:
        """
        A status that is not C{"NNN reason"} is refused.  (Not validated:
        the validator rejects it itself.)
        """
        yield self.assertRefused("OK", [TEXT], InvalidStatus, validate=False)

    @inlineCallbacks
    def test_statusNotLatin1(self) -> Iterator[Any]:
        """
        A status that latin-1 cannot encode is refused.
        """
        yield self.assertRefused("200 Gr\u00fc\u00df \u20ac", [TEXT], InvalidStatus)

    @inlineCallbacks
    def test_statusSplitting(self) -> Iterator[Any]:
        """
        CR, LF or NUL in the status never reach the wire.  (The validator
        does not look past the code, so these are validated.)
        """
        for status in ("200 OK\r\nSet-Cookie: evil=1", "200 OK\nSet-Cookie: evil=1", "200 OK\rX", "200 OK\x00"):
            yield self.assertRefused(status, [TEXT], InvalidStatus)

    @inlineCallbacks
    def test_headerNotStr(self) -> Iterator[Any]:
        """
        A bytes header name or value is refused with L{InvalidHeader}.
        (Not validated: the validator rejects it itself.)
        """
        yield self.assertRefused("200 OK", [TEXT, (b"X-Bad", "1")], InvalidHeader, validate=False)
        yield self.assertRefused("200 OK", [TEXT, ("X-Bad", b"1")], InvalidHeader, validate=False)
        yield self.assertRefused("200 OK", [TEXT, ("X-Bad", 1)], InvalidHeader, validate=False)
        yield self.assertRefused("200 OK", [TEXT, ["X-Bad", "1"]], InvalidHeader, validate=False)
        yield self.assertRefused("200 OK", ((TEXT,)), InvalidHeader, validate=False)

    @inlineCallbacks
    def test_headerNotLatin1(self) -> Iterator[Any]:
        """
        A header value that latin-1 cannot encode is refused.
        """
        yield self.assertRefused("200 OK", [TEXT, ("X-Bad", "\u20ac")], InvalidHeader)

    @inlineCallbacks
    def test_headerValueSplitting(self) -> Iterator[Any]:
        """
        CR, LF or NUL in a header value is refused: a response-splitting
        attempt gets a 500 without the injected header.  (Not validated: the
        validator rejects control characters itself.)
        """
        for value in ("a\r\nSet-Cookie: evil=1", "a\nSet-Cookie: evil=1", "a\rSet-Cookie: evil=1", "a\x00evil"):
            yield self.assertRefused("200 OK", [TEXT, ("X-Bad", value)], InvalidHeader, validate=False)

    @inlineCallbacks
    def test_invalidHeaderName(self) -> Iterator[Any]:
        """
        A header name that is not an HTTP token is refused.  (Not validated:
        the validator rejects these names itself.)
        """
        for name in ("X-Bad Name", "X-Bad:Name", "", "X-Bad\r\nSet-Cookie", "X-Bad\u00e9"):
            yield self.assertRefused("200 OK", [TEXT, (name, "1")], InvalidHeader, validate=False)

    @inlineCallbacks
    def test_hopByHopHeaders(self) -> Iterator[Any]:
        """
        Hop-by-hop headers belong to the server: refused with
        L{HopByHopHeader}.  (Validated: the validator lets them through.)
        """
        for name in ("Connection", "Transfer-Encoding", "Keep-Alive", "Upgrade", "TE", "Trailer", "connection"):
            yield self.assertRefused("200 OK", [TEXT, (name, "close")], HopByHopHeader)


class _FailureTests(Served):
    """
    An exception in the app: a 500 before output, a truncated response
    after.
    """

    def assertShortErrorPage(self, response: Any) -> None:
        self.assertEqual(response.code, 500)
        self.assertTrue(response.complete)
        self.assertEqual(response.body, ERROR_BODY)
        self.assertNotIn(b"Traceback", response.raw)
        self.assertNotIn(b"secret detail", response.raw)

    @inlineCallbacks
    def test_appRaisesBeforeStartResponse(self) -> Iterator[Any]:
        """
        The app callable raises: a short 500 without the traceback, which
        is logged.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            raise ValueError("secret detail")

        server = yield self.serve(app)
        response = yield self.get(server, "/")
        self.assertShortErrorPage(response)
        [failure] = self.flushLoggedErrors(ValueError)
        self.assertIn("secret detail", failure.getTraceback())

    @inlineCallbacks
    def test_iterableRaisesBeforeOutput(self) -> Iterator[Any]:
        """
        The iterable raises after C{start_response} but before any body
        byte: the held status is replaced by a 500.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [TEXT, ("X-App", "1")])

            def body() -> Iterator[bytes]:
                yield b""
                raise ValueError("secret detail")

            return body()

        server = yield self.serve(app)
        response = yield self.get(server, "/")
        self.assertShortErrorPage(response)
        self.assertIsNone(response.header("X-App"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @inlineCallbacks
    def test_keepAliveAfterErrorPage(self) -> Iterator[Any]:
        """
        After a 500 error page the connection still serves the next request.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            if environ["PATH_INFO"] == "/fail":
                raise ValueError("secret detail")
            start_response("200 OK", [TEXT])
            return [b"fine"]

        server = yield self.serve(app)
        client, [first, second] = yield self.exchange(
            server, raw_request("/fail", close=False) + raw_request("/ok"), n=2
        )
        self.assertShortErrorPage(first)
        self.assertEqual((second.code, second.body), (200, b"fine"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @inlineCallbacks
    def fail_after_output(self, headers: List[Any], data: bytes) -> Iterator[Any]:
        """
        Serve an app that sends C{b"partial"} under C{headers}, then raises;
        send C{data}: C{(client, how the connection closed)}, once it has.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", headers)

            def body() -> Iterator[bytes]:
                yield b"partial"
                raise ValueError("mid-body")

            return body()

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(data)
        reason = yield client.wait_closed()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        return client, reason

    @inlineCallbacks
    def test_raiseAfterOutputChunked(self) -> Iterator[Any]:
        """
        An exception after body bytes were sent aborts the connection: the
        chunked body has no terminator.
        """
        client, reason = yield self.fail_after_output([TEXT], raw_request("/"))
        [response] = parse_response(client.received)
        self.assertEqual(response.framing, "chunked")
        self.assertFalse(response.complete)
        self.assertEqual(response.body, b"partial")
        self.assertNotIn(b"0\r\n\r\n", client.received)

    @inlineCallbacks
    def test_raiseAfterOutputContentLength(self) -> Iterator[Any]:
        """
        With a Content-Length, an exception after output leaves the body
        short: the client can tell the response is incomplete.
        """
        client, reason = yield self.fail_after_output([TEXT, ("Content-Length", "100")], raw_request("/", close=False))
        [response] = parse_response(client.received)
        self.assertEqual(response.framing, "content-length")
        self.assertFalse(response.complete)
        self.assertEqual(response.body, b"partial")

    @inlineCallbacks
    def test_raiseAfterOutputCloseDelimited(self) -> Iterator[Any]:
        """
        When only the end of the connection delimits the body (an HTTP/1.0
        client, no Content-Length), an exception after output resets the
        connection: a clean close would pass for a complete body.
        """
        client, reason = yield self.fail_after_output([TEXT], b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n")
        self.assertEqual(reason, "reset")


class StartResponseTests(_StartResponseTests, TestCase):
    """
    Apps running in the reactor thread.
    """


class ThreadpoolStartResponseTests(_StartResponseTests, TestCase):
    """
    Apps running in a threadpool.
    """

    threaded = True


class FailureTests(_FailureTests, TestCase):
    """
    Apps running in the reactor thread.
    """


class ThreadpoolFailureTests(_FailureTests, TestCase):
    """
    Apps running in a threadpool.
    """

    threaded = True
