"""
Conformance replay of external request corpora against C{twistd awsgi}.

gunicorn 23.0.0's C{tests/requests/invalid} and C{tests/requests/valid}, and
waitress 3.0.2's request-parser tests, are fetched from PyPI at test time
(see L{tests._corpus}; skipped only when PyPI is unreachable) and replayed
over real sockets, each in several ways (all at once, line by line, in
random pieces, byte by byte for short ones), against C{twistd -n awsgi}
child processes serving L{tests.abuseapps.echo}:

 - every invalid request gets a 4xx/5xx (C{414}/C{431} for the limit
   cases) or a closed connection, and never reaches the application: the
   servers for invalid cases must record no application call at all;
 - every valid request is served, and the application sees what gunicorn's
   expectation says (method, target, version, headers, body) -- or the case
   is listed below with the reason txawsgi refuses it.

A case's gunicorn configuration maps to C{twistd awsgi} options (gunicorn's
defaults included: C{--limit-request-line 4094}); C{proxy_protocol} to a
C{haproxy:} endpoint.  The figures go to C{corpus-report.json} in the test's
working directory and to the test log.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from . import _corpus
from ._corpus import Case
from ._production import twistd_awsgi
from .support import ParseError, RawClient, WaitTimeout, free_port, parse_response, sleep

_log = Logger()

#: Valid cases txawsgi refuses on purpose, with the reason.
REFUSED = {
    "gunicorn/valid/009": "Transfer-Encoding (identity) together with Content-Length: RFC 9112 section 6.1 lets a server refuse it, and it is a request-smuggling vector",
    "gunicorn/valid/025": "the gzip transfer coding is not implemented (501, RFC 9112 section 6.1)",
    "gunicorn/valid/025_line": "the gzip transfer coding is not implemented (501, RFC 9112 section 6.1)",
    "gunicorn/valid/027": "raw non-ASCII bytes in the request target (RFC 3986 wants them percent-encoded)",
    "gunicorn/valid/028": "whitespace between a field name and its colon: RFC 9112 section 5.1 says MUST reject (gunicorn accepts it only with strip_header_spaces)",
    "gunicorn/valid/031compat": "a lower-case method (gunicorn refuses it too, unless permit_unconventional_http_method)",
    "gunicorn/valid/031compat2": "a lower-case method (gunicorn refuses it too, unless permit_unconventional_http_method)",
    "gunicorn/valid/040": "Transfer_Encoding/Content_Length alias the framing headers for CGI-style gateways: refused (gunicorn's header_map=refuse)",
    "gunicorn/valid/040_compat": "Transfer_Encoding/Content_Length alias the framing headers for CGI-style gateways: refused (gunicorn's header_map=refuse)",
    "gunicorn/valid/compat_obs_fold": "obsolete line folding is refused (RFC 9112 section 5.2 allows it; gunicorn refuses it too unless permit_obsolete_folding)",
    "gunicorn/valid/compat_obs_fold_huge": "obsolete line folding is refused (RFC 9112 section 5.2 allows it; gunicorn refuses it too unless permit_obsolete_folding)",
    "waitress/test_parse_header_multiple_values_header_folded": "obsolete line folding is refused (RFC 9112 section 5.2)",
    "waitress/test_parse_header_multiple_values_header_folded_multiple": "obsolete line folding is refused (RFC 9112 section 5.2)",
}

#: Valid cases of which only the first requests are served, and why.
PARTIAL = {
    "gunicorn/valid/022": (1, "HTTP/1.0 keep-alive is not honoured (optional, RFC 9112 section 9.3): the first request is served, then the connection closes"),
}

#: Valid cases whose file ends before the message does (gunicorn's parser
#: reads them to EOF): the server waits; the replay then completes them.
INCOMPLETE = {
    "gunicorn/valid/029": "the chunked body lacks its final CRLF",
    "gunicorn/valid/030": "the chunked body lacks its final CRLF",
    "gunicorn/valid/099": "the body is shorter than its Content-Length (padded with spaces)",
}

#: Invalid cases that do not apply to txawsgi, and why (still replayed).
NOT_APPLICABLE = {
    "gunicorn/invalid/019": "X-Forwarded-Proto and X-Forwarded-Ssl disagree: txawsgi does not read X-Forwarded-Ssl, so there is no conflict (served)",
}

#: What gunicorn options become, for C{twistd awsgi}.
_OPTIONS = {
    "limit_request_line": "--limit-request-line",
    "limit_request_fields": "--limit-request-fields",
    "limit_request_field_size": "--limit-request-field-size",
}

#: gunicorn's defaults where they differ from txawsgi's.
_GUNICORN_DEFAULTS = {"limit_request_line": 4094}

#: Statuses for the reference parser's errors (others: any 4xx/5xx).
_STATUS = {"LimitRequestLine": {414}, "LimitRequestHeaders": {431, 400}}

MODES = ("whole", "lines", "pieces", "bytes")


def server_key(case: Case) -> Tuple[Tuple[str, ...], bool]:
    """
    The C{twistd awsgi} options a case needs, and whether it needs a
    PROXY-protocol endpoint.
    """
    cfg = dict(_GUNICORN_DEFAULTS)
    cfg.update(case.cfg)
    args: List[str] = []
    for key, option in _OPTIONS.items():
        if key in cfg:
            args += [option, str(cfg[key])]
    return tuple(args), bool(cfg.get("proxy_protocol"))


def pieces(data: bytes, mode: str, seed: str) -> List[bytes]:
    if mode == "whole":
        return [data]
    if mode == "lines":
        parts = data.split(b"\r\n")
        return [p + b"\r\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(15, len(data) - 1))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def modes_for(case: Case) -> List[str]:
    return [m for m in MODES if m != "bytes" or len(case.data) <= 300]


class CorpusServer:
    """
    One C{twistd awsgi} serving L{tests.abuseapps.echo}, recording its
    application calls in a file.
    """

    def __init__(self, testcase: TestCase, args: Tuple[str, ...], proxy: bool, kind: str) -> None:
        self.port = free_port()
        self.calls_path = os.path.abspath(f"calls-{kind}-{self.port}.jsonl")
        open(self.calls_path, "w").close()
        listen = f"tcp:{self.port}:interface=127.0.0.1"
        if proxy:
            listen = "haproxy:" + listen
        self.process = twistd_awsgi(
            testcase,
            "--app", "tests.abuseapps:echo", "--listen", listen, "--header-timeout", "10", *args,
            env={"TXAWSGI_TEST_CALLS": self.calls_path},
        )

    def calls(self) -> List[Dict[str, Any]]:
        with open(self.calls_path) as f:
            return [json.loads(line) for line in f if line.strip()]


def expected_headers(request: Dict[str, Any]) -> Dict[str, str]:
    """
    The request headers an application must see, as txawsgi joins them;
    framing and connection headers are the server's.
    """
    joined: Dict[str, str] = {}
    for name, value in request.get("headers", []):
        name = name.upper()
        if name in ("TRANSFER-ENCODING", "CONTENT-LENGTH", "CONNECTION", "KEEP-ALIVE") or "_" in name:
            continue
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


def compare(case: Case, expected: Dict[str, Any], seen: Dict[str, Any], prefix_body: bool) -> List[str]:
    """
    How what the application saw differs from what the corpus expects.
    """
    problems = []
    if not expected:  # waitress: served is all it says
        return problems
    uri = expected["uri"]
    want = {
        "method": expected["method"],
        "uri": uri["raw"].partition("#")[0],
        "query": uri["query"],
        "protocol": "HTTP/%d.%d" % expected["version"],
    }
    for key, value in want.items():
        if seen[key] != value:
            problems.append(f"{key}: {seen[key]!r} != {value!r}")
    headers = dict(seen["headers"])
    for name, value in expected_headers(expected).items():
        if headers.get(name) != value:
            problems.append(f"header {name}: {headers.get(name)!r} != {value!r}")
    body = expected.get("body", b"")
    if isinstance(body, str):
        body = body.encode("latin-1")
    got = seen["body"].encode("latin-1")
    if (got[: len(body)] if prefix_body else got) != body:
        problems.append(f"body: {got[:60]!r}... ({len(got)} bytes) != {body[:60]!r}... ({len(body)} bytes)")
    return problems


class CorpusReplayTests(TestCase):
    """
    The replay; one test, so the corpora are fetched and the servers
    started once.
    """

    timeout = 240

    def setUp(self) -> None:
        paths = _corpus.sdists()
        self.cases = _corpus.gunicorn_cases(paths["gunicorn"])
        waitress, self.waitress_skipped = _corpus.waitress_cases(paths["waitress"])
        self.cases += waitress

    async def replay(self, server: CorpusServer, case: Case, mode: str) -> Dict[str, Any]:
        """
        Send one case one way; return what came back.
        """
        client = await RawClient.connect(("127.0.0.1", server.port), testcase=self)
        parts = pieces(case.data, mode, f"{case.name}/{mode}")
        for i, part in enumerate(parts):
            if client.closed:
                break
            client.send(part)
            if len(parts) > 1 and i < len(parts) - 1:
                # The next reactor turn: each piece leaves in a write of its own.
                await sleep(0 if mode == "bytes" else 0.001)
        outcome: Dict[str, Any] = {"case": case.name, "mode": mode}
        if case.valid or case.name in NOT_APPLICABLE:
            served = max(len(case.requests), 1)
            if case.name in PARTIAL:
                served = PARTIAL[case.name][0]
            if case.name in INCOMPLETE:
                await sleep(0.3)
                outcome["waited"] = client.received == b"" and not client.closed
                rest = b"\r\n"
                if case.name == "gunicorn/valid/099":
                    head, _, body = case.data.partition(b"\r\n\r\n")
                    declared = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    rest = b" " * (declared - len(body))
                if not client.closed:
                    client.send(rest)
            if case.name in REFUSED:
                served = 0
            if served:
                try:
                    responses = await client.wait_for_responses(served, timeout=25)
                except (WaitTimeout, ParseError) as e:
                    outcome["error"] = str(e)[:300]
                    return outcome
                outcome["codes"] = [r.code for r in responses if not r.interim]
                outcome["seen"] = [json.loads(r.body) for r in responses if not r.interim and r.code == 200]
                await client.close()
                return outcome
        try:
            await client.wait_closed(timeout=25)
        except WaitTimeout as e:
            outcome["error"] = str(e)[:300]
            return outcome
        try:
            responses = parse_response(client.received, eof=True)
        except ParseError as e:
            outcome["error"] = f"unparseable answer: {e}"
            return outcome
        outcome["codes"] = [r.code for r in responses if not r.interim]
        outcome["seen"] = [json.loads(r.body) for r in responses if not r.interim and r.code == 200]
        return outcome

    def judge(self, case: Case, outcome: Dict[str, Any]) -> Optional[str]:
        """
        Why an outcome is wrong, or L{None}.
        """
        if "error" in outcome:
            return outcome["error"]
        codes = outcome["codes"]
        if case.name in INCOMPLETE and not outcome.get("waited"):
            return "answered before the message was complete"
        if not case.valid:
            if case.name in NOT_APPLICABLE:
                return None
            if any(code < 400 for code in codes):
                return f"invalid request answered {codes}"
            allowed = _STATUS.get(case.error or "")
            if allowed is not None and codes and codes[0] not in allowed:
                return f"answered {codes[0]}, expected one of {sorted(allowed)}"
            return None
        if case.name in REFUSED:
            if not codes or codes[0] < 400:
                return f"expected a refusal, got {codes}"
            return None
        served = PARTIAL[case.name][0] if case.name in PARTIAL else len(case.requests)
        if codes[:served] != [200] * served:
            return f"expected {served} x 200, got {codes}"
        problems = []
        for expected, seen in zip(case.requests, outcome["seen"]):
            problems += compare(case, expected, seen, prefix_body=case.name == "gunicorn/valid/099")
        return "; ".join(problems) or None

    async def test_replay(self) -> None:
        """
        Every case, every way, against the servers its configuration needs.
        """
        servers: Dict[Tuple[Tuple[str, ...], bool, bool], CorpusServer] = {}
        for case in self.cases:
            args, proxy = server_key(case)
            key = (args, proxy, case.valid or case.name in NOT_APPLICABLE)
            if key not in servers:
                servers[key] = CorpusServer(self, args, proxy, "valid" if key[2] else "invalid")
        for server in servers.values():
            await server.process.wait_for_output(b"txawsgi serving", timeout=30)

        jobs = []
        for case in self.cases:
            args, proxy = server_key(case)
            server = servers[(args, proxy, case.valid or case.name in NOT_APPLICABLE)]
            for mode in modes_for(case):
                jobs.append((case, server, mode))
        # At most 64 at a time, so a loaded machine does not starve the
        # byte-by-byte replays past the head timeout.
        limit = DeferredSemaphore(64)
        results = await DeferredList(
            [limit.run(self._job, case, server, mode) for case, server, mode in jobs], consumeErrors=True
        )
        outcomes = []
        failures = []
        for (case, server, mode), (ok, result) in zip(jobs, results):
            if not ok:
                failures.append(f"{case.name} [{mode}]: {result.getErrorMessage()}")
                continue
            outcomes.append(result)
            why = self.judge(case, result)
            if why is not None:
                failures.append(f"{case.name} [{mode}]: {why}")

        leaked = []
        for (args, proxy, valid), server in servers.items():
            if not valid:
                leaked += [f"{call['method']} {call['uri']}" for call in server.calls()]
        report = self.report(outcomes, leaked)
        with open("corpus-report.json", "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        _log.info("Corpus replay: {summary}", summary=json.dumps(report["summary"], sort_keys=True))

        logs = b"".join(server.process.output for server in servers.values())
        for bad in (b"Unhandled Error", b"Traceback (most recent call last)"):
            at = logs.find(bad)
            self.assertEqual(at, -1, logs[max(at - 500, 0) : at + 2500].decode(errors="replace"))
        self.assertEqual(leaked, [], "invalid requests reached the application")
        self.assertEqual(failures, [], "\n".join(failures))

    def _job(self, case: Case, server: CorpusServer, mode: str) -> Deferred[Dict[str, Any]]:
        return Deferred.fromCoroutine(self.replay(server, case, mode))

    def report(self, outcomes: List[Dict[str, Any]], leaked: List[str]) -> Dict[str, Any]:
        by_case: Dict[str, List[Dict[str, Any]]] = {}
        for outcome in outcomes:
            by_case.setdefault(outcome["case"], []).append(outcome)
        summary: Dict[str, Any] = {"replays": len(outcomes), "app_calls_from_invalid": len(leaked)}
        statuses: Dict[str, List[int]] = {}
        for source in ("gunicorn", "waitress"):
            cases = [c for c in self.cases if c.name.startswith(source + "/")]
            invalid = [c for c in cases if not c.valid]
            valid = [c for c in cases if c.valid]
            refused = [
                c for c in invalid
                if c.name not in NOT_APPLICABLE and all(self.judge(c, o) is None for o in by_case.get(c.name, []))
            ]
            served = [
                c for c in valid
                if c.name not in REFUSED and all(self.judge(c, o) is None for o in by_case.get(c.name, []))
            ]
            summary[source] = {
                "invalid": len(invalid),
                "invalid_refused": len(refused),
                "invalid_not_applicable": len([c for c in invalid if c.name in NOT_APPLICABLE]),
                "valid": len(valid),
                "valid_served": len(served),
                "valid_refused_with_reason": len([c for c in valid if c.name in REFUSED]),
                "valid_partial": len([c for c in valid if c.name in PARTIAL]),
            }
            for c in cases:
                codes = by_case.get(c.name, [{}])[0].get("codes")
                statuses[c.name] = codes
        summary["waitress_not_replayed"] = len(self.waitress_skipped)
        return {
            "summary": summary,
            "statuses": statuses,
            "refused_valid": REFUSED,
            "partial": {k: v[1] for k, v in PARTIAL.items()},
            "incomplete": INCOMPLETE,
            "not_applicable": NOT_APPLICABLE,
            "waitress_not_replayed": self.waitress_skipped,
        }
