"""
The one-pass request head and response head of L{txawsgi.wire}, and the
steps of Twisted's per-request machinery L{txawsgi.site.AWSGIChannel} takes
in one go: the bytes on the wire must be exactly those of the line-by-line
path (Twisted's parser behind L{txawsgi.limits}, Twisted's C{Request.write}).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterable, List, Tuple

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

import txawsgi.response
import txawsgi.site
import txawsgi.wire
from txawsgi import AWSGIResource
from txawsgi.limits import DEFAULT_LIMITS, Limits
from txawsgi.server import ServerSite
from txawsgi.site import AWSGISite
from txawsgi.timeouts import Timeouts
from txawsgi.wire import parse_plain_head

from .support import RawClient, listen, parse_response

HEAD = b"Host: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"


class ParsePlainHeadTests(SynchronousTestCase):
    """
    L{parse_plain_head} takes plain heads and leaves every other one to the
    line-by-line checks.
    """

    def test_plain(self) -> None:
        parsed = parse_plain_head(b"GET /a?b HTTP/1.1", HEAD + b"NEXT", DEFAULT_LIMITS)
        assert parsed is not None
        method, target, version, fields, length, used = parsed
        self.assertEqual((method, target, version, length), (b"GET", b"/a?b", b"HTTP/1.1", 0))
        self.assertEqual(fields, {b"Host": [b"example.com"], b"User-Agent": [b"t"], b"Accept": [b"*/*"]})
        self.assertEqual((HEAD + b"NEXT")[used:], b"NEXT")

    def test_namesAndValues(self) -> None:
        """
        Names are keyed as Twisted's L{Headers} keys them, repeated fields
        keep their order, values lose surrounding blanks.
        """
        rest = b"x-dup: 1\r\nX-DUP:2\r\ncontent-length: 12\r\nEtag: \t v \t\r\nX-Empty:\r\n\r\n"
        parsed = parse_plain_head(b"POST / HTTP/1.0", rest, DEFAULT_LIMITS)
        assert parsed is not None
        self.assertEqual(
            parsed[3],
            {b"X-Dup": [b"1", b"2"], b"Content-Length": [b"12"], b"ETag": [b"v"], b"X-Empty": [b""]},
        )
        self.assertEqual(parsed[4], 12)

    def test_noFields(self) -> None:
        parsed = parse_plain_head(b"GET / HTTP/1.1", b"\r\nGET", DEFAULT_LIMITS)
        assert parsed is not None
        self.assertEqual((parsed[3], parsed[5]), ({}, 2))

    def test_notPlain(self) -> None:
        """
        Anything to refuse, rewrite or look at closer is not taken.
        """
        cases: List[Tuple[bytes, bytes]] = [
            (b"GET / HTTP/1.1", b"Host: a\r\n"),  # incomplete
            (b"GET http://a/ HTTP/1.1", HEAD),
            (b"get / HTTP/1.1", HEAD),
            (b"GET / HTTP/2.0", HEAD),
            (b"GET /a#f HTTP/1.1", HEAD),
            (b"OPTIONS * HTTP/1.1", HEAD),
            (b"GET / HTTP/1.1", b"Host: a\r\nHost: b\r\n\r\n"),
            (b"GET / HTTP/1.1", b"Host: a b\r\n\r\n"),
            (b"GET / HTTP/1.1", b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            (b"GET / HTTP/1.1", b"Content-Length: +1\r\n\r\n"),
            (b"GET / HTTP/1.1", b"Transfer-Encoding: chunked\r\n\r\n"),
            (b"GET / HTTP/1.1", b"Content_Length: 1\r\n\r\n"),
            (b"GET / HTTP/1.1", b"X-A: 1\r\n folded\r\n\r\n"),
            (b"GET / HTTP/1.1", b"X-A: 1\nX-B: 2\r\n\r\n"),
            (b"GET / HTTP/1.1", b"X-A: 1\rX-B: 2\r\n\r\n"),
            (b"GET / HTTP/1.1", b"X-A: \x01\r\n\r\n"),
            (b"GET / HTTP/1.1", b"X-A: \x7f\r\n\r\n"),
            (b"GET / HTTP/1.1", b"Bad Name: 1\r\n\r\n"),
            (b"GET / HTTP/1.1", b"No colon\r\n\r\n"),
            (b"GET / HTTP/1.1", b": empty name\r\n\r\n"),
        ]
        for line, rest in cases:
            self.assertIsNone(parse_plain_head(line, rest, DEFAULT_LIMITS), (line, rest))

    def test_limits(self) -> None:
        """
        A head over any limit is left to the checks that refuse it.
        """
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(5)) + b"\r\n"
        line = b"GET /" + b"a" * 20 + b" HTTP/1.1"
        self.assertIsNotNone(
            parse_plain_head(line, fields, Limits(request_line=len(line), fields=5, field_size=8, head=200))
        )
        self.assertIsNone(parse_plain_head(line, fields, Limits(request_line=len(line) - 1)))
        self.assertIsNone(parse_plain_head(line, fields, Limits(fields=4)))
        self.assertIsNotNone(parse_plain_head(line, b"X-Long: 12345\r\n\r\n", Limits(field_size=15)))
        self.assertIsNone(parse_plain_head(line, b"X-Long: 12345\r\n\r\n", Limits(field_size=14)))
        size = len(line) + 2 + len(fields) - 2
        self.assertIsNotNone(parse_plain_head(line, fields, Limits(head=size)))
        self.assertIsNone(parse_plain_head(line, fields, Limits(head=size - 1)))


# -- the same bytes out as Twisted's line-by-line path ------------------------


def _app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    seen = sorted((k, v) for k, v in environ.items() if k.isupper())
    payload = repr((seen, body)).encode()
    path = environ["PATH_INFO"]
    if path.startswith("/chunked"):
        start_response("200 OK", [("Content-Type", "text/plain"), ("date", "mine")])
        return [payload[:10], payload[10:]]
    if path.startswith("/nocontent"):
        start_response("204 No Content", [("X-A", "1")])
        return []
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(payload))), ("x-b", " v ")])
    return [payload]


_PLAIN_LINES = st.tuples(
    st.sampled_from([b"GET", b"POST", b"HEAD"]),
    st.sampled_from([b"/cl", b"/chunked", b"/nocontent", b"/cl/a%20b"]),
    st.sampled_from([b"", b"?x=1&x=2", b"?"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
)
_ODD_LINES = st.tuples(
    st.sampled_from([b"GET", b"get", b"OPTIONS"]),
    st.sampled_from([b"/cl", b"*", b"http://ex.com/cl?q=1", b"/cl#f"]),
    st.just(b""),
    st.sampled_from([b"HTTP/1.1", b"HTTP/2.0"]),
)


def _mostly(plain: Any, odd: Any) -> Any:
    """
    C{plain} nine times in ten, else C{odd}.
    """
    return st.tuples(st.integers(0, 9), plain, odd).map(lambda t: t[2] if t[0] == 3 else t[1])


#: Mostly plain heads (which take the one-pass path), some that are not.
_LINES = _mostly(_PLAIN_LINES, _ODD_LINES)
_PLAIN_FIELDS = st.sampled_from(
    [
        b"User-Agent: t",
        b"X-Dup: 1",
        b"x-dup: 2",
        b"Cookie: a=1; b=2",
        b"Connection: close",
        b"Connection: keep-alive",
        b"Expect: 100-continue",
        b"Accept:   spaced \t ",
        b"X-Empty:",
        b"x-UPPER-lower:\tv",
    ]
)
_ODD_FIELDS = st.sampled_from(
    [
        b"X_Under: u",
        b"Bad Name: x",
        b"X-Ctl: a\x01b",
        b" folded",
        b"X-Bare: 1\nX-Lf: 2",
        b"Transfer-Encoding: identity",
    ]
)
_HOSTS = _mostly(st.sampled_from([[], [b"Host: h"], [b"host: a:81"], [b"Host: [::1]:8080"]]), st.just([b"Host: h"] * 2))
_FIELDS = st.tuples(_HOSTS, st.lists(_mostly(_PLAIN_FIELDS, _ODD_FIELDS), max_size=5)).map(lambda t: t[0] + t[1])
_REQUESTS = st.lists(
    st.tuples(_LINES, _FIELDS, _mostly(st.sampled_from([None, b"", b"abc"]), st.sampled_from([b"+3", b"dup"]))), min_size=1, max_size=4
)


def _request(line: Tuple[bytes, bytes, bytes, bytes], fields: List[bytes], body: Any) -> bytes:
    method, path, query, version = line
    head = [b"%s %s%s %s" % (method, path, query, version), *fields]
    payload = b""
    if body == b"+3":
        head.append(b"Content-Length: +3")
    elif body == b"dup":
        head += [b"Content-Length: 3", b"Content-Length: 3"]
        payload = b"xyz"
    elif body is not None:
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    return b"\r\n".join(head) + b"\r\n\r\n" + payload


#: The switches of the one-pass steps, as imported.
_DIRECT = txawsgi.wire.DIRECT
_FAST = txawsgi.site._FAST


def _serve(stream: bytes, cuts: List[int], fast: bool, testcase: TestCase) -> Tuple[bytes, bool]:
    """
    What a connection answers to C{stream}, read in pieces cut at C{cuts},
    with the one-pass steps (C{fast}) or Twisted's own.
    """
    assert _DIRECT and _FAST
    for module in (txawsgi.site, txawsgi.wire, txawsgi.response):
        testcase.patch(module, "DIRECT", fast)
    testcase.patch(txawsgi.site, "_FAST", fast)
    site = AWSGISite(AWSGIResource(reactor, _app), timeout=None)
    site.log = lambda request: None  # type: ignore[method-assign]
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    start = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        if cut > start:
            protocol.dataReceived(stream[start:cut])
            start = cut
    out = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", transport.value())
    return out, transport.disconnecting


class SameBytesTests(TestCase):
    """
    Whatever the requests, and however they are cut into reads, the one-pass
    path answers byte for byte as Twisted's line-by-line path does.
    """

    @settings(max_examples=200, deadline=None)
    @given(_REQUESTS, st.lists(st.integers(0, 400), max_size=4))
    def test_sameBytes(self, requests: List[Any], cuts: List[int]) -> None:
        stream = b"".join(_request(*request) for request in requests)
        fast = _serve(stream, cuts, True, self)
        slow = _serve(stream, cuts, False, self)
        self.assertEqual(fast, slow)

    def test_examples(self) -> None:
        """
        A few heads that must take the one-pass path, and the response
        kinds: C{Content-Length}, chunked, bodiless, C{HEAD}, HTTP/1.0.
        """
        for stream in [
            b"GET /cl?x=1 HTTP/1.1\r\n" + HEAD,
            b"GET /cl HTTP/1.1\r\nAccept:  a b \t\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
            b"GET /chunked HTTP/1.1\r\n" + HEAD + b"GET /cl HTTP/1.1\r\n\r\n",
            b"HEAD /chunked HTTP/1.1\r\n" + HEAD,
            b"GET /nocontent HTTP/1.1\r\n" + HEAD,
            b"GET /chunked HTTP/1.0\r\n" + HEAD,
            b"POST /cl HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        ]:
            fast = _serve(stream, [], True, self)
            self.assertEqual(fast, _serve(stream, [], False, self))
            self.assertTrue(fast[0].startswith(b"HTTP/1."), fast)


# -- the idle and head timers --------------------------------------------------


class _Later(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: List[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.waiting.append(request)
        return NOT_DONE_YET


def _hello(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
    start_response("200 OK", [("Content-Length", "3")])
    return [b"hi\n"]


class TimerTests(SynchronousTestCase):
    """
    The keep-alive idle timer runs while no request is in progress, and the
    header timer only while a head is incomplete.
    """

    def _connect(self, site: Any, clock: Clock) -> Tuple[Any, StringTransport]:
        site.log = lambda request: None
        protocol = site.buildProtocol(None)
        protocol._channel.callLater = clock.callLater
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_idleAfterAnsweredRequest(self) -> None:
        """
        A request answered at once leaves the idle timer counting from its
        arrival: the connection closes a full idle period later.
        """
        clock = Clock()
        protocol, transport = self._connect(AWSGISite(AWSGIResource(reactor, _hello), timeout=10), clock)
        clock.advance(8)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n" + HEAD)
        self.assertIn(b"\r\n\r\nhi\n", transport.value())
        clock.advance(9.5)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_noIdleTimeoutDuringRequest(self) -> None:
        """
        A request still in progress when its head has been handled stops the
        idle timer until it finishes.
        """
        clock = Clock()
        later = _Later()
        protocol, transport = self._connect(AWSGISite(later, timeout=10), clock)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n" + HEAD)
        self.assertEqual(len(later.waiting), 1)
        clock.advance(60)
        self.assertFalse(transport.disconnecting)
        later.waiting[0].write(b"done")
        later.waiting[0].finish()
        clock.advance(9.5)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_headTimerOnlyForIncompleteHeads(self) -> None:
        """
        A head that arrives whole sets no header timer; one trickled a byte
        at a time gets C{408} once the header timeout passes.
        """
        clock = Clock()
        site = ServerSite(AWSGIResource(reactor, _hello), reactor=clock, timeouts=Timeouts(keep_alive=100, header=2))
        protocol, transport = self._connect(site, clock)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n" + HEAD)
        self.assertIn(b"\r\n\r\nhi\n", transport.value())
        self.assertIsNone(protocol._channel._head_timer)
        transport.clear()
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
            protocol.dataReceived(bytes([byte]))
            clock.advance(0.05)
        self.assertEqual(transport.value(), b"")
        clock.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"), transport.value())


# -- real sockets --------------------------------------------------------------


class SocketTests(TestCase):
    """
    Over a real connection: pipelined keep-alive requests, C{HEAD}, and the
    requests that end their connection.
    """

    async def _exchange(self, data: bytes, count: int, methods: Any = None) -> Tuple[List[Any], RawClient]:
        server = await listen(self, AWSGISite(AWSGIResource(reactor, _app)))
        client = await RawClient.connect(server)
        client.send(data)
        await client.wait_for_responses(count, methods=methods)
        return parse_response(client.received, methods=methods, eof=False), client

    async def test_pipelined(self) -> None:
        one = b"GET /cl?n=%d HTTP/1.1\r\nHost: x\r\n\r\n"
        responses, client = await self._exchange(b"".join(one % n for n in range(3)), 3)
        self.assertEqual([r.code for r in responses], [200, 200, 200])
        for n, response in enumerate(responses):
            self.assertIn(b"'QUERY_STRING', 'n=%d'" % n, response.body)
        self.assertFalse(client.closed)

    async def test_head(self) -> None:
        responses, client = await self._exchange(
            b"HEAD /chunked HTTP/1.1\r\nHost: x\r\n\r\nGET /chunked HTTP/1.1\r\nHost: x\r\n\r\n", 2, ["HEAD", "GET"]
        )
        self.assertEqual([(r.code, r.framing) for r in responses], [(200, "none"), (200, "chunked")])
        self.assertIn(b"'REQUEST_METHOD', 'GET'", responses[1].body)

    async def test_closing(self) -> None:
        for request in [
            b"GET /cl HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /cl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ]:
            responses, client = await self._exchange(request, 1)
            self.assertEqual(responses[0].code, 200)
            await client.wait_closed()
