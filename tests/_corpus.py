"""
External request corpora for the conformance replay
(C{tests/test_hostile_corpus.py}): gunicorn's C{tests/requests/} and
waitress's parser tests, taken from their source distributions on PyPI at
test time (C{pip download --no-binary :all: --no-deps}, pinned versions) and
cached in the system temp directory under a name keyed by the versions.
Nothing from them is committed here.

gunicorn's conventions, decoded by L{decode_http} (our own decoder; what
C{tests/treq.py} does, conceptually): the real line breaks of a C{.http}
file are not part of the request; the four characters C{\\r\\n} stand for
CRLF, C{\\n} for a bare LF, C{\\t} for HTAB and C{\\0} for NUL; any other
backslash is an error.  The sibling C{.py} names the exception gunicorn
raises (invalid cases) or the request(s) it parses (valid cases), and may
set configuration with C{cfg.set(name, value)}; L{read_expectation} reads it
with L{ast}, without importing gunicorn.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SkipTest

GUNICORN = "23.0.0"
WAITRESS = "3.0.2"

#: Where the sdists are kept between runs.
CACHE = os.path.join(tempfile.gettempdir(), f"txawsgi-corpus-gunicorn-{GUNICORN}-waitress-{WAITRESS}")


def _pypi_reachable() -> Optional[str]:
    """
    L{None} if PyPI answers on port 443, else why not.
    """
    for host in ("pypi.org", "files.pythonhosted.org"):
        try:
            socket.create_connection((host, 443), timeout=10).close()
        except OSError as e:
            return f"{host}:443: {e}"
    return None


def sdists() -> Dict[str, str]:
    """
    The paths of the two sdists, downloaded into L{CACHE} if not there yet.

    @raise SkipTest: if PyPI cannot be reached.
    @raise RuntimeError: if pip fails although PyPI is reachable.
    """
    wanted = {
        "gunicorn": os.path.join(CACHE, f"gunicorn-{GUNICORN}.tar.gz"),
        "waitress": os.path.join(CACHE, f"waitress-{WAITRESS}.tar.gz"),
    }
    if all(os.path.exists(path) for path in wanted.values()):
        return wanted
    why = _pypi_reachable()
    if why is not None:
        raise SkipTest(f"PyPI is unreachable ({why}): cannot fetch the gunicorn/waitress request corpora")
    download = CACHE + f".partial-{os.getpid()}"
    os.makedirs(download, exist_ok=True)
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
        "--disable-pip-version-check", "-d", download, f"gunicorn=={GUNICORN}", f"waitress=={WAITRESS}",
    ]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout.decode(errors='replace')}"
            f"{done.stderr.decode(errors='replace')}"
        )
    os.makedirs(CACHE, exist_ok=True)
    for path in wanted.values():
        os.replace(os.path.join(download, os.path.basename(path)), path)
    return wanted


def members(sdist: str, prefix: str) -> Dict[str, bytes]:
    """
    The regular files under C{prefix} (relative to the sdist's top
    directory) of an sdist, by their path below C{prefix}.
    """
    found = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            top, _, rest = member.name.partition("/")
            if member.isfile() and rest.startswith(prefix):
                handle = tar.extractfile(member)
                assert handle is not None
                found[rest[len(prefix):]] = handle.read()
    return found


# -- gunicorn -----------------------------------------------------------------


def decode_http(raw: bytes) -> bytes:
    """
    The request bytes a gunicorn C{.http} file stands for.
    """
    text = raw.replace(b"\r\n", b"\n").replace(b"\n", b"")
    out = bytearray()
    i = 0
    while i < len(text):
        byte = text[i : i + 1]
        if byte != b"\\":
            out += byte
            i += 1
            continue
        escape = text[i + 1 : i + 2]
        if escape == b"r" and text[i + 2 : i + 4] == b"\\n":
            out += b"\r\n"
            i += 4
        elif escape == b"n":
            out += b"\n"
            i += 2
        elif escape == b"t":
            out += b"\t"
            i += 2
        elif escape == b"0":
            out += b"\0"
            i += 2
        else:
            raise ValueError(f"unexpected backslash escape at offset {i}: {text[i:i + 6]!r}")
    return bytes(out)


def split_uri(raw: str) -> Dict[str, str]:
    """
    gunicorn's C{uri()} helper, reduced to what the replay compares.
    """
    rest, _, fragment = raw.partition("#")
    path, _, query = rest.partition("?")
    return {"raw": raw, "path": path, "query": query, "fragment": fragment}


class _Evaluator:
    """
    Evaluates the small language of gunicorn's expectation files: literals,
    names, C{uri("...")}, C{Config()}, C{str.replace}.
    """

    def __init__(self) -> None:
        self.names: Dict[str, Any] = {}
        self.cfg: Dict[str, Any] = {}

    def run(self, source: str) -> None:
        for node in ast.parse(source).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    self.names[alias.asname or alias.name] = ("exception", alias.name)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.names[node.targets[0].id] = self.value(node.value)
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                call = node.value
                func = call.func
                if not (isinstance(func, ast.Attribute) and func.attr == "set" and isinstance(func.value, ast.Name) and func.value.id == "cfg"):
                    raise ValueError(f"unsupported statement: {ast.dump(node)}")
                key, value = (self.value(arg) for arg in call.args)
                self.cfg[key] = value
            else:
                raise ValueError(f"unsupported statement: {ast.dump(node)}")

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(self.value(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [self.value(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            return {self.value(k): self.value(v) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
        if isinstance(node, ast.Name):
            return self.names[node.id]
        if isinstance(node, ast.Call):
            func = node.func
            args = [self.value(arg) for arg in node.args]
            if isinstance(func, ast.Name) and func.id == "uri":
                return split_uri(args[0])
            if isinstance(func, ast.Name) and func.id == "Config":
                return ("config",)
            if isinstance(func, ast.Attribute) and func.attr in ("replace", "encode", "decode"):
                target = self.value(func.value)
                if isinstance(target, (str, bytes)):
                    return getattr(target, func.attr)(*args)
        raise ValueError(f"unsupported expression: {ast.dump(node)}")


@dataclass
class Case:
    """
    One corpus case.

    @ivar name: e.g. C{gunicorn/invalid/chunked_01}.
    @ivar data: the request bytes.
    @ivar error: the exception the reference parser raises (invalid cases).
    @ivar requests: the requests it parses (valid cases).
    @ivar cfg: the reference parser's configuration for the case.
    """

    name: str
    data: bytes
    error: Optional[str] = None
    requests: List[Dict[str, Any]] = field(default_factory=list)
    cfg: Dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.error is None


def read_expectation(source: str) -> Tuple[Optional[str], List[Dict[str, Any]], Dict[str, Any]]:
    """
    The exception name (or the requests) and the configuration a gunicorn
    C{.py} expectation file gives.
    """
    evaluator = _Evaluator()
    evaluator.run(source)
    expected = evaluator.names["request"]
    if isinstance(expected, tuple) and expected[:1] == ("exception",):
        return expected[1], [], evaluator.cfg
    if isinstance(expected, dict):
        expected = [expected]
    return None, list(expected), evaluator.cfg


def gunicorn_cases(sdist: str) -> List[Case]:
    files = members(sdist, "tests/requests/")
    cases = []
    for path in sorted(files):
        if not path.endswith(".http"):
            continue
        base = path[: -len(".http")]
        error, requests, cfg = read_expectation(files[base + ".py"].decode("utf-8"))
        cases.append(Case(f"gunicorn/{base}", decode_http(files[path]), error, requests, cfg))
    return cases


# -- waitress -------------------------------------------------------------------

#: Waitress parser tests that are not about bytes on the wire, and why.
WAITRESS_NOT_REPLAYED = {
    "test_parse_header_no_cr_in_headerplus": "checks parse_header()'s own argument contract (a header block without CRLF), not a request",
    "test_received_no_doublecr": "an incomplete head (waitress waits for more), nothing to judge",
    "test_received_nonsense_nothing": "bare CRLFs before any request: waitress's parser-state assertion only",
    "test_received_get_no_headers": "asserts waitress internals on a malformed request line (no error expected or checked)",
}


def waitress_cases(sdist: str) -> Tuple[List[Case], Dict[str, str]]:
    """
    The request bytes of waitress's C{HTTPRequestParser} tests that feed
    the parser a literal C{data = b"..."} and check the outcome: invalid if
    they expect C{ParsingError}, C{TransferEncodingNotImplemented} or a
    parser C{error}, valid if they expect none.  Tests that reconfigure the
    parser (C{self.parser.adj}) or poke at its state are left out, with the
    reason.

    Header blocks given to C{parse_header} get the blank line that ends a
    head; waitress's C{HTTP/8.4} (its C{parse_header} does not look at the
    version) becomes C{HTTP/1.1}, so the header line is what is judged.
    """
    source = members(sdist, "tests/test_parser.py")[""].decode("utf-8")
    tree = ast.parse(source)
    cases: List[Case] = []
    skipped: Dict[str, str] = dict(WAITRESS_NOT_REPLAYED)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and node.name == "TestHTTPRequestParser"):
            continue
        for func in node.body:
            if not isinstance(func, ast.FunctionDef) or not func.name.startswith("test_"):
                continue
            name = func.name
            if name in skipped:
                continue
            text = ast.get_source_segment(source, func) or ""
            data = None
            for stmt in func.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id == "data"
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, bytes)
                ):
                    data = stmt.value.value
                    break
            if data is None:
                skipped[name] = "no literal request bytes"
                continue
            if "self.parser.adj" in text or "body_rcv" in text or "completed = True" in text:
                skipped[name] = "reconfigures or pokes at the parser (limits, state)"
                continue
            if "except ParsingError" in text or "except TransferEncodingNotImplemented" in text or "assertIsInstance(self.parser.error" in text:
                error = "error"
            elif "parse_header(data)" in text or "assertIsNone(self.parser.error)" in text or "assertFalse(self.parser.error)" in text:
                error = None
            else:
                skipped[name] = "no outcome asserted"
                continue
            data = data.replace(b"HTTP/8.4", b"HTTP/1.1")
            if "parse_header(data)" in text:
                data += b"\r\n" if data.endswith(b"\r\n") else b"\r\n\r\n"
            cases.append(Case(f"waitress/{name}", data, error, [{}] if error is None else []))
    return cases, skipped
