"""
Reverse-proxy headers: who the client is, and which scheme and host it
asked for, when a trusted proxy says so.

Only a request whose peer is trusted (C{--forwarded-allow-ips}) is touched.
Then, from RFC 7239 C{Forwarded} if present, else from C{X-Forwarded-For},
C{X-Forwarded-Proto} and C{X-Forwarded-Host}:

 - the client is the rightmost address of the chain that is not itself a
   trusted proxy (each proxy appends the address it got the request from,
   so everything left of that may have been written by the client);
 - the scheme and host are those the proxy received: from the C{Forwarded}
   element of that client, or the rightmost C{X-Forwarded-Proto} /
   C{X-Forwarded-Host} value.

The request itself is rewritten (C{request.client}, L{Request.setHost}), so
C{REMOTE_ADDR}, C{wsgi.url_scheme}, C{HTTP_HOST}, C{SERVER_NAME} and
C{SERVER_PORT} follow, and so does the access log.  The headers stay in the
environ as they came.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.server import Request

__all__ = [
    "DEFAULT_TRUSTED",
    "Forwarded",
    "ProxyHeaders",
    "TrustedProxies",
    "parse_forwarded",
    "parse_node",
]

#: The default C{--forwarded-allow-ips}: a proxy on the same host.
DEFAULT_TRUSTED = "127.0.0.1"

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: A host as it may appear in Host or X-Forwarded-Host: a name or an IP
#: literal, with an optional port.  Anything else is ignored (it could smuggle
#: bytes into URLs the application builds).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::(\d{1,5}))?\Z")


def _ip(text: str) -> Optional[_IP]:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


class TrustedProxies:
    """
    The peers whose proxy headers are believed: a comma-separated list of
    IP addresses and networks (C{10.0.0.0/8}), C{unix} for peers on UNIX
    sockets, or C{*} for every peer.

    @raise ValueError: for an entry that is none of those.
    """

    def __init__(self, spec: Union[str, Iterable[str]] = DEFAULT_TRUSTED) -> None:
        entries = spec.split(",") if isinstance(spec, str) else list(spec)
        self.everyone = False
        self.unix = False
        self.networks: list[_Network] = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            if entry == "*":
                self.everyone = True
            elif entry.lower() == "unix":
                self.unix = True
            else:
                try:
                    self.networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(
                        f"{entry!r} is not an IP address, a network, 'unix' or '*'"
                    ) from None

    def trusts_ip(self, text: str) -> bool:
        """
        Whether the address C{text} (an IP literal) is a trusted proxy.
        """
        if self.everyone:
            return True
        ip = _ip(text)
        return ip is not None and any(ip in network for network in self.networks)

    def trusts(self, peer: object) -> bool:
        """
        Whether the connected peer C{peer} (a Twisted address) is trusted.
        """
        if isinstance(peer, (IPv4Address, IPv6Address)):
            return self.trusts_ip(peer.host)
        if isinstance(peer, UNIXAddress):
            return self.unix or self.everyone
        return False

    def __repr__(self) -> str:
        parts = [str(n) for n in self.networks]
        if self.unix:
            parts.append("unix")
        if self.everyone:
            parts.append("*")
        return f"<TrustedProxies {','.join(parts)}>"


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """
    Parse a C{Forwarded} field value (RFC 7239 section 4) into its elements,
    each a dict of lowercased parameter names to unquoted values.

    @raise ValueError: if it is malformed.
    """
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    i, n = 0, len(value)
    while i < n:
        char = value[i]
        if char in " \t;":
            i += 1
            continue
        if char == ",":
            elements.append(current)
            current = {}
            i += 1
            continue
        match = _TOKEN.match(value, i)
        if match is None or match.end() >= n or value[match.end()] != "=":
            raise ValueError(f"malformed Forwarded header at offset {i}: {value!r}")
        name = match.group().lower()
        i = match.end() + 1
        if i < n and value[i] == '"':
            i += 1
            chars = []
            while True:
                if i >= n:
                    raise ValueError(f"unterminated quoted string: {value!r}")
                char = value[i]
                if char == "\\" and i + 1 < n:
                    chars.append(value[i + 1])
                    i += 2
                elif char == '"':
                    i += 1
                    break
                else:
                    chars.append(char)
                    i += 1
            parsed = "".join(chars)
        else:
            start = i
            while i < n and value[i] not in ",; \t":
                i += 1
            parsed = value[start:i]
        if name in current:
            raise ValueError(f"parameter {name!r} repeated in one element: {value!r}")
        current[name] = parsed
    elements.append(current)
    return elements


def parse_node(node: str) -> Optional[tuple[str, int]]:
    """
    The IP address and port of a node as proxies write it: C{192.0.2.1},
    C{192.0.2.1:4711}, C{[2001:db8::1]:4711}, C{2001:db8::1}.  L{None} for
    anything that is not an IP (C{unknown}, an obfuscated C{_name}).  The
    port is 0 when absent.
    """
    node = node.strip()
    port = 0
    if node.startswith("["):
        end = node.find("]")
        if end == -1:
            return None
        host, rest = node[1:end], node[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif node.count(":") == 1:
        host, _, text = node.partition(":")
        if not text.isdigit():
            return None
        port = int(text)
    else:
        host = node
    ip = _ip(host)
    if ip is None or port > 65535:
        return None
    return str(ip), port


@dataclass(frozen=True)
class Forwarded:
    """
    What a trusted proxy says about a request; L{None} fields were not said.
    """

    client: Optional[tuple[str, int]] = None
    scheme: Optional[str] = None
    host: Optional[str] = None


def _values(request: Request, name: bytes) -> list[str]:
    """
    The comma-separated items of every C{name} header, in order.
    """
    items: list[str] = []
    for raw in request.requestHeaders.getRawHeaders(name, []):
        items.extend(item.strip() for item in raw.decode("latin-1").split(","))
    return [item for item in items if item]


def _chosen(nodes: list[Optional[tuple[str, int]]], trusted: TrustedProxies) -> int:
    """
    The index of the client in a proxy chain: the rightmost node that is not
    a trusted proxy (or not an IP at all); the leftmost if all are trusted.
    """
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        if node is None or not trusted.trusts_ip(node[0]):
            return index
    return 0


def _scheme(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    value = value.strip().lower()
    return value if value in ("http", "https") else None


def _host(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    value = value.strip()
    return value if _HOST.match(value) else None


def read_forwarded(request: Request, trusted: TrustedProxies) -> Forwarded:
    """
    What the proxy headers of C{request} say, assuming its peer is trusted.
    A malformed C{Forwarded} header is ignored as a whole.
    """
    forwarded = request.requestHeaders.getRawHeaders(b"forwarded")
    if forwarded:
        try:
            elements = parse_forwarded(", ".join(v.decode("latin-1") for v in forwarded))
        except ValueError:
            return Forwarded()
        nodes = [parse_node(e["for"]) if "for" in e else None for e in elements]
        index = _chosen(nodes, trusted)
        element = elements[index]
        return Forwarded(nodes[index], _scheme(element.get("proto")), _host(element.get("host")))
    chain = [parse_node(item) for item in _values(request, b"x-forwarded-for")]
    client = chain[_chosen(chain, trusted)] if chain else None
    protos = _values(request, b"x-forwarded-proto")
    hosts = _values(request, b"x-forwarded-host")
    return Forwarded(
        client,
        _scheme(protos[-1]) if protos else None,
        _host(hosts[-1]) if hosts else None,
    )


class ProxyHeaders:
    """
    Rewrite requests from trusted proxies to show the client's view.
    """

    def __init__(self, trusted: TrustedProxies) -> None:
        self.trusted = trusted

    def apply(self, request: Request) -> bool:
        """
        If C{request}'s peer is trusted, make its client address, scheme and
        host the ones its proxy headers give.

        @return: whether the peer was trusted.
        """
        if not self.trusted.trusts(request.getClientAddress()):
            return False
        said = read_forwarded(request, self.trusted)
        if said.client is not None:
            host, port = said.client
            address = IPv6Address if ":" in host else IPv4Address
            request.client = address("TCP", host, port)
        if said.scheme is not None or said.host is not None:
            secure = said.scheme == "https" if said.scheme is not None else request.isSecure()
            value = said.host
            if value is None:
                header = request.getHeader(b"host")
                value = _host(header.decode("latin-1")) if header else None
            if value is None:
                value = request.getHost().host if isinstance(request.getHost(), (IPv4Address, IPv6Address)) else "localhost"
                if ":" in value:
                    value = f"[{value}]"
            match = _HOST.match(value)
            assert match is not None
            name, port_text = match.group(1), match.group(2)
            port = int(port_text) if port_text else (443 if secure else 80)
            request.setHost(name.encode("latin-1"), port, ssl=secure)
        return True
