"""
C{--mount /prefix=app} and C{--static /prefix=DIRECTORY} beside the root
C{--app}: one server, several applications and static files.
"""

from __future__ import annotations

import os

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txawsgi.mounts import parse_prefix

from ._production import APP, OTHER, parse, serve, temp_dir
from .support import RawClient


class OptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temp_dir(self)

    def test_parsed(self) -> None:
        options = parse("--app", APP, "--mount", f"/api/v1={OTHER}", "--static", f"/s={self.directory}")
        from tests import prodapps

        [(prefix, spec, app)] = options["mounts"]
        self.assertEqual((prefix, spec, app), ("/api/v1", OTHER, prodapps.other))
        self.assertEqual(options["statics"], [("/s", os.path.abspath(self.directory))])

    def test_noDemoBesideMounts(self) -> None:
        """
        The demo is served only when nothing else is.
        """
        options = parse("--mount", f"/api={OTHER}")
        self.assertIsNone(options["app"])
        self.assertIsNone(options["application"])

    def test_usageErrors(self) -> None:
        cases = [
            (("--mount", "api=" + OTHER), "must start with '/'"),
            (("--mount", "/api"), "--mount takes /prefix=pkg.module:app"),
            (("--mount", "/api=nosuch.module:app"), "module 'nosuch.module' not found"),
            (("--static", f"/s={self.directory}/nope"), "not a directory"),
            (("--static", "/s="), "--static takes /prefix=DIRECTORY"),
            (("--mount", f"/x={OTHER}", "--static", f"/x/={self.directory}"), "conflicts with --mount /x="),
            (("--app", APP, "--mount", f"/={OTHER}"), "conflicts with --app"),
            (("--mount", f"/a/../b={OTHER}"), "'..' segment"),
            (("--no-such-option",), "no-such-option"),
            (("--workers", "many"), "--workers"),
            (("--workers", "-2"), "--workers"),
        ]
        for args, message in cases:
            e = self.assertRaises(UsageError, parse, *args)
            self.assertIn(message, str(e), args)

    def test_prefixes(self) -> None:
        self.assertEqual(parse_prefix("/"), ())
        self.assertEqual(parse_prefix("/a/b/"), (b"a", b"b"))


class MountTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.directory = temp_dir(self)
        with open(os.path.join(self.directory, "big.bin"), "wb") as f:
            f.write(bytes(range(256)) * 40)
        os.mkdir(os.path.join(self.directory, "sub"))
        with open(os.path.join(self.directory, "sub", "index.html"), "wb") as f:
            f.write(b"<p>index</p>")
        os.mkdir(os.path.join(self.directory, "empty"))

    async def test_routing(self) -> None:
        """
        The longest prefix wins, on whole segments; the rest goes to the
        root app with the whole path in C{PATH_INFO}.
        """
        served = serve(
            self,
            "--app", APP,
            "--mount", f"/api={OTHER}",
            "--mount", f"/api/v2={APP}",
            "--static", f"/files={self.directory}",
        )
        expected = {
            "/api/x": b"other /api|/x\n",
            "/api": b"other /api|\n",
            "/api/v2/y": b"hello /api/v2|/y\n",
            "/api/v22": b"other /api|/v22\n",
            "/apix": b"hello |/apix\n",
            "/": b"hello |/\n",
            "/deep/er/path": b"hello |/deep/er/path\n",
        }
        for path, body in expected.items():
            response = await served.get(path)
            self.assertEqual((response.code, response.body), (200, body), path)

    async def test_static(self) -> None:
        served = serve(self, "--app", APP, "--static", f"/files={self.directory}")
        whole = await served.get("/files/big.bin")
        self.assertEqual(whole.body, bytes(range(256)) * 40)
        self.assertEqual(whole.header("Accept-Ranges"), "bytes")
        part = await served.get("/files/big.bin", headers={"Range": "bytes=256-511"})
        self.assertEqual(part.code, 206)
        self.assertEqual(part.body, bytes(range(256)))
        self.assertEqual(part.header("Content-Range"), f"bytes 256-511/{256 * 40}")
        index = await served.get("/files/sub/")
        self.assertEqual(index.body, b"<p>index</p>")
        for missing in ("/files/empty/", "/files/nope", "/files/../setup.cfg"):
            response = await served.get(missing)
            self.assertEqual(response.code, 404, missing)

    async def test_staticRedirectsDirectory(self) -> None:
        served = serve(self, "--static", f"/files={self.directory}")
        client = await RawClient.connect(("127.0.0.1", served.port), testcase=self)
        client.send(b"GET /files/sub HTTP/1.1\r\nHost: h\r\n\r\n")
        [response] = await client.wait_for_responses(1)
        self.assertIn(response.code, (301, 302))
        self.assertTrue(response.header("Location").endswith("/files/sub/"))

    async def test_withoutRootApp(self) -> None:
        served = serve(self, "--mount", f"/api={OTHER}", "--static", f"/={self.directory}")
        api = await served.get("/api/q")
        self.assertEqual(api.body, b"other /api|/q\n")
        root = await served.get("/big.bin")
        self.assertEqual(len(root.body), 256 * 40)

    async def test_nothingAtRoot(self) -> None:
        served = serve(self, "--mount", f"/api={OTHER}")
        response = await served.get("/elsewhere")
        self.assertEqual(response.code, 404)

    async def test_streamedBodyToMountedApp(self) -> None:
        """
        A mounted application still gets its body streamed (the site finds
        it at the request headers).
        """
        served = serve(self, "--stream-input", "--mount", f"/api={OTHER}")
        client = await RawClient.connect(("127.0.0.1", served.port), testcase=self)
        client.send(b"POST /api/up HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
        # Answered before the rest of the body arrives.
        [response] = await client.wait_for_responses(1)
        self.assertEqual(response.body, b"other /api|/up\n")
