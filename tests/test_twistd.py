"""
End-to-end: run C{twistd -n awsgi} in a child process and talk HTTP to it.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from io import BytesIO
from pathlib import Path
from typing import List, Optional

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from . import _process

E2E_APP = '''
def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/ctrl":
        start_response("200 OK", [("Content-Type", "text/plain")])
        ctrl = environ["awsgi.controller"](environ)
        ctrl.put(b"controller ")
        ctrl.put(b"says hi\\n")
        ctrl.finish()
        return ctrl
    if path == "/thread":
        import threading
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [threading.current_thread().name.encode()]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from e2e\\n"]
'''


@implementer(IAgentEndpointFactory)
class _FixedEndpoint:
    """
    Send every request through one endpoint (e.g. a UNIX socket).
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint

    def endpointForURI(self, uri: object) -> IStreamClientEndpoint:
        return self.endpoint


class TwistdTests(TestCase):
    """
    C{twistd -n awsgi} serves an app from the current directory over TCP and
    UNIX sockets at once, and exits cleanly on SIGTERM.
    """

    timeout = 60

    def setUp(self) -> None:
        twistd = _process.script("twistd")
        if twistd is None:
            raise SkipTest(f"no twistd script in {_process.scriptsDir()}")
        self.twistd = twistd
        # Short, so the UNIX socket path fits in sun_path.
        self.cwd = tempfile.mkdtemp(prefix="txawsgi-e2e-")
        self.addCleanup(shutil.rmtree, self.cwd, True)
        Path(self.cwd, "e2eapp.py").write_text(E2E_APP)

    def spawnTwistd(self, *args: str) -> _process.Child:
        return self.spawnServer([self.twistd, "-n", "--pidfile=", "awsgi", *args])

    def spawnServer(self, argv: List[str]) -> _process.Child:
        child = _process.spawn(
            argv,
            _process.sourceEnv(),
            self.cwd,
        )

        async def reap() -> None:
            if child.running:
                child.signal("KILL")
            await child.ended

        self.addCleanup(reap)
        return child

    async def waitForListening(
        self, child: _process.Child, endpoint: IStreamClientEndpoint
    ) -> None:
        deadline = reactor.seconds() + 30
        while True:
            if not child.running:
                self.fail(f"twistd exited before listening\n{child.output()}")
            try:
                protocol = await endpoint.connect(Factory.forProtocol(Protocol))
            except ConnectError:
                if reactor.seconds() > deadline:
                    self.fail(f"twistd never listened\n{child.output()}")
                await deferLater(reactor, 0.1)
            else:
                protocol.transport.loseConnection()
                return

    async def fetch(
        self,
        agent: Agent,
        path: bytes,
        method: bytes = b"GET",
        body: Optional[bytes] = None,
    ) -> bytes:
        producer: Optional[IBodyProducer] = None
        if body is not None:
            producer = FileBodyProducer(BytesIO(body))
        response = await agent.request(
            method, b"http://127.0.0.1" + path, bodyProducer=producer
        )
        content = await readBody(response)
        self.assertEqual(response.code, 200, content)
        return content

    async def serveAndFetch(self, threads: int) -> None:
        port = _process.freePort()
        sock = str(Path(self.cwd, "s.sock"))
        child = self.spawnTwistd(
            "--app", "e2eapp:application",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--listen", f"unix:{sock}",
            "--threads", str(threads),
        )
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        unix = UNIXClientEndpoint(reactor, sock)
        await self.waitForListening(child, tcp)
        await self.waitForListening(child, unix)

        for endpoint in (tcp, unix):
            agent = Agent.usingEndpointFactory(reactor, _FixedEndpoint(endpoint))
            self.assertEqual(await self.fetch(agent, b"/"), b"hello from e2e\n")
            self.assertEqual(
                await self.fetch(agent, b"/ctrl"), b"controller says hi\n"
            )
            payload = b"x" * 100_000
            self.assertEqual(
                await self.fetch(agent, b"/echo", b"POST", payload), payload
            )
            thread = (await self.fetch(agent, b"/thread")).decode()
            if threads:
                self.assertIn("-txawsgi-", thread)
            else:
                self.assertEqual(thread, "MainThread")

        child.signal("TERM")
        status = await child.ended
        log = child.out.decode(errors="replace")
        # After a clean shutdown twistd re-raises the signal that stopped it.
        self.assertEqual(status, -signal.SIGTERM, child.output())
        self.assertIn("Server Shut Down.", log)
        self.assertIn("txawsgi serving e2eapp:application on", log)
        self.assertIn(f"tcp:{port}:interface=127.0.0.1", log)

    async def test_reactorThread(self) -> None:
        await self.serveAndFetch(threads=0)

    async def test_threadPool(self) -> None:
        await self.serveAndFetch(threads=2)

    async def test_dottedSpec(self) -> None:
        port = _process.freePort()
        child = self.spawnTwistd(
            "--app", "e2eapp.application",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
        )
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        await self.waitForListening(child, tcp)
        agent = Agent.usingEndpointFactory(reactor, _FixedEndpoint(tcp))
        self.assertEqual(await self.fetch(agent, b"/"), b"hello from e2e\n")

    async def test_twist(self) -> None:
        """
        C{twist awsgi} uses the same dropin and serves the same way.
        """
        twist = _process.script("twist")
        if twist is None:
            raise SkipTest(f"no twist script in {_process.scriptsDir()}")
        port = _process.freePort()
        child = self.spawnServer(
            [
                twist, "--log-format=text", "awsgi",
                "--app", "e2eapp:application",
                "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--threads", "1",
            ]
        )
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        await self.waitForListening(child, tcp)
        agent = Agent.usingEndpointFactory(reactor, _FixedEndpoint(tcp))
        self.assertEqual(await self.fetch(agent, b"/ctrl"), b"controller says hi\n")
        child.signal("TERM")
        status = await child.ended
        self.assertIn(status, (0, -signal.SIGTERM), child.output())
        self.assertIn("txawsgi serving e2eapp:application", child.output())

    async def test_badAppTwistd(self) -> None:
        """
        A missing app module is a usage error naming it, reported exactly like
        twistd's own usage errors: on stdout, and with a non-zero exit status
        where twistd has one (Twisted before 26.10 exits 0 on usage errors).
        """
        out, err, status = await _process.run(
            [self.twistd, "awsgi", "--app", "nosuch.module:app"],
            _process.sourceEnv(),
            self.cwd,
        )
        self.assertIn("module 'nosuch.module' not found", out + err)
        self.assertNotIn("Traceback", out + err)
        _, _, usageStatus = await _process.run(
            [self.twistd, "--no-such-option"], _process.sourceEnv(), self.cwd
        )
        self.assertEqual(status, usageStatus, out + err)
        from twisted import version

        if (version.major, version.minor) >= (26, 10):
            self.assertNotEqual(status, 0, out + err)

    async def test_badAppTwist(self) -> None:
        twist = _process.script("twist")
        if twist is None:
            raise SkipTest(f"no twist script in {_process.scriptsDir()}")
        out, err, status = await _process.run(
            [twist, "awsgi", "--app", "nosuch.module:app"],
            _process.sourceEnv(),
            self.cwd,
        )
        self.assertNotEqual(status, 0)
        self.assertIn("module 'nosuch.module' not found", err)
        self.assertNotIn("Traceback", err)
