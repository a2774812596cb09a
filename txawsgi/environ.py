"""
The PEP 3333 environ of a Twisted request.

A pure function of the request and the server's settings: no I/O, no state.
Strings are "bytes as latin-1" native strings, as PEP 3333 requires.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.server import Request

#: Headers CGI passes without the C{HTTP_} prefix, and never with it.
_UNPREFIXED = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}

#: How repeated request headers combine (RFC 9110 5.3; cookies use "; ").
_SEPARATOR = {b"cookie": "; "}

_DEFAULT_PORT = {"http": "80", "https": "443"}

#: Cache of header name -> environ key; header names repeat across requests.
_keys: dict[bytes, str | None] = {}
_UNSEEN: Any = object()

#: Cache of Host header -> (name, port): hosts repeat too.
_HOSTS: dict[str, tuple[str, str | None]] = {}


def _environ_key(name: bytes) -> str | None:
    """
    Map a request header name to its environ key, or L{None} to drop it.

    Names with C{_} are dropped: CGI maps C{-} and C{_} to the same key, so
    C{X_Forwarded_For} could otherwise pose as C{X-Forwarded-For} behind a
    proxy that only filters the dashed spelling (nginx drops them too).
    """
    try:
        return _keys[name]
    except KeyError:
        pass
    lower = name.lower()
    if b"_" in lower:
        key = None
    else:
        key = _UNPREFIXED.get(lower) or "HTTP_" + lower.decode("latin-1").upper().replace("-", "_")
    if len(_keys) < 1024:
        _keys[name] = key
    return key


#: The constant part of environs, per (multithread, multiprocess, wrapper).
_BASES: dict[tuple[Any, ...], dict[str, Any]] = {}

#: Methods and protocol versions repeat: decode each once.
_TEXT: dict[bytes, str] = {}


def _text(raw: bytes) -> str:
    text = _TEXT.get(raw)
    if text is None:
        text = raw.decode("latin-1")
        if len(_TEXT) < 256:
            _TEXT[raw] = text
    return text


def _host_and_port(host: str) -> tuple[str, str | None]:
    """
    Split a C{Host} header into name and optional port, IPv6-literal aware.
    """
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            rest = host[end + 1 :]
            return host[: end + 1], rest[1:] if rest.startswith(":") else None
    name, sep, port = host.partition(":")
    return name, port if sep else None


def _address(address: object) -> tuple[str, str]:
    """
    A peer or host address as (host, port) strings; empty for UNIX sockets
    and other addresses without an IP (Twisted's own WSGI resource crashes
    there).
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host, str(address.port)
    return "", ""


class _LastAddress:
    """
    The last address seen and its (host, port) strings: a connection's
    requests share their address objects (see
    L{txawsgi.site.AWSGIChannel.getPeer}), so most requests skip the split.
    One tuple, so a reader never sees an address with another's strings.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[object, tuple[str, str]] = (None, ("", ""))

    def split(self, address: object) -> tuple[str, str]:
        last = self._last
        if last[0] is address:
            return last[1]
        split = _address(address)
        self._last = (address, split)
        return split


_CLIENT = _LastAddress()
_LOCAL = _LastAddress()


def build_environ(
    request: Request,
    *,
    input: Any,
    errors: Any,
    multithread: bool,
    file_wrapper: Callable[..., Any],
    multiprocess: bool = False,
) -> dict[str, Any]:
    """
    Build the environ for C{request}.

    C{SCRIPT_NAME} is the path that led to the resource (C{request.prepath})
    and C{PATH_INFO} the rest (C{request.postpath}); both are percent-decoded
    as CGI requires.

    @param input: the object to install as C{wsgi.input}.
    @param errors: the object to install as C{wsgi.errors}.
    @param multithread: whether the application runs in a threadpool.
    @param multiprocess: whether other processes serve the same application.
    @param file_wrapper: the C{wsgi.file_wrapper} callable.
    """
    prepath = request.prepath
    postpath = request.postpath
    uri: str = request.uri.decode("latin-1")
    query = uri.partition("?")[2]
    scheme = "https" if request.isSecure() else "http"

    shared = (multithread, multiprocess, file_wrapper)
    base = _BASES.get(shared)
    if base is None:
        base = {
            "wsgi.version": (1, 0),
            "wsgi.multithread": multithread,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": file_wrapper,
        }
        if len(_BASES) < 64:
            _BASES[shared] = base
    environ: dict[str, Any] = base.copy()
    method = request.method
    environ["REQUEST_METHOD"] = _TEXT.get(method) or _text(method)
    environ["SCRIPT_NAME"] = ("/" + b"/".join(prepath).decode("latin-1")) if prepath else ""
    environ["PATH_INFO"] = ("/" + b"/".join(postpath).decode("latin-1")) if postpath else ""
    environ["QUERY_STRING"] = query
    environ["REQUEST_URI"] = environ["RAW_URI"] = uri
    protocol = request.clientproto
    environ["SERVER_PROTOCOL"] = _TEXT.get(protocol) or _text(protocol)
    environ["wsgi.url_scheme"] = scheme
    environ["wsgi.input"] = input
    environ["wsgi.errors"] = errors

    keys = _keys
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = keys.get(name, _UNSEEN)
        if key is _UNSEEN:
            key = _environ_key(name)
        if key is None:
            continue
        if len(values) == 1:
            environ[key] = values[0].decode("latin-1")
        else:
            separator = _SEPARATOR.get(name.lower(), ", ")
            environ[key] = separator.join(v.decode("latin-1") for v in values)

    environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = _CLIENT.split(request.getClientAddress())
    local_host, local_port = _LOCAL.split(request.getHost())
    host_header = environ.get("HTTP_HOST")
    if host_header:
        split = _HOSTS.get(host_header)
        if split is None:
            split = _host_and_port(host_header)
            if len(_HOSTS) < 256:
                _HOSTS[host_header] = split
        server_name, host_port = split
    else:
        server_name, host_port = local_host, None
    environ["SERVER_NAME"] = server_name or "localhost"
    environ["SERVER_PORT"] = local_port or host_port or _DEFAULT_PORT[scheme]
    return environ


class ErrorStream:
    """
    C{wsgi.errors}: a text stream whose lines go to C{twisted.logger}.

    Partial lines are held until a newline or C{flush()}, so one C{print}
    becomes one log event.
    """

    __slots__ = ("_log", "_partial")

    def __init__(self, log: Any) -> None:
        self._log = log
        self._partial = ""

    def write(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors takes str, not {type(text).__name__}")
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._log.error("wsgi.errors: {line}", line=line)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            line, self._partial = self._partial, ""
            self._log.error("wsgi.errors: {line}", line=line)


__all__ = ["build_environ", "ErrorStream"]
