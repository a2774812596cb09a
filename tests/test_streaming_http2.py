"""
HTTP/2 under an L{AWSGISite}: Twisted's C{H2Connection} gives no hook at
headers time, so AWSGI resources keep the buffered behaviour there (see
L{txawsgi.site}); uploads must still work, for C{on_get} and C{wsgi.input}
apps alike.

Served over TLS with ALPN (C{h2}), with a self-signed certificate made for
the test; the client is the C{h2} library over a TLS socket in a worker
thread.  Skipped when TLS or HTTP/2 support is not installed (C{pip install
'twisted[tls,http2]'}).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from txawsgi import AWSGIResource
from txawsgi.site import AWSGISite

from ._streaming import Upload, digest, pattern, start_pool
from .support import eventually, sleep

try:
    import h2.config
    import h2.connection
    import h2.events
    from OpenSSL import SSL  # noqa: F401
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.internet.ssl import CertificateOptions, KeyPair
    from twisted.web.http import H2_ENABLED
except ImportError as e:  # pragma: no cover - depends on the environment
    skip = f"HTTP/2 over TLS needs twisted[tls,http2]: {e}"
else:
    if not H2_ENABLED:  # pragma: no cover
        skip = "Twisted's HTTP/2 support is not enabled (install twisted[http2])"


_certificate: List[Any] = []


def certificate_options() -> Any:
    """
    TLS options offering C{h2} then C{http/1.1}, with a self-signed
    certificate for C{localhost} (made once per test run: RSA key
    generation is slow).
    """
    if not _certificate:
        key = KeyPair.generate(size=2048)
        _certificate.append(key.selfSignedCert(1, CN="localhost"))
    cert = _certificate[0]
    return CertificateOptions(
        privateKey=cert.privateKey.original,
        certificate=cert.original,
        acceptableProtocols=[b"h2", b"http/1.1"],
    )


class H2Client:
    """
    A blocking HTTP/2 client for one connection, used from a worker thread.
    """

    def __init__(self, port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.protocol = self.sock.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()
        self.responses: Dict[int, Dict[str, Any]] = {}

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self) -> None:
        """
        Read once from the socket and process what came.
        """
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.responses.setdefault(event.stream_id, {"body": b""})["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.responses.setdefault(event.stream_id, {"body": b""})["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.responses.setdefault(event.stream_id, {"body": b""})["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                raise ConnectionError(f"stream {event.stream_id} reset: {event.error_code}")
        self.flush()

    def start(self, path: str, headers: Optional[List[Tuple[str, str]]] = None) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [(":method", "POST"), (":path", path), (":scheme", "https"), (":authority", "localhost")]
            + (headers or []),
        )
        self.flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """
        Send C{data} on the stream, respecting flow control.
        """
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump()
                continue
            piece, view = view[:window], view[window:]
            self.conn.send_data(stream_id, bytes(piece))
            self.flush()
        if end:
            self.conn.end_stream(stream_id)
            self.flush()

    def response(self, stream_id: int) -> Dict[str, Any]:
        while not self.responses.get(stream_id, {}).get("ended"):
            self.pump()
        return self.responses[stream_id]

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:
            pass
        self.sock.close()


class _TLSServer:
    def __init__(self, factory: Any, port: Any) -> None:
        self.factory = factory
        self.listening = port
        self.port = port.getHost().port

    @inlineCallbacks
    def shutdown(self) -> Any:
        yield self.listening.stopListening()
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()
        yield eventually(lambda: not self.factory.protocols)


class HTTP2UploadTests(TestCase):
    """
    POSTing a body over HTTP/2 to AWSGI apps under an L{AWSGISite}.
    """

    def serve(self, resource: Any) -> "_TLSServer":
        """
        Serve C{resource} under an L{AWSGISite} over TLS on 127.0.0.1.

        Not with L{tests.support.listen}: its connection tracking patches
        the protocol the site builds, which is a proxy to the HTTP/1.1
        channel; once ALPN switched the proxy to HTTP/2 it no longer sees
        the connection end.  The TLS factory's own registry does.
        """
        factory = TLSMemoryBIOFactory(certificate_options(), False, AWSGISite(resource))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        server = _TLSServer(factory, port)
        self.addCleanup(server.shutdown)
        return server

    @inlineCallbacks
    def upload(self, server: Any, body: bytes, path: str = "/", pause: Optional[Callable[[], Deferred[Any]]] = None) -> Any:
        """
        POST C{body} in two halves (calling C{pause} in between, from the
        reactor) and return the response.
        """
        client: List[H2Client] = []
        first_sent = threading.Event()
        rest = threading.Event()

        def run() -> Dict[str, Any]:
            c = H2Client(server.port)
            client.append(c)
            try:
                if c.protocol != "h2":
                    raise AssertionError(f"ALPN negotiated {c.protocol!r}, not h2")
                stream = c.start(path, [("content-length", str(len(body)))])
                c.send(stream, body[: len(body) // 2])
                first_sent.set()
                if not rest.wait(20):
                    raise AssertionError("never told to send the rest")
                c.send(stream, body[len(body) // 2 :], end=True)
                return c.response(stream)
            finally:
                c.close()

        self.addCleanup(rest.set)
        done = deferToThread(run)
        if pause is not None:
            while not first_sent.is_set() and not done.called:
                yield sleep(0.01)
            yield pause()
        rest.set()
        response = yield done
        yield eventually(lambda: not server.factory.protocols)
        return response

    @inlineCallbacks
    def test_on_get_app(self) -> Any:
        """
        An C{on_get} app (C{stream_input=True}) gets the whole body; it is
        called only once the body is complete (buffered, as on a plain
        Site).
        """
        app = Upload()
        server = yield self.serve(AWSGIResource(reactor, app, stream_input=True))
        body = pattern(300_000)

        @inlineCallbacks
        def check_not_called() -> Any:
            yield sleep(0.3)
            self.assertEqual(app.paths, [])

        response = yield self.upload(server, body, "/h2", pause=check_not_called)
        self.assertEqual(response["headers"][b":status"], b"200")
        self.assertEqual(response["body"], digest(body))
        self.assertEqual(app.paths, ["/h2"])
        self.assertEqual(app.environs[0]["SERVER_PROTOCOL"], "HTTP/2")
        self.assertEqual(app.environs[0]["wsgi.url_scheme"], "https")

    @inlineCallbacks
    def test_plain_app_reactor(self) -> Any:
        """
        A plain reactor-thread app reads C{wsgi.input}.
        """

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            data = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [digest(data)]

        server = yield self.serve(AWSGIResource(reactor, app))
        body = pattern(100_000, 5)
        response = yield self.upload(server, body)
        self.assertEqual(response["body"], digest(body))

    @inlineCallbacks
    def test_threadpool_app(self) -> Any:
        """
        A threadpool app reads C{wsgi.input} line by line.
        """
        pool = start_pool(self)

        def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
            hasher = hashlib.sha256()
            size = 0
            for line in environ["wsgi.input"]:
                hasher.update(line)
                size += len(line)
            start_response("200 OK", [])
            return [b"%d %s" % (size, hasher.hexdigest().encode())]

        server = yield self.serve(AWSGIResource(reactor, app, pool))
        body = b"".join(b"line %d\n" % i for i in range(20_000))
        response = yield self.upload(server, body)
        self.assertEqual(response["body"], digest(body))
