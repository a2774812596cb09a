"""
The command line as deployed: every option documented, C{--help} from
C{twistd} and C{twist}, usage errors, and systemd socket activation through
Twisted's C{systemd:} endpoint (a socket inherited as descriptor 3, as
systemd passes it).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from typing import List

from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txawsgi.tap import Options

from ._production import APP, OTHER, json_body
from .support import (
    PROJECT_ROOT,
    ProcessHandle,
    free_port,
    project_env,
    request,
    spawn,
    twistd_argv,
)


def long_options() -> List[str]:
    """
    Every long option of C{awsgi}, as C{--name}.
    """
    text = str(Options())
    names = re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", text, re.M)
    return [n for n in names if n not in ("--help", "--version")]


class DocumentationTests(SynchronousTestCase):
    def test_readmeListsEveryOption(self) -> None:
        with open(os.path.join(PROJECT_ROOT, "README.rst")) as f:
            readme = f.read()
        options = long_options()
        self.assertGreater(len(options), 15)
        missing = [o for o in options if f"``{o}" not in readme]
        self.assertEqual(missing, [], "options missing from README.rst")

    def test_deploymentGuide(self) -> None:
        with open(os.path.join(PROJECT_ROOT, "docs", "deployment.rst")) as f:
            guide = f.read()
        for needed in (
            "proxy_buffering off",
            "keepalive",
            "proxy_http_version 1.1",
            "X-Forwarded-For",
            "ListenStream=",
            "systemd:domain=INET:index=0",
            "--workers",
            "--proxy-headers",
            "--graceful-timeout",
        ):
            self.assertIn(needed, guide)

    def test_helpMentionsEveryOption(self) -> None:
        text = str(Options())
        for option in ("--workers", "--graceful-timeout", "--access-log", "--proxy-headers",
                       "--forwarded-allow-ips", "--root-path", "--keep-alive-timeout",
                       "--header-timeout", "--request-timeout", "--mount", "--static"):
            self.assertIn(option, text)


class CommandLineTests(TestCase):
    timeout = 30

    async def test_twistdHelp(self) -> None:
        code, out, err = await spawn(twistd_argv("awsgi", "--help"), env=project_env())
        self.assertEqual(code, 0, err)
        for option in long_options():
            self.assertIn(option.encode(), out)

    async def test_twistHelp(self) -> None:
        argv = [sys.executable, "-m", "twisted", "awsgi", "--help"]  # twist
        code, out, err = await spawn(argv, env=project_env())
        self.assertEqual(code, 0, err)
        for option in long_options():
            self.assertIn(option.encode(), out)

    async def test_twistServes(self) -> None:
        """
        C{twist awsgi} takes the same options and serves the same way.
        """
        port = free_port()
        argv = [
            sys.executable, "-m", "twisted", "--log-format=text", "awsgi",
            "--app", APP, "--mount", f"/api={OTHER}", "-l", f"tcp:{port}:interface=127.0.0.1",
            "--proxy-headers", "--access-log", "-", "--graceful-timeout", "3",
        ]
        proc = ProcessHandle.start(self, argv, env=project_env(), path=PROJECT_ROOT)
        await proc.wait_for_output(b"txawsgi serving", timeout=20)
        mounted = await request(f"http://127.0.0.1:{port}/api/x")
        self.assertEqual(mounted.body, b"other /api|/x\n")
        env = json_body(await request(f"http://127.0.0.1:{port}/environ", headers={"X-Forwarded-For": "192.0.2.5"}))
        self.assertEqual(env["REMOTE_ADDR"], "192.0.2.5")
        await proc.wait_for_output(b'192.0.2.5 - - [')
        proc.signal("TERM")
        await proc.wait_exit()

    async def test_usageErrors(self) -> None:
        """
        Unknown and conflicting options fail with a usage error, not a
        traceback.
        """
        for args, message in [
            (["--no-such-thing"], b"no-such-thing"),
            (["--forwarded-allow-ips", "10.0.0.1"], b"--forwarded-allow-ips needs --proxy-headers"),
            (["--app", APP, "--mount", f"/={APP}"], b"conflicts with --app"),
            (["--workers", "2", "--listen", "stdio:"], b"cannot be shared by worker processes"),
        ]:
            code, out, err = await spawn(twistd_argv("awsgi", *args), env=project_env(), path=PROJECT_ROOT)
            self.assertNotEqual(code, 0, out + err)
            self.assertIn(message, out + err)
            self.assertNotIn(b"Traceback", out + err)


class SystemdTests(TestCase):
    """
    Socket activation: systemd binds the socket, starts the service with it
    as descriptor 3 and C{LISTEN_FDS=1}, C{LISTEN_PID} set to the service's
    pid; C{--listen systemd:domain=INET:index=0} serves it.
    """

    timeout = 30

    def activate(self, *args: str) -> "tuple[ProcessHandle, int]":
        if sys.platform != "linux":
            raise SkipTest("socket activation is a Linux (systemd) thing")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        argv = twistd_argv("-n", "--pidfile=", "awsgi", "--app", APP, "--listen", "systemd:domain=INET:index=0", *args)
        # LISTEN_PID must be the server's own pid: set it in the shell that
        # then becomes the server.
        shell = ["/bin/sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh", *argv]
        handle = ProcessHandle()
        handle.argv = shell
        reactor.spawnProcess(
            handle,
            shell[0],
            shell,
            env=project_env({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}),
            path=PROJECT_ROOT,
            childFDs={0: "w", 1: "r", 2: "r", 3: listener.fileno()},
        )
        listener.close()
        self.addCleanup(lambda: None if not handle.running else handle.terminate())
        return handle, port

    async def test_socketActivation(self) -> None:
        proc, port = self.activate()
        await proc.wait_for_output(b"txawsgi serving", timeout=20)
        env = json_body(await request(f"http://127.0.0.1:{port}/environ"))
        self.assertEqual(env["SERVER_PORT"], str(port))
        proc.signal("TERM")
        await proc.wait_exit()
        self.assertIn(b"Server Shut Down.", proc.output)

    async def test_socketActivationWorkers(self) -> None:
        """
        With workers, the supervisor hands the activated socket on.
        """
        proc, port = self.activate("--workers", "2")
        await proc.wait_for_output(
            lambda out: len(re.findall(rb"\(worker-\d+, in the", out)) >= 2, timeout=20
        )
        env = json_body(await request(f"http://127.0.0.1:{port}/environ"))
        self.assertIs(env["wsgi.multiprocess"], True)
        proc.signal("TERM")
        await proc.wait_exit(timeout=15)
