"""
C{--proxy-headers}, C{--forwarded-allow-ips} and C{--root-path}: the
client's address, scheme and host from trusted proxies, on real sockets.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txawsgi.proxy import TrustedProxies, parse_forwarded, parse_node

from ._production import APP, OTHER, json_body, parse, serve


class ParseTests(SynchronousTestCase):
    """
    The header grammars.
    """

    def test_forwarded(self) -> None:
        self.assertEqual(
            parse_forwarded('for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8::1]:4711";host=x'),
            [
                {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
                {"for": "[2001:db8::1]:4711", "host": "x"},
            ],
        )
        self.assertEqual(parse_forwarded('for="a\\"b"'), [{"for": 'a"b'}])

    def test_forwardedMalformed(self) -> None:
        for bad in ('for="unterminated', "for", "=x", "for=a;for=b", "fo r=a"):
            self.assertRaises(ValueError, parse_forwarded, bad)

    def test_nodes(self) -> None:
        self.assertEqual(parse_node("192.0.2.1"), ("192.0.2.1", 0))
        self.assertEqual(parse_node("192.0.2.1:4711"), ("192.0.2.1", 4711))
        self.assertEqual(parse_node("[2001:db8::1]:80"), ("2001:db8::1", 80))
        self.assertEqual(parse_node("2001:db8::1"), ("2001:db8::1", 0))
        self.assertEqual(parse_node("::ffff:10.1.2.3"), ("10.1.2.3", 0))
        for other in ("unknown", "_hidden", "example.com", "1.2.3.4:x", "[::1"):
            self.assertIsNone(parse_node(other), other)

    def test_trusted(self) -> None:
        trusted = TrustedProxies("127.0.0.1, 10.0.0.0/8,unix")
        self.assertTrue(trusted.trusts(IPv4Address("TCP", "10.9.8.7", 1)))
        self.assertTrue(trusted.trusts(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertFalse(trusted.trusts(IPv4Address("TCP", "127.0.0.2", 1)))
        self.assertTrue(trusted.trusts(UNIXAddress(b"/s")))
        self.assertFalse(TrustedProxies("127.0.0.1").trusts(UNIXAddress(b"/s")))
        self.assertTrue(TrustedProxies("*").trusts_ip("203.0.113.9"))
        self.assertRaises(ValueError, TrustedProxies, "localhost")


class OptionTests(SynchronousTestCase):
    def test_allowIpsNeedsProxyHeaders(self) -> None:
        e = self.assertRaises(UsageError, parse, "--forwarded-allow-ips", "10.0.0.1")
        self.assertIn("--forwarded-allow-ips needs --proxy-headers", str(e))

    def test_badAllowIps(self) -> None:
        e = self.assertRaises(
            UsageError, parse, "--proxy-headers", "--forwarded-allow-ips", "10.0.0.1,proxy.local"
        )
        self.assertIn("'proxy.local' is not an IP address", str(e))

    def test_badRootPath(self) -> None:
        self.assertRaises(UsageError, parse, "--root-path", "app")
        self.assertRaises(UsageError, parse, "--root-path", "/a/../b")


class ProxyHeaderTests(TestCase):
    """
    Requests from 127.0.0.1 (trusted by default) over real sockets.
    """

    timeout = 20

    async def environ(self, served, headers=None, path="/environ"):  # type: ignore[no-untyped-def]
        response = await served.get(path, headers=headers or {})
        self.assertEqual(response.code, 200, response.body)
        return json_body(response)

    async def test_xForwarded(self) -> None:
        served = serve(self, "--app", APP, "--proxy-headers")
        env = await self.environ(
            served,
            {
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "www.example.com",
            },
        )
        self.assertEqual(env["REMOTE_ADDR"], "203.0.113.9")
        self.assertEqual(env["wsgi.url_scheme"], "https")
        self.assertEqual(env["HTTP_HOST"], "www.example.com")
        self.assertEqual(env["SERVER_NAME"], "www.example.com")
        self.assertEqual(env["SERVER_PORT"], "443")
        # The headers themselves stay.
        self.assertEqual(env["HTTP_X_FORWARDED_FOR"], "203.0.113.9")

    async def test_chainTakesRightmostUntrusted(self) -> None:
        """
        Everything left of the first untrusted address may be the client's
        invention: the client is the rightmost address that is not a trusted
        proxy.
        """
        served = serve(
            self, "--app", APP, "--proxy-headers", "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8"
        )
        env = await self.environ(
            served, {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.1.1.1"}
        )
        self.assertEqual(env["REMOTE_ADDR"], "198.51.100.7")
        self.assertEqual(env["wsgi.url_scheme"], "http")
        self.assertEqual(env["SERVER_PORT"], str(served.port))

    async def test_forwardedRfc7239(self) -> None:
        """
        C{Forwarded} wins over C{X-Forwarded-*}; the host may carry a port.
        """
        served = serve(self, "--app", APP, "--proxy-headers")
        env = await self.environ(
            served,
            {
                "Forwarded": 'for="[2001:db8::7]:4711";proto=https;host="shop.example:8443"',
                "X-Forwarded-For": "203.0.113.9",
            },
        )
        self.assertEqual(env["REMOTE_ADDR"], "2001:db8::7")
        self.assertEqual(env["REMOTE_PORT"], "4711")
        self.assertEqual(env["wsgi.url_scheme"], "https")
        self.assertEqual(env["HTTP_HOST"], "shop.example:8443")
        self.assertEqual(env["SERVER_NAME"], "shop.example")
        self.assertEqual(env["SERVER_PORT"], "8443")

    async def test_untrustedPeerIgnored(self) -> None:
        served = serve(self, "--app", APP, "--proxy-headers", "--forwarded-allow-ips", "10.0.0.0/8")
        env = await self.environ(
            served, {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        )
        self.assertEqual(env["REMOTE_ADDR"], "127.0.0.1")
        self.assertEqual(env["wsgi.url_scheme"], "http")

    async def test_offByDefault(self) -> None:
        served = serve(self, "--app", APP)
        env = await self.environ(served, {"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(env["REMOTE_ADDR"], "127.0.0.1")

    async def test_badValuesIgnored(self) -> None:
        """
        A host that could smuggle bytes into URLs and an unknown scheme are
        ignored; a malformed C{Forwarded} header is ignored as a whole.
        """
        served = serve(self, "--app", APP, "--proxy-headers")
        env = await self.environ(
            served, {"X-Forwarded-Host": "evil.example/x?", "X-Forwarded-Proto": "gopher"}
        )
        self.assertEqual(env["SERVER_NAME"], "127.0.0.1")
        self.assertEqual(env["wsgi.url_scheme"], "http")
        env = await self.environ(served, {"Forwarded": 'for="1.2.3.4'})
        self.assertEqual(env["REMOTE_ADDR"], "127.0.0.1")


class RootPathTests(TestCase):
    timeout = 20

    async def test_rootPath(self) -> None:
        """
        C{--root-path} prefixes C{SCRIPT_NAME} (also of mounted apps); a path
        that already carries it is served as if it did not.
        """
        served = serve(self, "--app", APP, "--mount", f"/api={OTHER}", "--root-path", "/app")
        stripped = await served.get("/x/y")
        self.assertEqual(stripped.body, b"hello /app|/x/y\n")
        unstripped = await served.get("/app/x/y")
        self.assertEqual(unstripped.body, b"hello /app|/x/y\n")
        mounted = await served.get("/api/z")
        self.assertEqual(mounted.body, b"other /app/api|/z\n")
