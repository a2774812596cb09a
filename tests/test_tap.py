"""
Tests for L{txawsgi.tap} and the C{awsgi} dropin.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from typing import List

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogEvent, Logger, formatEvent
from twisted.plugin import IPlugin, getPlugins
from twisted.python.threadpool import ThreadPool
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from txawsgi import tap
from txawsgi.resource import AWSGIResource
from txawsgi.tap import DEFAULT_APP, Options, ThreadPoolService, makeService

from . import _process, tapapps

APP = "tests.tapapps:hello"


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    """
    Parsing and validation of C{twistd awsgi} options.
    """

    def test_defaults(self) -> None:
        options = parse()
        self.assertEqual(options["app"], DEFAULT_APP)
        self.assertEqual(DEFAULT_APP, "txawsgi.demo:application")
        from txawsgi.demo import application

        self.assertIs(options["application"], application)
        self.assertEqual(options["listen"], ["tcp:8080"])
        self.assertEqual(options["threads"], 0)

    def test_app(self) -> None:
        options = parse("--app", APP)
        self.assertIs(options["application"], tapapps.hello)
        dotted = parse("-a", "tests.tapapps.hello")
        self.assertIs(dotted["application"], tapapps.hello)

    def test_listenRepeatable(self) -> None:
        options = parse(
            "--app", APP,
            "--listen", "tcp:8080",
            "-l", "unix:/tmp/s.sock",
            "--listen=tcp:0:interface=127.0.0.1",
        )
        self.assertEqual(
            options["listen"],
            ["tcp:8080", "unix:/tmp/s.sock", "tcp:0:interface=127.0.0.1"],
        )

    def test_listenNotShared(self) -> None:
        """
        The C{--listen} list is per instance, not a shared default.
        """
        parse("--app", APP, "--listen", "tcp:1")
        self.assertEqual(parse("--app", APP)["listen"], ["tcp:8080"])

    def test_badListen(self) -> None:
        for description in ("nosuch:1", "tcp:http", "tcp:80:bogus=1"):
            e = self.assertRaises(
                UsageError, parse, "--app", APP, "--listen", description
            )
            self.assertIn(f"--listen {description!r}: ", str(e))

    def test_noAccessLogConflict(self) -> None:
        """
        C{--no-access-log} with C{--access-log} is refused.
        """
        self.assertTrue(parse("--app", APP, "--no-access-log")["no-access-log"])
        e = self.assertRaises(UsageError, parse, "--app", APP, "--no-access-log", "--access-log", "-")
        self.assertIn("--no-access-log and --access-log", str(e))

    def test_threads(self) -> None:
        self.assertEqual(parse("--app", APP, "--threads", "4")["threads"], 4)
        self.assertEqual(parse("--app", APP, "-t", "0")["threads"], 0)

    def test_negativeThreads(self) -> None:
        e = self.assertRaises(UsageError, parse, "--app", APP, "--threads", "-1")
        self.assertIn("--threads must be >= 0", str(e))

    def test_nonIntegerThreads(self) -> None:
        self.assertRaises(UsageError, parse, "--app", APP, "--threads", "many")

    def test_missingModule(self) -> None:
        e = self.assertRaises(UsageError, parse, "--app", "nosuch.module:app")
        self.assertIn("module 'nosuch.module' not found", str(e))

    def test_missingAttribute(self) -> None:
        e = self.assertRaises(UsageError, parse, "--app", "tests.tapapps:nosuch")
        self.assertIn(
            "attribute 'nosuch' not found in module 'tests.tapapps'", str(e)
        )

    def test_notCallable(self) -> None:
        spec = "tests.tapapps:NOT_AN_APP"
        e = self.assertRaises(UsageError, parse, "--app", spec)
        self.assertIn("is not callable", str(e))

    def test_malformedApp(self) -> None:
        e = self.assertRaises(UsageError, parse, "--app", "nodots")
        self.assertIn("invalid app spec 'nodots'", str(e))

    def test_help(self) -> None:
        text = str(Options())
        for option in ("--app=", "--listen=", "--threads="):
            self.assertIn(option, text)


class MakeServiceTests(SynchronousTestCase):
    """
    L{makeService} builds one listening service per C{--listen}, plus a
    thread pool service when asked for threads.
    """

    def test_listeners(self) -> None:
        memory = MemoryReactor()
        options = parse("--app", APP, "-l", "tcp:8081", "-l", "unix:/tmp/x.sock")
        service = makeService(options, memory)
        self.assertTrue(verifyObject(IService, service))
        self.assertIsInstance(service, MultiService)
        children = list(service)
        self.assertEqual(len(children), 2)
        for child in children:
            self.assertIsInstance(child, StreamServerEndpointService)
        self.assertIs(children[0].factory, children[1].factory)
        site = children[0].factory
        self.assertIsInstance(site, Site)
        self.assertIsInstance(site.resource, AWSGIResource)

        service.startService()
        self.assertEqual(memory.tcpServers[0][0], 8081)
        self.assertEqual(memory.unixServers[0][0], "/tmp/x.sock")
        service.stopService()

    def test_noThreadsNoPool(self) -> None:
        service = makeService(parse("--app", APP), MemoryReactor())
        self.assertFalse(
            [s for s in service if isinstance(s, ThreadPoolService)]
        )

    def test_threadPool(self) -> None:
        service = makeService(parse("--app", APP, "-t", "3"), MemoryReactor())
        first = list(service)[0]
        self.assertIsInstance(first, ThreadPoolService)
        self.assertEqual(first.pool.max, 3)
        self.assertEqual(first.pool.min, 0)
        self.assertEqual(first.pool.name, "txawsgi")

    def test_logsAtStartup(self) -> None:
        events: List[LogEvent] = []
        memory = MemoryReactor()
        service = makeService(parse("--app", APP, "-l", "tcp:8082"), memory)
        self.patch(tap._AWSGIService, "_log", Logger(observer=events.append))
        service.startService()
        self.addCleanup(service.stopService)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn(APP, text)
        self.assertIn("tcp:8082", text)
        self.assertIn("reactor thread", text)


class ThreadPoolServiceTests(TestCase):
    """
    L{ThreadPoolService} ties the pool's lifetime to the service's.
    """

    def test_lifecycle(self) -> Deferred[None]:
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test")
        service = ThreadPoolService(pool, reactor)
        self.assertFalse(pool.started)
        service.startService()
        self.assertTrue(pool.started)
        self.assertTrue(service.running)

        d = service.stopService()
        self.assertFalse(service.running)
        assert d is not None

        def stopped(_: object) -> None:
            self.assertFalse(pool.started)
            self.assertTrue(pool.joined)

        return d.addCallback(stopped)

    def test_stopNotStarted(self) -> None:
        service = ThreadPoolService(ThreadPool(0, 1), reactor)
        self.assertIsNone(service.stopService())


class PluginTests(TestCase):
    """
    The dropin exposes an C{awsgi} L{IServiceMaker} and stays cheap to import.
    """

    def plugin(self) -> IServiceMaker:
        found = [p for p in getPlugins(IServiceMaker) if p.tapname == "awsgi"]
        self.assertEqual(len(found), 1, found)
        return found[0]

    def test_interfaces(self) -> None:
        plugin = self.plugin()
        self.assertTrue(verifyObject(IServiceMaker, plugin))
        self.assertTrue(IPlugin.providedBy(plugin))
        self.assertIs(plugin.options, Options)
        self.assertTrue(plugin.description)

    def test_makeService(self) -> None:
        plugin = self.plugin()
        options = plugin.options()
        options.parseOptions(["--app", APP, "-l", "tcp:0"])
        service = plugin.makeService(options)
        self.assertIsInstance(service, MultiService)

    async def test_lazyImport(self) -> None:
        """
        Importing the dropin (which every twistd run does) imports nothing
        from txawsgi.
        """
        code = (
            "import sys, twisted.plugins.txawsgi_plugin as p; "
            "print(p.__file__); "
            "print(sorted(m for m in sys.modules if m.startswith('txawsgi')))"
        )
        cwd = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, cwd)
        out, err, status = await _process.run(
            [sys.executable, "-c", code], _process.sourceEnv(), cwd
        )
        self.assertEqual(status, 0, err)
        self.assertEqual(out.splitlines()[-1], "[]", out + err)
