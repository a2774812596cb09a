"""
Helpers for the production-deployment tests: the C{awsgi} service tree
served in this process, and C{twistd awsgi} in a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from txawsgi.shutdown import ServingService
from txawsgi.tap import Options, _access_log, make_server_service

from .support import (
    PROJECT_ROOT,
    ProcessHandle,
    free_port,
    project_env,
    request,
    twistd_argv,
)

__all__ = [
    "APP",
    "OTHER",
    "Served",
    "json_body",
    "nginx_binary",
    "parse",
    "self_signed",
    "serve",
    "temp_dir",
    "twistd_awsgi",
]

APP = "tests.prodapps:application"
OTHER = "tests.prodapps:other"


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class Served:
    """
    The C{awsgi} service tree of one process, listening on 127.0.0.1:C{port}
    in this process.
    """

    def __init__(self, service: ServingService, port: int) -> None:
        self.service = service
        self.port = port

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def site(self) -> Any:
        return self.service.listeners[0].factory

    def get(self, path: str = "/", **kwargs: Any) -> Deferred[Any]:
        return request(self.url(path), **kwargs)

    def stop(self) -> Deferred[None]:
        """
        Stop it as twistd does on SIGTERM (graceful).
        """
        return self.service.stopService()


def serve(testcase: TestCase, *args: str, kind: str = "tcp", extra: str = "") -> Served:
    """
    Parse C{awsgi} options C{args} (plus a C{--listen} of C{kind} on a free
    port of 127.0.0.1, with C{extra} endpoint arguments) and run the
    resulting service tree here; it is stopped at cleanup.
    """
    port = free_port()
    options = parse("--listen", f"{kind}:{port}:interface=127.0.0.1{extra}", *args)
    service = make_server_service(options, reactor, access_log=_access_log(options))
    service.privilegedStartService()
    service.startService()

    def cleanup() -> Optional[Deferred[None]]:
        if service.running:
            return service.stopService()
        return None

    testcase.addCleanup(cleanup)
    return Served(service, port)


def json_body(response: Any) -> Dict[str, Any]:
    return json.loads(response.body.decode())


def temp_dir(testcase: TestCase) -> str:
    """
    A fresh directory (short path: UNIX socket names must fit), removed at
    cleanup.
    """
    path = tempfile.mkdtemp(prefix="txa-")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


def twistd_awsgi(
    testcase: TestCase,
    *args: str,
    cwd: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    prefix: Sequence[str] = (),
) -> ProcessHandle:
    """
    Start C{twistd -n awsgi ARGS} (from the project root, so C{tests.*}
    apps load); the cleanup terminates it if still running.
    """
    argv = [*prefix, *twistd_argv("-n", "--pidfile=", "awsgi", *args)]
    return ProcessHandle.start(testcase, argv, env=project_env(env), path=cwd or PROJECT_ROOT)


def nginx_binary() -> str:
    """
    The nginx executable (Debian puts it in /usr/sbin), or skip.
    """
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SkipTest("nginx is not installed (.ci/run installs it)")
    return found


def self_signed(directory: str, name: str = "localhost") -> Tuple[str, str]:
    """
    Write a self-signed certificate for C{name} and 127.0.0.1; return the
    key and certificate paths.  Skips without C{cryptography}.
    """
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise SkipTest("cryptography is not installed (pip install twisted[tls])")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
