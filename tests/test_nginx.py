"""
A real nginx in front of C{twistd awsgi --proxy-headers}, configured as
docs/deployment.rst says: a streamed response passes through unbuffered,
and the client's address reaches C{REMOTE_ADDR} through X-Forwarded-For.

nginx runs unprivileged in the foreground (C{daemon off; master_process
off}) with everything it writes in a temporary directory; the tests skip
when nginx is not installed.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.trial.unittest import SkipTest, TestCase

from ._production import APP, nginx_binary, temp_dir, twistd_awsgi
from .support import ProcessHandle, RawClient, free_port, request, sleep

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream txawsgi {{
        server 127.0.0.1:{app_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://txawsgi;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering {buffering};
            proxy_read_timeout 1h;
        }}
    }}
}}
"""

#: A second loopback address for the client, so the address nginx forwards
#: differs from its own (127.0.0.1).
CLIENT_ADDRESS = "127.0.0.2"


class NginxTests(TestCase):
    timeout = 40

    async def start(self, buffering: str = "off") -> None:
        nginx = nginx_binary()
        directory = temp_dir(self)
        self.app_port = free_port()
        self.port = free_port()
        with open(os.path.join(directory, "nginx.conf"), "w") as f:
            f.write(
                CONFIG.format(
                    dir=directory, app_port=self.app_port, port=self.port, buffering=buffering
                )
            )
        self.app = twistd_awsgi(
            self,
            "--app", APP,
            "-l", f"tcp:{self.app_port}:interface=127.0.0.1",
            "--proxy-headers",
        )
        self.nginx = ProcessHandle.start(
            self,
            [nginx, "-p", directory, "-c", os.path.join(directory, "nginx.conf"), "-e", os.path.join(directory, "error.log")],
        )
        await self.app.wait_for_output(b"txawsgi serving", timeout=20)
        await self.wait_listening(self.port, self.nginx)

    async def wait_listening(self, port: int, process: ProcessHandle) -> None:
        deadline = reactor.seconds() + 10
        while True:
            if not process.running:
                raise SkipTest(f"nginx could not start: {process.output!r}")
            try:
                client = await self.connect()
            except ConnectError:
                if reactor.seconds() > deadline:
                    self.fail(f"nginx never listened: {process.output!r}")
                await sleep(0.05)
            else:
                await client.close()
                return

    async def connect(self) -> RawClient:
        """
        A raw connection to nginx from L{CLIENT_ADDRESS}.
        """
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.port, timeout=5, bindAddress=(CLIENT_ADDRESS, 0)
        )
        client: Any = await connectProtocol(endpoint, RawClient())
        self.addCleanup(lambda: None if client.closed else client.abort())
        return client

    async def test_streamingUnbuffered(self) -> None:
        """
        The first part of a response reaches the client through nginx while
        the application still holds the rest back.
        """
        await self.start()
        client = await self.connect()
        client.send(b"GET /hold HTTP/1.1\r\nHost: app.example\r\n\r\n")
        await client.wait_for(b"first part\n", timeout=3)
        self.assertNotIn(b"second part", client.received)
        released = await request(f"http://127.0.0.1:{self.app_port}/release")
        self.assertEqual(released.body, b"released 1\n")
        [response] = await client.wait_for_responses(1, timeout=5)
        self.assertEqual(response.body, b"first part\nsecond part\n")

    async def test_forwardedFor(self) -> None:
        """
        nginx's X-Forwarded-For (and Host, X-Forwarded-Proto) reach the
        application as REMOTE_ADDR (and HTTP_HOST, wsgi.url_scheme), on
        kept-alive upstream connections, request after request.
        """
        await self.start()
        client = await self.connect()
        for _ in range(5):
            client.clear()
            client.send(b"GET /environ HTTP/1.1\r\nHost: app.example\r\n\r\n")
            [response] = await client.wait_for_responses(1)
            self.assertEqual(response.code, 200, response.body)
            env = json.loads(response.body)
            self.assertEqual(env["REMOTE_ADDR"], CLIENT_ADDRESS)
            self.assertEqual(env["HTTP_X_FORWARDED_FOR"], CLIENT_ADDRESS)
            self.assertEqual(env["HTTP_HOST"], "app.example")
            self.assertEqual(env["SERVER_NAME"], "app.example")
            self.assertEqual(env["wsgi.url_scheme"], "http")

    async def test_backpressureThrough(self) -> None:
        """
        Unbuffered, nginx reads no faster than its client: an application
        streaming to a client that stopped reading is held back (through
        C{on_drain}) instead of being drained into nginx's buffers.
        """
        await self.start()
        limit = 64 * 1024 * 1024
        client = await self.connect()
        client.send(b"GET /produce?%d HTTP/1.1\r\nHost: app.example\r\n\r\n" % limit)
        await client.wait_for(b"xxxx", timeout=5)
        client.pause_reading()
        previous = -1
        for _ in range(50):
            await sleep(0.1)
            produced = int((await request(f"http://127.0.0.1:{self.app_port}/produced")).body)
            if produced == previous:
                break
            previous = produced
        self.assertLess(produced, limit // 2)
