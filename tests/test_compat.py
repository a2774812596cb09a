"""
Framework compatibility: small Flask, Django, Bottle, Falcon, Werkzeug and
Pyramid apps (C{tests/compat/}) served by C{twistd awsgi} over real sockets,
in the reactor thread and with C{--threads 4}, answer every request as the
framework's own test client says they should.

For each request the status, the body, the declared length and every header
but the per-connection ones (C{Date}, C{Server}, framing) must match; cookies
are compared parsed.  The differences that remain are listed in L{KNOWN},
each with its reason.  A framework that is not installed is skipped
(C{pip install txawsgi[compat]}).
"""

from __future__ import annotations

import importlib
import io
import logging
import random
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.server import Site

from txawsgi import AWSGIResource
from txawsgi.testing import AppClient, MemoryReactor

from ._production import twistd_awsgi
from .support import RawClient, free_port

BOUNDARY = "txawsgi-compat-7MA4YWxkTrZu0gW"
FILE_BYTES = random.Random(7).randbytes(100_000)
MULTIPART = (
    (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="title"\r\n\r\n'
        "Quarterly report\r\n"
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="report.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    + FILE_BYTES
    + f"\r\n--{BOUNDARY}--\r\n".encode()
)

#: The Host every request carries, on both sides.
HOST = "localhost"


@dataclass
class Req:
    name: str
    method: str
    path: str
    headers: Dict[str, str] = field(default_factory=dict)
    body: Optional[bytes] = None


REQUESTS = [
    Req("hello", "GET", "/hello"),
    Req("routing", "GET", "/items/42"),
    Req("routing-escaped", "GET", "/items/4%32"),
    Req("query", "GET", "/query?a=1&b=x%20y&b=z&c=%C3%A9t%C3%A9&d=1%2B1"),
    Req("cookies", "GET", "/cookies", {"Cookie": "flavor=oat; session=abc"}),
    Req("set-cookie", "GET", "/setcookie"),
    Req(
        "form",
        "POST",
        "/form",
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"name=alice&tags=x&tags=y+z&note=caf%C3%A9",
    ),
    Req("upload", "POST", "/upload", {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, MULTIPART),
    Req("json", "POST", "/json", {"Content-Type": "application/json"}, b'{"x": [1, 2, {"y": "\\u00e9"}], "ok": true}'),
    Req(
        "json-chunked",
        "POST",
        "/json",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        b'{"sent": "in chunks"}',
    ),
    Req("stream", "GET", "/stream"),
    Req("file", "GET", "/file"),
    Req("file-range", "GET", "/file", {"Range": "bytes=100-199"}),
    Req("file-unmodified", "GET", "/file", {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}),
    Req("head", "HEAD", "/hello"),
    Req("file-head", "HEAD", "/file"),
    Req("redirect", "GET", "/redirect"),
    Req("error", "GET", "/error"),
    Req("not-found", "GET", "/missing"),
]

#: Headers that describe one connection or one moment, not the response.
IGNORED = {"date", "server", "connection", "keep-alive", "transfer-encoding", "content-length", "set-cookie"}

Cookies = Dict[str, Tuple[str, ...]]


@dataclass
class Answer:
    """
    One response, normalised for comparison.
    """

    status: int
    headers: Dict[str, List[str]]
    body: bytes
    length: Optional[int]
    cookies: Cookies


def _cookies(values: Sequence[str]) -> Cookies:
    """
    Set-Cookie values parsed: name -> (value, and each attribute set).
    """
    found: Cookies = {}
    for value in values:
        jar: SimpleCookie = SimpleCookie()
        jar.load(value)
        for name, morsel in jar.items():
            found[name] = (morsel.value, *sorted(f"{k}={v}" for k, v in morsel.items() if v))
    return found


def _answer(status: int, pairs: Sequence[Tuple[str, str]], body: bytes, cookies: Optional[Cookies] = None) -> Answer:
    headers: Dict[str, List[str]] = {}
    length: Optional[int] = None
    set_cookie = []
    for name, value in pairs:
        lower = name.lower()
        value = value.strip()
        if lower == "content-length":
            length = int(value)
        elif lower == "set-cookie":
            set_cookie.append(value)
        if lower not in IGNORED:
            headers.setdefault(lower, []).append(value)
    return Answer(status, headers, body, length, _cookies(set_cookie) if cookies is None else cookies)


# -- the frameworks' own test clients ---------------------------------------


def _local_headers(req: Req) -> Dict[str, str]:
    """
    The request's headers for a test client: with C{Host}, and without
    C{Transfer-Encoding} (test clients send the body whole).
    """
    return {"Host": HOST, **{k: v for k, v in req.headers.items() if k != "Transfer-Encoding"}}


def _werkzeug_client(client: Any) -> Callable[[Req], Answer]:
    def call(req: Req) -> Answer:
        response = client.open(
            req.path,
            method=req.method,
            headers=_local_headers(req),
            data=req.body,
            errors_stream=io.StringIO(),
        )
        try:
            return _answer(response.status_code, list(response.headers.items()), response.get_data())
        finally:
            response.close()

    return call


def werkzeug_local(app: Any) -> Callable[[Req], Answer]:
    from werkzeug.test import Client

    return _werkzeug_client(Client(app, use_cookies=False))


def flask_local(app: Any) -> Callable[[Req], Answer]:
    return _werkzeug_client(app.test_client(use_cookies=False))


def webtest_local(app: Any) -> Callable[[Req], Answer]:
    """
    WebTest, the test client Bottle's and Pyramid's documentation use: its
    request, and its WSGI call (under its C{lint} validator), without its
    response object (which would add a C{Content-Length} of its own).
    """
    from webtest import TestRequest
    from webtest.lint import middleware

    checked = middleware(app)

    def call(req: Req) -> Answer:
        request = TestRequest.blank(
            req.path,
            method=req.method,
            headers=_local_headers(req),
            POST=req.body,
            environ={"SERVER_PROTOCOL": "HTTP/1.1", "wsgi.errors": io.StringIO()},
        )
        if req.body is None:
            request.body = b""
        # exc_info, if any, only says the app answered an error page.
        status, headers, app_iter, _ = request.call_application(checked, catch_exc_info=True)
        try:
            body = b"".join(app_iter)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        return _answer(int(status.split()[0]), headers, body)

    return call


def django_local(app: Any) -> Callable[[Req], Answer]:
    from django.test import Client

    client = Client(raise_request_exception=False)

    def call(req: Req) -> Answer:
        headers = _local_headers(req)
        content_type = headers.pop("Content-Type", "application/octet-stream")
        response = client.generic(req.method, req.path, data=req.body or b"", content_type=content_type, headers=headers)
        try:
            body = b"".join(response.streaming_content) if response.streaming else response.content
            pairs = list(response.items()) + [("Set-Cookie", c.output(header="")) for c in response.cookies.values()]
            return _answer(response.status_code, pairs, body)
        finally:
            response.close()

    return call


def falcon_local(app: Any) -> Callable[[Req], Answer]:
    from falcon.testing import TestClient

    client = TestClient(app)

    def call(req: Req) -> Answer:
        path, _, query = req.path.partition("?")
        result = client.simulate_request(
            req.method,
            path,
            query_string=query or None,
            headers={k: v for k, v in _local_headers(req).items() if k != "Host"},
            body=req.body,
            host=HOST,
            wsgierrors=io.StringIO(),
        )
        cookies: Cookies = {}
        for name, cookie in result.cookies.items():
            attributes = {
                "path": cookie.path,
                "domain": cookie.domain,
                "max-age": cookie.max_age,
                "expires": cookie.expires,
                "httponly": cookie.http_only,
                "secure": cookie.secure,
                "samesite": cookie.same_site,
            }
            cookies[name] = (cookie.value, *sorted(f"{k}={v}" for k, v in attributes.items() if v))
        return _answer(result.status_code, list(result.headers.items()), result.content, cookies)

    return call


# -- the comparison ----------------------------------------------------------


_STREAMED_CHUNKED = (
    "In --threads mode the application is called as soon as the headers are "
    "in and the body streams, so a chunked body's length is unknown: the "
    "environ has no CONTENT_LENGTH and says wsgi.input_terminated.  This "
    "framework reads CONTENT_LENGTH bytes and ignores wsgi.input_terminated, "
    "so it reads an empty body (test clients always send a length).  "
    "Flask, Werkzeug and Pyramid (WebOb) read to the end."
)

#: Differences between a framework's test client and a real server that are
#: not txawsgi's to fix: (framework, request name, mode) -> (the fields that
#: may differ, why).  Anything else that differs fails the test.
KNOWN: Dict[Tuple[str, str, str], Tuple[Tuple[str, ...], str]] = {
    ("django", "json-chunked", "threads"): (("status", "body", "header content-type"), _STREAMED_CHUNKED),
    ("bottle", "json-chunked", "threads"): (("body", "length"), _STREAMED_CHUNKED),
    ("falcon", "json-chunked", "threads"): (("status", "body", "length", "header vary"), _STREAMED_CHUNKED),
}


def _differences(local: Answer, served: Answer) -> List[str]:
    found = []
    if local.status != served.status:
        found.append(f"status: test client {local.status}, served {served.status}")
    if local.body != served.body:
        found.append(f"body: test client {local.body[:300]!r}, served {served.body[:300]!r}")
    if local.length is not None and local.length != served.length:
        found.append(f"length: test client {local.length}, served {served.length}")
    if local.headers != served.headers:
        names = sorted(set(local.headers) | set(served.headers))
        for name in names:
            if local.headers.get(name) != served.headers.get(name):
                found.append(f"header {name}: test client {local.headers.get(name)}, served {served.headers.get(name)}")
    if local.cookies != served.cookies:
        found.append(f"cookies: test client {local.cookies}, served {served.cookies}")
    return found


class _Matrix:
    """
    One framework served in one mode: every request of L{REQUESTS}.
    """

    timeout = 90
    framework: str
    module: str
    local: Callable[[Any], Callable[[Req], Answer]]
    mode: Tuple[str, ...] = ()
    #: What the test client needs besides the framework.
    client: Tuple[str, ...] = ()

    async def test_requests(self) -> None:
        for name in (self.framework, *self.client):
            try:
                importlib.import_module(name)
            except ImportError:
                raise SkipTest(f"{name} is not installed (pip install txawsgi[compat])")
        app = importlib.import_module(self.module).application
        call = type(self).local(app)
        logging.disable(logging.CRITICAL)
        try:
            expected = {req.name: call(req) for req in REQUESTS}
        finally:
            logging.disable(logging.NOTSET)

        port = free_port()
        proc = twistd_awsgi(
            self, "--app", f"{self.module}:application", "-l", f"tcp:{port}:interface=127.0.0.1", *self.mode
        )
        await proc.wait_for_output(b"txawsgi serving", timeout=30)
        problems = []
        for req in REQUESTS:
            served = await self.fetch(port, req)
            differences = _differences(expected[req.name], served)
            known = KNOWN.get((self.framework, req.name, "threads" if self.mode else "reactor"))
            if known is not None:
                fields, _ = known
                differences = [d for d in differences if not d.startswith(fields)]
            problems += [f"{req.method} {req.path}: {d}" for d in differences]
        self.assertEqual(problems, [], "\n".join(problems))
        self.assertTrue(proc.running, proc.output.decode(errors="replace"))


    async def fetch(self, port: int, req: Req) -> Answer:
        """
        Send C{req} over a new connection, byte for byte, and parse the
        response strictly (framing included).
        """
        client = await RawClient.connect(("127.0.0.1", port), testcase=self)
        head = [f"{req.method} {req.path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in req.headers.items()]
        body = req.body or b""
        if req.headers.get("Transfer-Encoding") == "chunked":
            # Two chunks, then the last one.
            half = len(body) // 2
            body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (body[:half], body[half:])) + b"0\r\n\r\n"
        elif req.body is not None:
            head.append(f"Content-Length: {len(req.body)}")
        client.send("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
        responses = await client.wait_for_responses(1, timeout=20, methods=[req.method])
        [response] = [r for r in responses if not r.interim]
        await client.wait_closed(timeout=10)
        return _answer(response.code, response.headers, response.body)


def _make(
    framework: str, module: str, local: Callable[[Any], Callable[[Req], Answer]], client: Tuple[str, ...] = ()
) -> None:
    for suffix, mode in (("Reactor", ()), ("Threads", ("--threads", "4"))):
        name = f"{framework.capitalize()}{suffix}Tests"
        globals()[name] = type(
            name,
            (_Matrix, TestCase),
            {
                "framework": framework,
                "module": module,
                "local": staticmethod(local),
                "mode": mode,
                "client": client,
                "__doc__": f"{framework} served by twistd awsgi {' '.join(mode) or 'in the reactor thread'}.",
                "__module__": __name__,
            },
        )


_make("flask", "tests.compat.flask_app", flask_local)
_make("django", "tests.compat.django_app", django_local)
_make("bottle", "tests.compat.bottle_app", webtest_local, ("webtest",))
_make("falcon", "tests.compat.falcon_app", falcon_local)
_make("werkzeug", "tests.compat.werkzeug_app", werkzeug_local)
_make("pyramid", "tests.compat.pyramid_app", webtest_local, ("webtest",))


class ChunkedEnvironTests(SynchronousTestCase):
    """
    A chunked request body, decoded by the server, reaches the application
    as waitress presents it: no C{HTTP_TRANSFER_ENCODING} (Bottle would
    decode the chunks again), and a C{CONTENT_LENGTH} when the whole body is
    in before the call (Django and WebOb read that many bytes, or none).
    """

    def environ_for(self, site: bool = False, **options: Any) -> Dict[str, Any]:
        seen: List[Dict[str, Any]] = []

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            seen.append(dict(environ))
            start_response("200 OK", [])
            return [b""]

        clock = MemoryReactor()
        resource = AWSGIResource(clock, app, **options)
        client = AppClient(resource, site=Site(resource, reactor=clock) if site else None)
        upload = client.post("/", b"abc", stream=True)
        upload.send_body_piece(b"defg")
        upload.finish_body()
        self.assertEqual(upload.status, 200)
        [environ] = seen
        self.assertNotIn("HTTP_TRANSFER_ENCODING", environ)
        return environ

    def test_spooled(self) -> None:
        """
        Reactor mode: the body is spooled before the call, so its length is
        known.
        """
        self.assertEqual(self.environ_for()["CONTENT_LENGTH"], "7")

    def test_twisted_buffered(self) -> None:
        """
        Under a plain Twisted C{Site}, which buffers every body, too.
        """
        self.assertEqual(self.environ_for(site=True)["CONTENT_LENGTH"], "7")

    def test_streamed(self) -> None:
        """
        A streamed body's length is unknown at the call: no
        C{CONTENT_LENGTH}, and C{wsgi.input_terminated}.
        """
        environ = self.environ_for(stream_input=True)
        self.assertNotIn("CONTENT_LENGTH", environ)
        self.assertIs(environ["wsgi.input_terminated"], True)
