"""
Graceful shutdown (SIGTERM/SIGINT, C{--graceful-timeout}): stop accepting,
let requests in flight finish, tell applications (C{ctrl.on_shutdown}), cut
what is left when the grace period ends.
"""

from __future__ import annotations

import signal
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from txawsgi import AWSGIResource

from ._production import APP, serve, twistd_awsgi
from .support import RawClient, eventually, free_port, listen, request, sleep


async def eventually_refused(port: int, timeout: float = 3) -> None:
    """
    Wait until connecting to C{port} is refused (the log line saying a port
    closed comes out just before its socket is closed).
    """
    deadline = reactor.seconds() + timeout
    while True:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2)
        try:
            protocol = await connectProtocol(endpoint, Protocol())
        except ConnectionRefusedError:
            return
        except ConnectError:
            pass  # queued just before the socket closed, then reset
        else:
            protocol.transport.abortConnection()
        if reactor.seconds() > deadline:
            raise AssertionError(f"port {port} still accepts connections")
        await sleep(0.05)


class InProcessTests(TestCase):
    """
    The service tree's C{stopService}, as twistd calls it on SIGTERM.
    """

    timeout = 20

    async def connect(self, served: Any) -> RawClient:
        return await RawClient.connect(("127.0.0.1", served.port), testcase=self)

    async def test_inFlightFinishes(self) -> None:
        served = serve(self, "--app", APP, "--graceful-timeout", "5")
        client = await self.connect(served)
        client.send(b"GET /slow?0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b"started\n")
        stopped: List[float] = []
        stopping = served.stop()
        stopping.addCallback(lambda _: stopped.append(reactor.seconds()))
        await eventually_refused(served.port)
        [response] = await client.wait_for_responses(1, timeout=3)
        self.assertEqual(response.body, b"started\nfinished\n")
        self.assertEqual(await client.wait_closed(), "clean")
        await stopping
        self.assertEqual(len(stopped), 1)

    async def test_idleConnectionsClosed(self) -> None:
        """
        A keep-alive connection between requests is closed at once, so the
        shutdown does not wait for its idle timeout.
        """
        served = serve(self, "--app", APP, "--graceful-timeout", "5", "--keep-alive-timeout", "60")
        client = await self.connect(served)
        client.send(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for_responses(1)
        start = reactor.seconds()
        await served.stop()
        self.assertLess(reactor.seconds() - start, 1)
        self.assertEqual(await client.wait_closed(), "clean")

    async def test_appsToldOfShutdown(self) -> None:
        """
        A long-poll registered with C{ctrl.on_shutdown} answers as soon as
        the shutdown begins, long before the grace period ends.
        """
        served = serve(self, "--app", APP, "--graceful-timeout", "10")
        client = await self.connect(served)
        client.send(b"GET /longpoll HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b"waiting\n")
        start = reactor.seconds()
        await served.stop()
        self.assertLess(reactor.seconds() - start, 2)
        [response] = await client.wait_for_responses(1)
        self.assertEqual(response.body, b"waiting\nserver shutting down\n")

    async def test_requestDuringShutdownToldAtOnce(self) -> None:
        """
        A request arriving on a connection accepted before the shutdown is
        still served, says C{Connection: close}, and its app hears of the
        shutdown as soon as it registers.
        """
        served = serve(self, "--app", APP, "--graceful-timeout", "5")
        client = await self.connect(served)
        stopping = served.stop()
        await sleep(0.1)
        client.send(b"GET /longpoll HTTP/1.1\r\nHost: x\r\n\r\n")
        [response] = await client.wait_for_responses(1, timeout=3)
        self.assertEqual(response.body, b"waiting\nserver shutting down\n")
        self.assertIn(("Connection", "close"), response.headers)
        await stopping

    async def test_graceEnds(self) -> None:
        """
        What is still running when the grace period ends is cut.
        """
        served = serve(self, "--app", APP, "--graceful-timeout", "0.3")
        client = await self.connect(served)
        client.send(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: served.site.connections and any(
            p._channel.requests for p in served.site.connections
        ))
        start = reactor.seconds()
        await served.stop()
        elapsed = reactor.seconds() - start
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 2)
        await client.wait_closed()
        self.assertEqual(client.received, b"")

    async def test_resourceShutdown(self) -> None:
        """
        L{AWSGIResource.shutdown} fires once the exchanges in flight have
        ended, and at once when there are none.
        """
        holding: List[Any] = []

        def app(environ: Any, start_response: Any) -> Any:
            ctrl = environ["awsgi.controller"](environ)
            start_response("200 OK", [])
            holding.append(ctrl)
            ctrl.on_shutdown(lambda: holding.append("told"))
            return ctrl

        resource = AWSGIResource(reactor, app)
        self.assertTrue(resource.shutdown().called)
        server = await listen(self, resource)
        answered = request(server, "GET", "/")
        await eventually(lambda: holding)
        self.assertEqual(resource.in_flight, 1)
        done = resource.shutdown()
        self.assertFalse(done.called)
        await eventually(lambda: "told" in holding)
        self.assertTrue(holding[0].shutting_down)
        holding[0].finish()
        await answered
        await done
        self.assertEqual(resource.in_flight, 0)


class SignalTests(TestCase):
    """
    C{twistd awsgi} on SIGTERM.
    """

    timeout = 30

    async def test_sigtermDuringRequest(self) -> None:
        """
        SIGTERM during a 2-second request: new connections are refused, the
        request completes, then the server exits cleanly.
        """
        port = free_port()
        proc = twistd_awsgi(self, "--app", APP, "-l", f"tcp:{port}:interface=127.0.0.1")
        await proc.wait_for_output(b"txawsgi serving", timeout=20)
        client = await RawClient.connect(("127.0.0.1", port), testcase=self)
        client.send(b"GET /slow?2 HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b"started\n")
        sent = reactor.seconds()
        proc.signal("TERM")
        await proc.wait_for_output(b"(TCP Port %d Closed)" % port)
        await eventually_refused(port)
        [response] = await client.wait_for_responses(1, timeout=5)
        self.assertEqual(response.body, b"started\nfinished\n")
        code = await proc.wait_exit(timeout=10)
        self.assertGreater(reactor.seconds() - sent, 1.5)
        self.assertEqual(code, -signal.SIGTERM, proc.output)
        self.assertIn(b"Server Shut Down.", proc.output)
        self.assertIn(b"Graceful shutdown: waiting up to 30s for 1 connection(s)", proc.output)

    async def test_sigintGraceEnds(self) -> None:
        """
        SIGINT works the same; C{--graceful-timeout} bounds the wait.
        """
        port = free_port()
        proc = twistd_awsgi(
            self, "--app", APP, "-l", f"tcp:{port}:interface=127.0.0.1", "--graceful-timeout", "0.5"
        )
        await proc.wait_for_output(b"txawsgi serving", timeout=20)
        client = await RawClient.connect(("127.0.0.1", port), testcase=self)
        client.send(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
        await sleep(0.2)
        proc.signal("INT")
        await client.wait_closed(timeout=5)
        await proc.wait_exit(timeout=10)
        self.assertIn(b"grace period of 0.5s over, closed 1 connection(s)", proc.output)
        self.assertIn(b"Server Shut Down.", proc.output)
