"""
PEP 3333 conformance: the environ.

Unit tests of L{txawsgi.environ.build_environ} on a L{DummyRequest}, then
the same rules observed by validated apps over real connections, in the
reactor thread and in a threadpool.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from tests._pep3333 import TEXT, Served, raw_request
from tests.support import RawClient
from txawsgi.environ import ErrorStream, build_environ
from txawsgi.filewrapper import FileWrapper
from txawsgi.site import AWSGISite

#: Keys PEP 3333 requires (CONTENT_TYPE/LENGTH may be absent without a body).
REQUIRED_CGI = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
)
REQUIRED_WSGI = (
    "wsgi.version",
    "wsgi.url_scheme",
    "wsgi.input",
    "wsgi.errors",
    "wsgi.multithread",
    "wsgi.multiprocess",
    "wsgi.run_once",
)


class _Request(DummyRequest):
    """
    A L{DummyRequest} with what C{build_environ} reads and the dummy lacks.
    """

    def __init__(self, uri: bytes, *, prepath: List[bytes] = (), secure: bool = False, client: Any = None) -> None:  # type: ignore[assignment]
        path = uri.partition(b"?")[0]
        segments = path[1:].split(b"/")
        prepath = list(prepath)
        super().__init__(segments[len(prepath) :])
        self.client = client
        self.prepath = prepath
        self.uri = uri
        self.clientproto = b"HTTP/1.1"
        self._secure = secure

    def isSecure(self) -> bool:
        return self._secure


def _build(request: Any, multithread: bool = False) -> Dict[str, Any]:
    return build_environ(
        request,
        input=object(),
        errors=ErrorStream(None),
        multithread=multithread,
        file_wrapper=FileWrapper,
    )


class BuildEnvironTests(SynchronousTestCase):
    """
    L{build_environ} is a pure function of the request.
    """

    def test_requiredKeysAndTypes(self) -> None:
        """
        Every required key is present; CGI values are native strings; the
        C{wsgi.*} flags have the PEP 3333 types and values.
        """
        env = _build(_Request(b"/a?b=c", client=IPv4Address("TCP", "10.0.0.1", 5555)))
        for key in REQUIRED_CGI + REQUIRED_WSGI:
            self.assertIn(key, env)
        for key, value in env.items():
            if "." not in key:
                self.assertIs(type(value), str, key)
        self.assertEqual(env["wsgi.version"], (1, 0))
        self.assertIs(type(env["wsgi.version"]), tuple)
        self.assertEqual(env["wsgi.url_scheme"], "http")
        self.assertIs(env["wsgi.multithread"], False)
        self.assertIs(env["wsgi.multiprocess"], False)
        self.assertIs(env["wsgi.run_once"], False)
        self.assertEqual(env["SERVER_PROTOCOL"], "HTTP/1.1")
        self.assertEqual(env["REMOTE_ADDR"], "10.0.0.1")
        self.assertEqual(env["REMOTE_PORT"], "5555")

    def test_multithreadFlag(self) -> None:
        """
        C{wsgi.multithread} is what the resource says about its threadpool.
        """
        self.assertIs(_build(_Request(b"/"), multithread=True)["wsgi.multithread"], True)

    def test_httpsScheme(self) -> None:
        """
        A secure request has C{wsgi.url_scheme} C{'https'}.
        """
        self.assertEqual(_build(_Request(b"/", secure=True))["wsgi.url_scheme"], "https")

    def test_scriptNameAndPathInfo(self) -> None:
        """
        C{SCRIPT_NAME} is the prepath, C{PATH_INFO} the postpath.
        """
        env = _build(_Request(b"/app/x/y", prepath=[b"app"]))
        self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), ("/app", "/x/y"))
        env = _build(_Request(b"/x/y"))
        self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), ("", "/x/y"))

    def test_unixPeer(self) -> None:
        """
        A peer without an IP address gives empty C{REMOTE_ADDR} and
        C{REMOTE_PORT}, not a crash.
        """
        env = _build(_Request(b"/", client=UNIXAddress(None)))
        self.assertEqual((env["REMOTE_ADDR"], env["REMOTE_PORT"]), ("", ""))

    def test_headersMapping(self) -> None:
        """
        Content headers lose the C{HTTP_} prefix, repeated headers are
        combined (cookies with C{"; "}), names with C{_} are dropped.
        """
        request = _Request(b"/")
        headers = request.requestHeaders
        headers.addRawHeader(b"Content-Type", b"text/plain")
        headers.addRawHeader(b"Content-Length", b"3")
        headers.addRawHeader(b"X-A", b"a")
        headers.addRawHeader(b"X-A", b"b")
        headers.addRawHeader(b"Cookie", b"c=1")
        headers.addRawHeader(b"Cookie", b"d=2")
        headers.addRawHeader(b"X_Sneaky", b"1")
        env = _build(request)
        self.assertEqual(env["CONTENT_TYPE"], "text/plain")
        self.assertEqual(env["CONTENT_LENGTH"], "3")
        self.assertNotIn("HTTP_CONTENT_TYPE", env)
        self.assertNotIn("HTTP_CONTENT_LENGTH", env)
        self.assertEqual(env["HTTP_X_A"], "a, b")
        self.assertEqual(env["HTTP_COOKIE"], "c=1; d=2")
        self.assertNotIn("HTTP_X_SNEAKY", env)


class _EnvironTests(Served):
    """
    The environ as validated apps see it over real TCP connections.
    """

    @inlineCallbacks
    def test_requiredKeys(self) -> Iterator[Any]:
        """
        Every required key, with the PEP 3333 types and values;
        C{wsgi.multithread} is true only with a threadpool.
        """
        env = yield self.environ_for("/p?q=1")
        for key in REQUIRED_CGI + REQUIRED_WSGI:
            self.assertIn(key, env)
        for key, value in env.items():
            if "." not in key:
                self.assertIs(type(value), str, key)
        self.assertEqual(env["REQUEST_METHOD"], "GET")
        self.assertEqual(env["SERVER_PROTOCOL"], "HTTP/1.1")
        self.assertEqual(env["wsgi.version"], (1, 0))
        self.assertEqual(env["wsgi.url_scheme"], "http")
        self.assertTrue(callable(env["wsgi.input"].read))
        self.assertTrue(callable(env["wsgi.errors"].write))
        self.assertIs(env["wsgi.multithread"], self.threaded)
        self.assertIs(env["wsgi.multiprocess"], False)
        self.assertIs(env["wsgi.run_once"], False)

    @inlineCallbacks
    def test_serverNameAndPort(self) -> Iterator[Any]:
        """
        C{SERVER_NAME} comes from C{Host}; C{SERVER_PORT} is the port the
        request arrived on.
        """
        seen = []

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            seen.append(dict(environ))
            start_response("200 OK", [TEXT])
            return [b""]

        server = yield self.serve(app)
        yield self.get(server, "/")
        self.assertEqual(seen[0]["SERVER_NAME"], "example.com")
        self.assertEqual(seen[0]["SERVER_PORT"], str(server.port))
        self.assertEqual(seen[0]["HTTP_HOST"], "example.com")

    @inlineCallbacks
    def test_siteRoot(self) -> Iterator[Any]:
        """
        As the Site's root, C{SCRIPT_NAME} is empty and C{PATH_INFO} the
        whole path.
        """
        env = yield self.environ_for("/x/y")
        self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), ("", "/x/y"))
        env = yield self.environ_for("/")
        self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), ("", "/"))

    @inlineCallbacks
    def test_mountedChild(self) -> Iterator[Any]:
        """
        Mounted as child C{app}, C{SCRIPT_NAME} is C{/app} and C{PATH_INFO}
        the rest, empty for C{/app} itself.
        """
        env = yield self.environ_for("/app/x/y", mount=b"app")
        self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), ("/app", "/x/y"))
        env = yield self.environ_for("/app", mount=b"app")
        self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), ("/app", ""))
        env = yield self.environ_for("/app/", mount=b"app")
        self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), ("/app", "/"))

    @inlineCallbacks
    def test_percentDecodedPathInfo(self) -> Iterator[Any]:
        """
        C{PATH_INFO} is percent-decoded, bytes as latin-1.
        """
        env = yield self.environ_for("/caf%C3%A9/a%20b")
        self.assertEqual(env["PATH_INFO"], "/caf\xc3\xa9/a b")
        self.assertEqual(env["PATH_INFO"].encode("latin-1").decode("utf-8"), "/café/a b")

    @inlineCallbacks
    def test_rawQueryString(self) -> Iterator[Any]:
        """
        C{QUERY_STRING} is passed raw, not decoded; empty without a query.
        """
        env = yield self.environ_for("/p?a=%20b&c=%C3%A9+d")
        self.assertEqual(env["QUERY_STRING"], "a=%20b&c=%C3%A9+d")
        env = yield self.environ_for("/p")
        self.assertEqual(env["QUERY_STRING"], "")

    @inlineCallbacks
    def test_remoteAddrAndPort(self) -> Iterator[Any]:
        """
        C{REMOTE_ADDR} and C{REMOTE_PORT} are the TCP peer's.
        """
        seen = []

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            seen.append(dict(environ))
            start_response("200 OK", [TEXT])
            return [b"ok"]

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(raw_request("/"))
        yield client.wait_for_responses(1)
        local = client.transport.getHost()
        self.assertEqual(seen[0]["REMOTE_ADDR"], "127.0.0.1")
        self.assertEqual(seen[0]["REMOTE_PORT"], str(local.port))

    @inlineCallbacks
    def test_unixSocket(self) -> Iterator[Any]:
        """
        Over a UNIX socket the request is served, with empty C{REMOTE_ADDR}
        (Twisted's own C{WSGIResource} crashes on the missing IP address).
        """
        seen = []

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            seen.append(dict(environ))
            start_response("200 OK", [TEXT])
            return [b"over unix"]

        server = yield self.listen(self.resource(app), unix=True)
        client = yield RawClient.connect(server)
        client.send(raw_request("/u"))
        [response] = yield client.wait_for_responses(1)
        self.assertEqual((response.code, response.body), (200, b"over unix"))
        self.assertEqual(seen[0]["REMOTE_ADDR"], "")
        self.assertEqual(seen[0]["PATH_INFO"], "/u")
        self.assertEqual(seen[0]["SERVER_NAME"], "example.com")

    @inlineCallbacks
    def test_repeatedHeadersCombined(self) -> Iterator[Any]:
        """
        Repeated request headers arrive as one comma-separated value; cookies
        are joined with C{"; "}.
        """
        env = yield self.environ_for(
            "/", headers=(("X-A", "a"), ("X-A", "b"), ("Cookie", "c=1"), ("Cookie", "d=2"))
        )
        self.assertEqual(env["HTTP_X_A"], "a, b")
        self.assertEqual(env["HTTP_COOKIE"], "c=1; d=2")

    @inlineCallbacks
    def test_contentHeaders(self) -> Iterator[Any]:
        """
        On a POST, C{CONTENT_TYPE} and C{CONTENT_LENGTH} are set and their
        C{HTTP_} twins are absent; the body is readable from C{wsgi.input}.
        """
        seen = []

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            seen.append(dict(environ))
            body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
            start_response("200 OK", [TEXT])
            return [b"got " + body]

        server = yield self.serve(app)
        response = yield self.get(
            server, "/", method="POST", headers=(("Content-Type", "application/x-thing"),), body=b"hello"
        )
        self.assertEqual(response.body, b"got hello")
        env = seen[0]
        self.assertEqual(env["CONTENT_TYPE"], "application/x-thing")
        self.assertEqual(env["CONTENT_LENGTH"], "5")
        self.assertNotIn("HTTP_CONTENT_TYPE", env)
        self.assertNotIn("HTTP_CONTENT_LENGTH", env)

    @inlineCallbacks
    def test_underscoreHeadersDropped(self) -> Iterator[Any]:
        """
        A header whose name has C{_} is dropped, so it cannot pose as its
        dashed twin.
        """
        env = yield self.environ_for("/", headers=(("X-Real-Ip", "1.2.3.4"), ("X_Real_Ip", "6.6.6.6")))
        self.assertEqual(env["HTTP_X_REAL_IP"], "1.2.3.4")
        env = yield self.environ_for("/", headers=(("X_Real_Ip", "6.6.6.6"),))
        self.assertNotIn("HTTP_X_REAL_IP", env)
        self.assertEqual([key for key in env if "REAL" in key], [])

    @inlineCallbacks
    def test_wsgiErrorsLogged(self) -> Iterator[Any]:
        """
        Lines written to C{wsgi.errors} reach C{twisted.logger}, one event
        per line; C{flush()} emits a partial line.
        """

        def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
            errors = environ["wsgi.errors"]
            errors.write("first line\nsecond ")
            errors.write("line\n")
            errors.writelines(["third line\n"])
            errors.write("partial")
            errors.flush()
            start_response("200 OK", [TEXT])
            return [b"ok"]

        server = yield self.serve(app)
        yield self.get(server, "/")
        messages = [message for message in self.logged("wsgi.errors: ")]
        self.assertEqual(
            messages,
            ["wsgi.errors: first line", "wsgi.errors: second line", "wsgi.errors: third line", "wsgi.errors: partial"],
        )


class EnvironTests(_EnvironTests, TestCase):
    """
    Apps running in the reactor thread.
    """


class ThreadpoolEnvironTests(_EnvironTests, TestCase):
    """
    Apps running in a threadpool.
    """

    threaded = True


class AWSGISiteEnvironTests(_EnvironTests, TestCase):
    """
    Under an L{AWSGISite}, which dispatches at the request headers (the
    environ is built before the body is in), apps in the reactor thread.
    """

    site_class = AWSGISite


class ThreadpoolAWSGISiteEnvironTests(_EnvironTests, TestCase):
    """
    Under an L{AWSGISite}, apps in a threadpool (the body streams to
    C{wsgi.input}).
    """

    site_class = AWSGISite
    threaded = True
