"""
TLS through Twisted's C{ssl:} endpoints, and HTTP/2 negotiated by ALPN (with
the C{http2} extra), checked with curl.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.http import H2_ENABLED

from ._production import APP, serve, temp_dir
from .support import ProcessHandle, curl_available, run_curl


def _curl_http2() -> bool:
    import subprocess

    try:
        out = subprocess.run(["curl", "-V"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return False
    return "HTTP2" in out


class TLSTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        if not curl_available():
            raise SkipTest("curl is not installed")
        from ._production import self_signed

        directory = temp_dir(self)
        self.key, self.cert = self_signed(directory)

    def serve_tls(self, *args: str):  # type: ignore[no-untyped-def]
        served = serve(
            self, "--app", APP, *args,
            kind="ssl", extra=f":privateKey={self.key}:certKey={self.cert}",
        )
        self.base = f"https://127.0.0.1:{served.port}"
        return served

    async def curl(self, *args: str) -> bytes:
        code, out, err = await run_curl(["--cacert", self.cert, *args])
        self.assertEqual(code, 0, err)
        return out

    async def test_https(self) -> None:
        self.serve_tls()
        env = json.loads(await self.curl("--http1.1", self.base + "/environ"))
        self.assertEqual(env["wsgi.url_scheme"], "https")
        self.assertEqual(env["SERVER_PROTOCOL"], "HTTP/1.1")
        self.assertEqual(env["SERVER_PORT"], self.base.rsplit(":", 1)[1])

    async def test_http2(self) -> None:
        if not H2_ENABLED:
            raise SkipTest("the http2 extra (h2) is not installed")
        if not _curl_http2():
            raise SkipTest("curl has no HTTP/2 support")
        log_path = os.path.join(temp_dir(self), "access.log")
        self.serve_tls("--access-log", log_path)
        out = await self.curl("--http2", "-sS", "-w", "\\n%{http_version}", self.base + "/environ")
        body, version = out.rsplit(b"\n", 1)
        self.assertEqual(version, b"2")
        env = json.loads(body)
        self.assertEqual(env["SERVER_PROTOCOL"], "HTTP/2")
        self.assertEqual(env["wsgi.url_scheme"], "https")
        with open(log_path) as f:
            [line] = f.read().splitlines()
        self.assertIn(f'"GET /environ HTTP/2" 200 {len(body)} ', line)

    async def test_http2QuietStreamNotTimedOut(self) -> None:
        """
        The keep-alive timeout closes idle HTTP/2 connections, not ones
        with a stream waiting on its application.
        """
        if not H2_ENABLED or not _curl_http2():
            raise SkipTest("needs h2 and curl with HTTP/2")
        self.serve_tls("--keep-alive-timeout", "0.3")
        out = await self.curl("--http2", self.base + "/slow?1")
        self.assertEqual(out, b"started\nfinished\n")

    async def test_http2GracefulShutdown(self) -> None:
        """
        A stream in flight when the server stops finishes (the connection
        gets a GOAWAY, then closes).
        """
        if not H2_ENABLED or not _curl_http2():
            raise SkipTest("needs h2 and curl with HTTP/2")
        served = self.serve_tls("--graceful-timeout", "5")
        curl = ProcessHandle.start(
            self,
            ["curl", "-q", "--noproxy", "*", "-sSN", "--http2", "--cacert", self.cert, self.base + "/slow?1"],
        )
        await curl.wait_for_output(b"started\n")
        await served.stop()
        code = await curl.wait_exit()
        self.assertEqual(code, 0, curl.output)
        self.assertEqual(curl.out, b"started\nfinished\n")

    async def test_workersTLS(self) -> None:
        """
        Workers wrap the TLS socket they inherit in TLS (and HTTP/2) built
        from the same C{ssl:} description.
        """
        from ._production import twistd_awsgi
        from .support import free_port

        port = free_port()
        proc = twistd_awsgi(
            self, "--app", APP, "--workers", "2",
            "-l", f"ssl:{port}:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}",
        )
        await proc.wait_for_output(lambda out: out.count(b"(worker-") >= 2, timeout=20)
        args = ["--http2"] if H2_ENABLED and _curl_http2() else []
        env = json.loads(await self.curl(*args, f"https://127.0.0.1:{port}/environ"))
        self.assertEqual(env["wsgi.url_scheme"], "https")
        self.assertIs(env["wsgi.multiprocess"], True)
        if args:
            self.assertEqual(env["SERVER_PROTOCOL"], "HTTP/2")
        proc.signal("TERM")
        await proc.wait_exit(timeout=15)
