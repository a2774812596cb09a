"""
Tests for the pace of streaming, over real connections on 127.0.0.1: a
controller's puts in the reactor go straight to the transport and drain
callbacks run when it resumes (no reactor turn per chunk), without
bypassing middleware, the Content-Length rule or the order of puts; an
upload the application keeps up with never pauses the connection; and the
request-body buffer (L{txawsgi.input._Pieces}) against a bytearray model.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from typing import Any, Callable, Dict, Iterator, List

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Cooperator
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txawsgi.input import _Pieces
from txawsgi.site import AWSGIRequest

from ._streaming import awsgi_site
from .support import RawClient, eventually, listen, read_to_eof, sleep
from .test_controller import GET, CountingClient, Hub, Producer, ServerMixin

MiB = 1024 * 1024


def _scheduled_by_txawsgi(f: Callable[..., Any]) -> bool:
    """
    Whether a callable handed to C{callLater} is txawsgi's own (a bound
    method of one of its objects) or a cooperator's tick.
    """
    owner = getattr(f, "__self__", None)
    if owner is None:
        return False
    return isinstance(owner, Cooperator) or type(owner).__module__.startswith("txawsgi.")


class CallLaterCounter:
    """
    Count the delayed calls txawsgi schedules on the global reactor.
    """

    def __init__(self, testcase: TestCase) -> None:
        self.count = 0
        original = reactor.callLater

        def callLater(delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
            if _scheduled_by_txawsgi(f):
                self.count += 1
            return original(delay, f, *args, **kw)

        testcase.patch(reactor, "callLater", callLater)


class ControllerPaceTests(ServerMixin, TestCase):
    """
    Puts in the reactor thread and drain callbacks follow the transport.
    """

    @inlineCallbacks
    def test_streamNeedsNoReactorTurnPerChunk(self) -> Any:
        """
        16 MiB put in 64 KiB blocks, following C{put()}'s answer and
        C{on_drain}, to a client that reads: the bytes arrive intact, and
        txawsgi schedules a handful of delayed calls in all, not one or two
        per block (a woken engine's cooperator step, a drain callback run a
        turn later).
        """
        total = 16 * MiB
        producer = Producer(total)
        hub = Hub(setup=producer, headers=[("Content-Length", str(total))])
        server = yield self.serve(hub)
        counter = CallLaterCounter(self)
        client = yield CountingClient.connect(server)
        client.send(GET % b"/")
        yield eventually(lambda: client.body_bytes >= total, timeout=30)
        self.assertEqual(client.body_bytes, total)
        self.assertEqual(client.digest.hexdigest(), producer.digest.hexdigest())
        self.assertGreater(producer.drains, 10)
        self.assertLess(counter.count, 16, f"{counter.count} delayed calls for {total // 65536} blocks")

    @inlineCallbacks
    def test_middlewareSeesEveryChunk(self) -> Any:
        """
        Behind middleware that wraps the controller, puts made after output
        began still go through the middleware, one reactor turn apart or
        not.
        """
        hub = Hub()

        def tagging(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
            for chunk in hub(environ, start_response):
                yield b"<" + chunk + b">" if chunk else chunk

        server, client, ex = yield self.first_exchange(hub, tagging)
        ctrl = ex.ctrl
        ctrl.put(b"a")
        yield client.wait_for(b"<a>")
        ctrl.put(b"b")
        ctrl.put(b"c")
        yield sleep(0.05)
        ctrl.put(b"d")
        ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"<a><bc><d>")

    @inlineCallbacks
    def test_overflowAfterOutputBegan(self) -> Any:
        """
        A put past the declared Content-Length, once output began, is cut
        to it and ends the response (logged); the connection stays usable.
        """
        hub = Hub(headers=[("Content-Length", "10")])
        server, client, ex = yield self.first_exchange(hub)
        ctrl = ex.ctrl
        ctrl.put(b"12345")
        yield client.wait_for(b"12345")
        ctrl.put(b"67890abc")
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"1234567890")
        self.assertTrue(response.complete)
        yield eventually(lambda: ex.closes == [None])
        client.clear()
        client.send(GET % b"/hello")
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"hello")

    @inlineCallbacks
    def test_reactorPutAfterThreadPut(self) -> Any:
        """
        A put in the reactor made after another thread's put returned comes
        after it in the body, though that put has not reached the reactor
        yet; so does a C{finish()} made then.
        """
        hub = Hub()
        server, client, ex = yield self.first_exchange(hub)
        ctrl = ex.ctrl
        ctrl.put(b"first ")
        yield client.wait_for(b"first ")
        worker = threading.Thread(target=ctrl.put, args=(b"thread ",))
        worker.start()
        worker.join()  # Its put returned; its bytes wait for the reactor.
        ctrl.put(b"reactor")
        ctrl.finish()
        [response] = yield client.wait_for_responses(1)
        self.assertEqual(response.body, b"first thread reactor")


class UploadPaceTests(TestCase):
    """
    A streamed upload the application keeps up with.
    """

    @inlineCallbacks
    def test_keptUpWithUploadNeverPausesReading(self) -> Any:
        """
        16 MiB read with C{on_get(65536)} as fast as they come: the bytes
        arrive intact and the connection's reading is (almost) never paused
        (each pause and resume costs system calls).
        """
        total = 16 * MiB
        body = hashlib.sha256(b"seed").digest() * (total // 32)
        pauses = [0]
        original = AWSGIRequest.pause_reading

        def pause_reading(request: AWSGIRequest) -> None:
            pauses[0] += 1
            original(request)

        self.patch(AWSGIRequest, "pause_reading", pause_reading)

        def app(environ: Dict[str, Any], start_response: Any) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            start_response("200 OK", [("Content-Type", "text/plain")])
            digest = hashlib.sha256()

            def got(data: bytes) -> None:
                if data:
                    digest.update(data)
                    ctrl.on_get(65536, got)
                    return
                ctrl.put(digest.hexdigest().encode())
                ctrl.finish()

            ctrl.on_get(65536, got)
            return ctrl

        server = yield listen(self, awsgi_site(app, stream_input=True))

        def upload() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(
                    b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % total + body
                )
                return read_to_eof(sock, timeout=30)

        received = yield deferToThread(upload)
        self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received[:100])
        self.assertIn(hashlib.sha256(body).hexdigest().encode(), received)
        self.assertLess(pauses[0], 8, f"reading paused {pauses[0]} times for {total // 65536} reads")


class PiecesTests(SynchronousTestCase):
    """
    L{_Pieces} behaves as a bytearray of what was appended and not taken.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("append"), st.binary(min_size=1, max_size=12)),
                st.tuples(st.just("take"), st.integers(-1, 30)),
                st.tuples(st.just("find"), st.sampled_from([b"\n", b"\x00"])),
                st.tuples(st.just("clear"), st.none()),
            ),
            max_size=40,
        )
    )
    def test_model(self, operations: List[Any]) -> None:
        pieces = _Pieces()
        model = bytearray()
        for operation, argument in operations:
            if operation == "append":
                pieces.append(argument)
                model += argument
            elif operation == "take":
                expected = bytes(model) if argument < 0 else bytes(model[:argument])
                del model[: len(expected)]
                taken = pieces.take(argument)
                self.assertIs(type(taken), bytes)
                self.assertEqual(taken, expected)
            elif operation == "find":
                self.assertEqual(pieces.find(argument), model.find(argument))
            else:
                pieces.clear()
                model.clear()
            self.assertEqual(len(pieces), len(model))

    def test_wholePieceIsNotCopied(self) -> None:
        """
        Taking exactly what one piece holds returns that piece.
        """
        pieces = _Pieces()
        data = b"x" * 1000
        pieces.append(data)
        pieces.append(b"more")
        self.assertIs(pieces.take(1000), data)
        self.assertEqual(pieces.take(-1), b"more")
