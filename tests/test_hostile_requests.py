"""
Hostile and malformed requests, byte by byte, against the production site
(L{txawsgi.server.ServerSite}) over real sockets: framing (Content-Length,
Transfer-Encoding, chunks, trailers), head syntax (obsolete folding, bare
LF/CR, NUL and control characters, absolute-form targets, methods,
versions, Host), the configurable limits (414/431), HTTP/1.0 keep-alive,
and request smuggling.

Every refused request gets its status and a C{Connection: close} answer
the client can read, never reaches the application, and the server serves
the next client.  (The checks live in L{txawsgi.limits}; see its docstring
for what Twisted's parser alone gets wrong.)
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txawsgi import AWSGIResource
from txawsgi.errors import BodyTruncated
from txawsgi.limits import DEFAULT_LIMITS, ChunkedDecoder, Limits, MalformedChunk
from txawsgi.server import ServerSite
from txawsgi.timeouts import Timeouts

from ._production import parse, serve
from .support import ClosedBeforeMatch, ParsedResponse, RawClient, eventually, listen, parse_response

HOST = b"Host: example.com\r\n"


def get(target: bytes = b"/", headers: bytes = HOST, version: bytes = b"HTTP/1.1", method: bytes = b"GET") -> bytes:
    return b"%s %s %s\r\n%s\r\n" % (method, target, version, headers)


def post(headers: bytes, body: bytes, target: bytes = b"/") -> bytes:
    return b"POST %s HTTP/1.1\r\n%s%s\r\n%s" % (target, HOST, headers, body)


class Recorder:
    """
    An application that records the environ of every call and answers with
    the request body it read.
    """

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []

    def __call__(self, environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        body = environ["wsgi.input"].read()
        self.calls.append(dict(environ, body=body))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


class _Hostile(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    async def serve(
        self,
        limits: Optional[Limits] = None,
        app: Any = None,
        header_timeout: Optional[float] = 5,
        sndbuf: Optional[int] = None,
        **kw: Any,
    ) -> Any:
        self.app = app if app is not None else Recorder()
        site = ServerSite(AWSGIResource(reactor, self.app, **kw), reactor=reactor, timeouts=Timeouts(header=header_timeout))
        if limits is not None:
            site.limits = limits
        self.server = await listen(self, site, sndbuf=sndbuf)
        return self.server

    async def send(self, data: bytes, *, responses: int = 1, timeout: float = 5) -> Tuple[RawClient, List[ParsedResponse]]:
        """
        Send C{data} on a new connection; fire once C{responses} final
        responses came, or the server closed the connection.
        """
        client = await RawClient.connect(self.server)
        client.send(data)
        try:
            parsed = await client.wait_for_responses(responses, timeout=timeout)
        except ClosedBeforeMatch:
            parsed = parse_response(client.received, eof=True)
        return client, [r for r in parsed if not r.interim]

    async def refused(self, data: bytes, code: int = 400, *, why: str = "") -> ParsedResponse:
        """
        C{data} is refused with C{code}, answered with Connection: close, the
        connection closes, and the application is not called.
        """
        before = len(self.app.calls) if isinstance(self.app, Recorder) else 0
        client, responses = await self.send(data)
        await client.wait_closed(timeout=5)
        label = f"{data[:120]!r}"
        self.assertTrue(responses, f"no answer to {label}")
        self.assertEqual(responses[0].code, code, f"{label}: {responses[0].code} {responses[0].body!r}")
        self.assertEqual(responses[0].header("connection"), "close", label)
        if why:
            self.assertIn(why.encode(), responses[0].body, label)
        if isinstance(self.app, Recorder):
            self.assertEqual(len(self.app.calls), before, f"{label} reached the application")
        return responses[0]

    async def served(self, data: bytes, body: bytes = b"", responses: int = 1) -> Dict[str, Any]:
        """
        C{data} is served (200, the body echoed); return the environ.
        """
        before = len(self.app.calls)
        client, got = await self.send(data, responses=responses)
        label = f"{data[:120]!r}"
        self.assertEqual([r.code for r in got], [200] * responses, f"{label}: {[(r.code, r.body) for r in got]}")
        self.assertEqual(got[-1].body, body, label)
        self.assertEqual(len(self.app.calls), before + responses, label)
        await client.close()
        return self.app.calls[-1]

    def logged(self, text: str) -> List[str]:
        return [m for m in (formatEvent(e) for e in self.events) if text in m]


class FramingTests(_Hostile):
    """
    Content-Length and Transfer-Encoding: one framing, unambiguous.
    """

    async def test_contentLengthAndTransferEncoding(self) -> None:
        """
        Both framings at once (CL.TE, TE.CL, identity) is a 400, and the
        smuggled request behind it is never served.
        """
        await self.serve()
        smuggled = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        for headers in (
            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(smuggled),
            b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(smuggled),
            b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
            b"Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
            b"Content-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n",
        ):
            await self.refused(post(headers, smuggled))
        self.assertEqual(self.app.calls, [])
        self.assertTrue(self.logged("both Content-Length and Transfer-Encoding"))

    async def test_contentLengthValues(self) -> None:
        """
        Content-Length is 1 to 18 digits, once: anything else is a 400
        (Twisted alone raised an unhandled ValueError for 5000 digits).
        """
        await self.serve()
        for value in (b"+5", b"-5", b"5 5", b"0x5", b"5,5", b"5.0", b"", b"five", b"1" * 19, b"1" * 5000, b"5\x0b"):
            await self.refused(post(b"Content-Length: " + value + b"\r\n", b"hello"))
        await self.refused(post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), why="repeated")
        await self.refused(post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"))
        self.assertEqual(self.logged("Unhandled Error"), [])
        await self.served(post(b"Content-Length:  5 \t\r\n", b"hello"), b"hello")
        await self.served(post(b"Content-Length: 0005\r\n", b"hello"), b"hello")

    async def test_transferEncodings(self) -> None:
        """
        Only chunked (last, once, on HTTP/1.1) is accepted; unknown codings
        are 501; the obsolete identity before chunked is ignored.
        """
        await self.serve()
        body = b"5\r\nhello\r\n0\r\n\r\n"
        for value, code in (
            (b"gzip", 501),
            (b"gzip, chunked", 501),
            (b"x-custom", 501),
            (b"chunked, gzip", 400),
            (b"chunked, chunked", 400),
            (b"chunked, identity", 400),
            (b"identity", 400),
            (b"\x85chunked", 400),
            (b"chunked;q=1", 400),
            (b"chun\xe2\x84\xaaed", 400),
        ):
            await self.refused(post(b"Transfer-Encoding: " + value + b"\r\n", body), code)
        await self.refused(post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", body))
        await self.refused(post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", body))
        await self.refused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + body, why="HTTP/1.0")
        await self.served(post(b"Transfer-Encoding: ChUnKeD\r\n", body), b"hello")
        await self.served(post(b"Transfer-Encoding: identity, chunked\r\n", body), b"hello")
        await self.served(post(b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n", body), b"hello")
        await self.served(post(b"Transfer-Encoding: \tchunked \r\n", body), b"hello")

    async def test_chunkSizes(self) -> None:
        """
        Chunk sizes are bare hex (at most 16 significant digits) with
        well-formed extensions, and chunk data ends with CRLF.
        """
        await self.serve()
        te = b"Transfer-Encoding: chunked\r\n"
        for line in (
            b"0x5", b"-5", b"+5", b"5 ", b" 5", b"g", b"", b"5\n", b"5\r", b"f" * 17, b"1" * 200,
            b"5;", b"5;=x", b'5;a="x', b"5;a=b c", b"5;\x00", b"5;a=\x01", b"5 \t", b"5;a=",
        ):
            await self.refused(post(te, line + b"\r\nhello\r\n0\r\n\r\n"))
        for line in (b"5;a", b"5 ; a = b", b'5;a="q\\"x"', b"5;a=b;c=d", b"00005", b"0000000000000000005", b"5;a=\"\xe9\""):
            await self.served(post(te, line + b"\r\nhello\r\n0\r\n\r\n"), b"hello")
        await self.refused(post(te, b"5\r\nhelloXX0\r\n\r\n"), why="CRLF")
        await self.refused(post(te, b"5\r\nhello\n0\r\n\r\n"))
        await self.refused(post(te, b"3\r\nhello\r\n0\r\n\r\n"))
        await self.served(post(te, b"5\r\nhello\r\n6\r\n world\r\n000\r\n\r\n"), b"hello world")

    async def test_trailers(self) -> None:
        """
        Trailer fields are checked like header fields (and bounded by the
        same limits), then dropped: the application never sees them.
        """
        await self.serve(Limits(fields=5, field_size=64))
        te = b"Transfer-Encoding: chunked\r\n"
        environ = await self.served(post(te, b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Other: two words\r\n\r\n"), b"hello")
        self.assertNotIn("HTTP_X_SUM", environ)
        for trailer, code in (
            (b"NoColon", 400),
            (b"X: a\x00b", 400),
            (b"X: a\x01b", 400),
            (b"X : y", 400),
            (b"X\xe9: y", 400),
            (b" folded", 400),
            (b"X: y\r\n continued", 400),
            (b"X: " + b"y" * 100, 431),
            (b"\r\n".join(b"X-%d: y" % i for i in range(6)), 431),
        ):
            await self.refused(post(te, b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n"), code)

    async def test_bodyGoesBadAfterDispatch(self) -> None:
        """
        A streamed body whose chunking breaks after the application took the
        request: its C{on_get} errback gets L{BodyTruncated}, the client a
        400 (nothing was sent yet), the log says why, and the server goes
        on.
        """
        errors: List[BaseException] = []
        got: List[bytes] = []

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            start_response("200 OK", [("Content-Type", "text/plain")])

            def read(data: bytes) -> None:
                got.append(data)
                if data:
                    ctrl.on_get(100, read, errors.append)
                else:
                    ctrl.put(b"".join(got))
                    ctrl.finish()

            ctrl.on_get(100, read, errors.append)
            return ctrl

        await self.serve(app=app, stream_input=True)
        client = await RawClient.connect(self.server)
        client.send(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n"))
        await eventually(lambda: got == [b"hello"])
        client.send(b"zz\r\n")
        [response] = await client.wait_for_responses(1)
        self.assertEqual(response.code, 400)
        await client.wait_closed()
        await eventually(lambda: len(errors) == 1)
        self.assertIsInstance(errors[0], BodyTruncated)
        self.assertTrue(self.logged("400 Bad Request: malformed chunk size line"))
        # Healthy: the next client is served.
        self.app = Recorder()
        self.server.site.resource = AWSGIResource(reactor, self.app)
        await self.served(get(), b"")

    async def test_bodyGoesBadMidResponse(self) -> None:
        """
        If the response had started, a body that goes bad cuts the
        connection: a 400 after a 200 would be read as part of it.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            start_response("200 OK", [("Content-Type", "text/plain")])
            ctrl.put(b"started\n")
            return ctrl

        await self.serve(app=app, stream_input=True)
        client = await RawClient.connect(self.server)
        client.send(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n"))
        await client.wait_for(b"started\n")
        client.send(b"zz\r\n")
        self.assertIn(await client.wait_closed(), ("reset", "clean"))
        self.assertNotIn(b"400", client.received)
        [response] = parse_response(client.received, eof=False)
        self.assertFalse(response.complete)


class HeadTests(_Hostile):
    """
    Request lines and header fields.
    """

    async def test_obsoleteFolding(self) -> None:
        await self.serve()
        await self.refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: one\r\n two\r\n\r\n", why="folding")
        await self.refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: one\r\n\ttwo\r\n\r\n", why="folding")
        await self.refused(b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", why="folding")

    async def test_bareLineEnds(self) -> None:
        """
        A bare LF or CR anywhere in a head is a 400; a head of bare-LF lines
        never completes, so the head timeout answers it.
        """
        await self.serve(header_timeout=0.5)
        for data in (
            b"GET / HTTP/1.1\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\rHost: x\r\n\r\n",
            b"GET /\n HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\r\n\r\n",
        ):
            await self.refused(data)
        await self.refused(b"GET / HTTP/1.1\nHost: x\n\n", 408)
        await self.refused(b"GET / HTTP/1.1\r\nHost: x\r\n\n", 408)
        self.assertEqual(self.app.calls, [])

    async def test_nulAndControlCharacters(self) -> None:
        """
        NUL and control characters (but HTAB in values) are refused in the
        request line, field names and field values; obs-text is accepted.
        """
        await self.serve()
        for data in (
            get(b"/a\x00b"),
            get(b"/a\x7fb"),
            get(b"/a\x80b"),
            get(b"/a\xb0b"),
            get(b"/a\tb"),
            get(method=b"G\x00T"),
            get(headers=HOST + b"X\x00Y: z\r\n"),
            get(headers=HOST + b"X: a\x00b\r\n"),
            get(headers=HOST + b"X: a\x01b\r\n"),
            get(headers=HOST + b"X: a\x0bb\r\n"),
            get(headers=HOST + b"X: a\x1bb\r\n"),
            get(headers=HOST + b"X: a\x7fb\r\n"),
            get(headers=HOST + b"X\x7f: b\r\n"),
            get(headers=HOST + b"X\xe9: b\r\n"),
            get(headers=HOST + b": empty name\r\n"),
            get(headers=HOST + b"X Y: b\r\n"),
            get(headers=HOST + b"X : b\r\n"),
        ):
            await self.refused(data)
        environ = await self.served(get(headers=HOST + b"X: caf\xe9 \x80\xff\tend\r\n"))
        self.assertEqual(environ["HTTP_X"], "caf\xe9 \x80\xff\tend")

    async def test_methodsAndVersions(self) -> None:
        await self.serve()
        for data, code in (
            (get(method=b"get"), 400),
            (get(method=b"Get"), 400),
            (get(method=b"G(T"), 400),
            (get(version=b"HTTP/2.0"), 505),
            (get(version=b"HTTP/1.2"), 505),
            (get(version=b"HTTP/0.9"), 505),
            (get(version=b"HTTP/1"), 400),
            (get(version=b"http/1.1"), 400),
            (get(version=b"HTTP/11.1"), 400),
            (b"GET /\r\n\r\n", 400),
            (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", 400),
            (b" GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ):
            await self.refused(data, code)
        environ = await self.served(get(method=b"M-SEARCH"))
        self.assertEqual(environ["REQUEST_METHOD"], "M-SEARCH")

    async def test_host(self) -> None:
        """
        One Host at most, with a host[:port] value (RFC 9112 section 3.2);
        an HTTP/1.1 request without one is still served.
        """
        await self.serve()
        await self.refused(get(headers=b"Host: a\r\nHost: b\r\n"), why="more than one Host")
        for value in (b"a b", b"a/b", b"a@b", b"a?b", b"a#b", b"a\\b", b"<a>"):
            await self.refused(get(headers=b"Host: " + value + b"\r\n"), why="invalid Host")
        environ = await self.served(get(headers=b""))
        self.assertNotIn("HTTP_HOST", environ)
        environ = await self.served(get(headers=b"Host: [::1]:8080\r\n"))
        self.assertEqual((environ["SERVER_NAME"], environ["HTTP_HOST"]), ("[::1]", "[::1]:8080"))

    async def test_framingAliases(self) -> None:
        """
        C{Content_Length} and C{Transfer_Encoding} are refused (a CGI-style
        gateway would read them as the framing headers); other underscore
        headers are only kept from the environ.
        """
        await self.serve()
        for name in (b"Content_Length", b"content_length", b"Transfer_Encoding", b"TRANSFER_ENCODING"):
            await self.refused(post(name + b": 3\r\nContent-Length: 5\r\n", b"hello"), why="aliases")
        environ = await self.served(get(headers=HOST + b"X_Forwarded_For: 6.6.6.6\r\n"))
        self.assertNotIn("HTTP_X_FORWARDED_FOR", environ)

    async def test_targets(self) -> None:
        """
        Origin-form and absolute-form targets are served (absolute-form's
        authority replaces Host); the fragment is dropped; authority-form
        and stray asterisks are refused.
        """
        await self.serve()
        environ = await self.served(get(b"http://example.org:8080/p/a%20b?x=1#frag", b"Host: other\r\n"))
        self.assertEqual(environ["PATH_INFO"], "/p/a b")
        self.assertEqual(environ["QUERY_STRING"], "x=1")
        self.assertEqual(environ["HTTP_HOST"], "example.org:8080")
        self.assertEqual(environ["SERVER_NAME"], "example.org")
        self.assertEqual(environ["REQUEST_URI"], "/p/a%20b?x=1")
        environ = await self.served(get(b"HTTPS://example.org?q", b""))
        self.assertEqual((environ["PATH_INFO"], environ["QUERY_STRING"], environ["HTTP_HOST"]), ("/", "q", "example.org"))
        environ = await self.served(get(b"http://[::1]/"))
        self.assertEqual(environ["HTTP_HOST"], "[::1]")
        environ = await self.served(get(b"/page#section"))
        self.assertEqual((environ["PATH_INFO"], environ["REQUEST_URI"]), ("/page", "/page"))
        for target in (
            b"http://user:pw@example.org/",
            b"http:///path",
            b"ftp://example.org/",
            b"example.org:443",
            b"page",
            b"*",
            b"#frag",
            b"http://exa mple/",
        ):
            await self.refused(get(target))
        await self.refused(get(b"example.org:443", method=b"CONNECT"))

    async def test_http10KeepAlive(self) -> None:
        """
        HTTP/1.0 keep-alive is not honoured (RFC 9112 section 9.3 makes it
        optional): the first request is answered completely, the connection
        closes, and what followed is never served.
        """
        await self.serve()
        client, responses = await self.send(
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        await client.wait_closed()
        responses = parse_response(client.received, eof=True)
        self.assertEqual([(r.code, r.version) for r in responses], [(200, "HTTP/1.0")])
        self.assertEqual(responses[0].header("content-length"), "0")
        self.assertNotIn("keep-alive", (responses[0].header("connection") or "").lower())
        self.assertEqual([c["PATH_INFO"] for c in self.app.calls], ["/a"])

    async def test_pipelinedSmuggling(self) -> None:
        """
        Classic smuggling payloads: the part that would be a second request
        to a server reading the other framing is never served.
        """
        await self.serve()
        attacks = [
            # CL.TE
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
            # TE.CL
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
            # TE.TE with an obfuscated second TE
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: cow\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
            # CL with a trailing request, duplicate CL
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            # Chunk extension hiding a CRLF
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;\nxx\r\n10\r\n1f\r\nGET /smuggled HTTP/1.1\r\n\r\n0\r\n\r\n",
            # Bare-LF terminated chunk size
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        for attack in attacks:
            client, responses = await self.send(attack)
            await client.wait_closed()
            codes = [r.code for r in parse_response(client.received, eof=True)]
            self.assertTrue(codes and codes[0] >= 400, (attack, codes))
        self.assertEqual([c["PATH_INFO"] for c in self.app.calls], [])

    async def test_lingeringClose(self) -> None:
        """
        A client that goes on sending after a request that closes the
        connection (pipelining after "Connection: close", or HTTP/1.0) still
        gets the whole response: the server half-closes and drains what
        comes, where closing with unread input would reset the connection
        and destroy the part of the response still in its send buffer.
        """
        body = b"x" * (1 << 20)

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]

        await self.serve(app=app, sndbuf=16384)
        for first in (get(b"/a", HOST + b"Connection: close\r\n"), get(b"/a", b"", b"HTTP/1.0")):
            client = await RawClient.connect(self.server, rcvbuf=16384)
            client.send(first)

            def chatter() -> None:
                if not client.closed:
                    client.send(get(b"/more"))
                    reactor.callLater(0.002, chatter)

            chatter()
            await client.wait_closed(timeout=20)
            [response] = parse_response(client.received, eof=True)
            self.assertEqual((response.code, len(response.body)), (200, len(body)))
            self.assertEqual(client.closed_reason, "clean")

    async def test_healthyAfterRefusals(self) -> None:
        """
        A connection refused mid-pipeline answers what came before it, and
        the server keeps serving.
        """
        await self.serve()
        client, responses = await self.send(get(b"/one") + b"GET /two HTTP/1.1\r\nX: \x01\r\n\r\n" + get(b"/three"), responses=2)
        await client.wait_closed()
        self.assertEqual([r.code for r in responses], [200, 400])
        self.assertEqual([c["PATH_INFO"] for c in self.app.calls], ["/one"])
        await self.served(get(b"/four"))


class LimitTests(_Hostile):
    """
    414 and 431, at the configured sizes.
    """

    async def test_requestLine(self) -> None:
        """
        A request line longer than the limit is a 414, whether it arrives
        whole or without its end; one at the limit is served.
        """
        await self.serve(Limits(request_line=100))
        at = b"GET /" + b"a" * (100 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
        self.assertEqual(len(at), 100)
        await self.served(at + b"\r\n" + HOST + b"\r\n")
        await self.refused(at.replace(b"GET /", b"GET /b") + b"\r\n" + HOST + b"\r\n", 414)
        await self.refused(b"GET /" + b"a" * 5000, 414)

    async def test_fields(self) -> None:
        await self.serve(Limits(fields=3, field_size=40, head=300))
        three = HOST + b"A: 1\r\nB: 2\r\n"
        await self.served(get(headers=three))
        await self.refused(get(headers=three + b"C: 3\r\n"), 431, why="more than 3 header fields")
        at = b"X: " + b"y" * (40 - 2 - 3)
        await self.served(get(headers=at + b"\r\n"))
        await self.refused(get(headers=at + b"y\r\n"), 431, why="over the limit of 40 bytes")
        await self.refused(get(headers=b"X: " + b"y" * 1000), 431)
        await self.refused(get(b"/" + b"p" * 250, HOST + b"A: " + b"1" * 30 + b"\r\n"), 431, why="request head over")

    async def test_defaults(self) -> None:
        """
        The defaults: 8190-byte request line and field lines, 100 fields,
        64 KiB heads.
        """
        self.assertEqual(DEFAULT_LIMITS, Limits(request_line=8190, fields=100, field_size=8190, head=65536))
        await self.serve()
        await self.served(get(b"/" + b"a" * (8190 - 14)))
        await self.refused(get(b"/" + b"a" * (8190 - 13)), 414)
        await self.served(get(headers=b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(100))))
        await self.refused(get(headers=b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(101))), 431)
        big = b"X-%d: " + b"v" * 8000 + b"\r\n"
        await self.refused(get(headers=b"".join(big % i for i in range(9))), 431, why="request head over")

    async def test_answerReadableAfterFlood(self) -> None:
        """
        A client that sends far more than the limit at once still reads
        the 431 (the server lingers instead of resetting).
        """
        await self.serve()
        client = await RawClient.connect(self.server)
        client.send(b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 100 + b"\r\n" * 1 + b"Z: " + b"z" * 400000 + b"\r\n\r\n")
        [response] = await client.wait_for_responses(1)
        self.assertEqual(response.code, 431)
        await client.wait_closed(timeout=10)

    async def test_zeroMeansNoLimit(self) -> None:
        await self.serve(Limits(request_line=0, fields=0, field_size=0, head=200000))
        await self.served(get(b"/" + b"a" * 100000))
        # Served whole, but logged cut (txawsgi.accesslog.MAX_FIELD): no
        # 100 KB log event.
        await eventually(lambda: self.logged("...[+"))
        self.assertLess(max(len(formatEvent(e)) for e in list(self.events)), 32 * 1024)
        await self.served(get(headers=b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(1000))))
        self.assertEqual(Limits(request_line=0, field_size=100, head=5000).line_buffer, 5000)
        self.assertEqual(Limits(request_line=300, field_size=100, head=5000).line_buffer, 300)
        self.assertRaises(ValueError, Limits, head=0)
        self.assertRaises(ValueError, Limits, fields=-1)

    async def test_twistdOptions(self) -> None:
        """
        C{--limit-request-line}, C{--limit-request-fields} and
        C{--limit-request-field-size} configure C{twistd awsgi}'s site.
        """
        options = parse()
        self.assertEqual(
            (options["limit-request-line"], options["limit-request-fields"], options["limit-request-field-size"]),
            (8190, 100, 8190),
        )
        served = serve(
            self, "--app", "tests.prodapps:application",
            "--limit-request-line", "64", "--limit-request-fields", "2", "--limit-request-field-size", "30",
        )
        self.assertEqual(served.site.limits, Limits(request_line=64, fields=2, field_size=30))
        client = await RawClient.connect(("127.0.0.1", served.port), testcase=self)
        client.send(b"GET /" + b"x" * 64 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        [response] = await client.wait_for_responses(1)
        self.assertEqual(response.code, 414)


class DecoderTests(SynchronousTestCase):
    """
    L{ChunkedDecoder} on its own: arbitrary splits give the same result.
    """

    def decode(self, data: bytes, step: int) -> Tuple[bytes, Optional[bytes]]:
        """
        Feed C{data} C{step} bytes at a time, as the channel does (nothing
        after the end of the body); return the body and what followed it.
        """
        got: List[bytes] = []
        rest: List[bytes] = []
        decoder = ChunkedDecoder(got.append, rest.append)
        for i in range(0, len(data), step):
            decoder.dataReceived(data[i : i + step])
            if rest:
                return b"".join(got), rest[0] + data[i + step :]
        return b"".join(got), None

    def test_splits(self) -> None:
        data = b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: v\r\n\r\nNEXT"
        for step in range(1, len(data) + 1):
            self.assertEqual(self.decode(data, step), (b"hello world", b"NEXT"), step)

    def test_malformed(self) -> None:
        self.assertRaises(MalformedChunk, self.decode, b"5\r\nhelloX\r\n", 100)
        self.assertRaises(MalformedChunk, self.decode, b"1" * 5000, 100)

    def test_noMoreData(self) -> None:
        from twisted.web.http import _DataLoss

        decoder = ChunkedDecoder(lambda data: None, lambda rest: None)
        decoder.dataReceived(b"5\r\nhel")
        self.assertRaises(_DataLoss, decoder.noMoreData)
