"""
Property-based tests (hypothesis) of the controller over real connections.

Each example is one request whose controller is driven by a random program,
partly from the reactor thread and partly, concurrently, from a worker
thread: C{put} of various sizes, C{on_get} of the request body the client
sends in pieces, C{on_drain}, the client pausing and resuming its reading
(so the server's transport pauses the engine), sleeps, and an ending:
C{finish} from either thread (racing the other's puts or not) or the client
disconnecting at some step.  Invariants:

 - the client receives exactly the bytes put before C{finish} (every
   C{put} that returned before C{finish} was called), each source's in the
   order it put them, nothing twice, nothing after the end; when the client
   left, what it got is such a sequence cut short;
 - C{on_get} delivers a prefix of the body sent, in order;
 - callbacks run in the reactor thread, never inside the call that
   registered them nor inside another callback, and none after C{on_close}
   (which runs exactly once, with the right reason);
 - nothing is left referenced after the request: the Twisted request is
   garbage (a weakref), and so are the controller, the exchange, its engine,
   response and body (counted with C{gc}: they have C{__slots__}).

C{TXAWSGI_PROPERTY_EXAMPLES} sets the number of examples (default 120).
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread
from twisted.trial.unittest import TestCase

from txawsgi import AWSGIResource
from txawsgi.errors import AlreadyFinished, BodyTruncated, ClientDisconnected
from txawsgi.controller import Controller
from txawsgi.engine import Engine
from txawsgi.exchange import Exchange
from txawsgi.input import StreamingBody
from txawsgi.response import Response
from txawsgi.site import AWSGISite

from .support import RawClient, eventually, listen, parse_response, sleep

_log = Logger()

#: The per-request objects that must all be garbage once a request ended.
_PER_REQUEST = (Controller, Engine, Exchange, Response, StreamingBody)

EXAMPLES = int(os.environ.get("TXAWSGI_PROPERTY_EXAMPLES", "120"))

SIZES = (0, 1, 50, 3000, 70000)
SOURCES = ("reactor", "thread")

_PAYLOAD = re.compile(rb"\[([RT])(\d{6})\|\.*\]")


def payload(source: str, seq: int, size: int) -> bytes:
    if size == 0:
        return b""
    head = b"[%s%06d|" % (source[0].upper().encode(), seq)
    return head + b"." * max(size - len(head) - 1, 0) + b"]"


_put = st.tuples(st.just("put"), st.sampled_from(SOURCES), st.sampled_from(SIZES))
step = st.one_of(
    _put,
    _put,
    _put,
    st.tuples(st.just("get"), st.sampled_from(SOURCES), st.integers(1, 5000)),
    st.tuples(st.just("drain"), st.sampled_from(SOURCES), st.just(0)),
    st.tuples(st.just("sleep"), st.sampled_from(SOURCES), st.integers(0, 12)),
    st.tuples(st.just("send"), st.just("client"), st.integers(1, 4000)),
    st.tuples(st.just("pause"), st.just("client"), st.just(0)),
    st.tuples(st.just("resume"), st.just("client"), st.just(0)),
)
ENDINGS = ("finish-after-thread", "finish-racing-thread", "finish-in-thread", "disconnect")
programs = st.tuples(st.lists(step, min_size=4, max_size=30), st.sampled_from(ENDINGS), st.integers(0, 30))


class Run:
    """
    What one example did and saw.
    """

    def __init__(self, program: List[Tuple[str, str, int]], ending: str, cut_at: int) -> None:
        self.program = program
        self.ending = ending
        self.cut_at = cut_at
        self.lock = threading.Lock()
        self.clock = 0
        self.ctrl: Any = None
        self.environ: Any = None
        self.called: Deferred[None] = Deferred()
        self.put_returned: Dict[bytes, int] = {}
        self.put_order: Dict[str, List[bytes]] = {"R": [], "T": []}
        self.rejected: List[bytes] = []
        self.finish_at: Optional[int] = None
        self.got: List[bytes] = []
        self.get_pending = False
        self.sent = b""
        self.violations: List[str] = []
        self.closes: List[Any] = []
        self.callbacks = 0
        self.in_call = 0
        self.in_callback = 0
        self.thread_done: Deferred[None] = Deferred()
        self.refs: List[Any] = []
        self.backpressure = 0

    def tick(self) -> int:
        with self.lock:
            self.clock += 1
            return self.clock

    # -- callbacks: check where and when they run ------------------------------

    def callback(self, name: str, f: Any = None) -> Any:
        def run(*args: Any) -> None:
            if not isInIOThread():
                self.violations.append(f"{name} ran outside the reactor thread")
            if self.in_call:
                self.violations.append(f"{name} ran inside the controller call that registered it")
            if self.in_callback:
                self.violations.append(f"{name} ran inside another callback")
            if self.closes and name != "on_close":
                self.violations.append(f"{name} ran after on_close")
            self.callbacks += 1
            self.in_callback += 1
            try:
                if f is not None:
                    f(*args)
            finally:
                self.in_callback -= 1

        return run

    def call(self, f: Any, *args: Any) -> Any:
        """
        Call a controller method, marking the reactor thread as inside it.
        """
        if isInIOThread():
            self.in_call += 1
            try:
                return f(*args)
            finally:
                self.in_call -= 1
        return f(*args)

    # -- the program's steps -------------------------------------------------------

    def put(self, source: str, size: int) -> None:
        key = source[0].upper()
        data = payload(source, len(self.put_order[key]), size)
        if data:
            self.put_order[key].append(data)
        try:
            writable = self.call(self.ctrl.put, data)
        except AlreadyFinished:
            self.rejected.append(data)
            return
        if data:
            self.put_returned[data] = self.tick()
        if writable is False and not self.ctrl.closed:
            self.backpressure += 1
            self.call(self.ctrl.on_drain, self.callback("on_drain"))

    def get(self, length: int) -> None:
        if self.get_pending or self.ctrl.closed:
            return
        self.get_pending = True

        def got(data: bytes) -> None:
            self.get_pending = False
            self.got.append(data)

        def lost(reason: BaseException) -> None:
            self.get_pending = False
            if not isinstance(reason, BodyTruncated):
                self.violations.append(f"on_get errback got {reason!r}")

        try:
            self.call(self.ctrl.on_get, length, self.callback("on_get", got), self.callback("on_get errback", lost))
        except Exception as e:
            self.violations.append(f"on_get raised {e!r}")

    def finish(self) -> None:
        self.finish_at = self.tick()
        self.call(self.ctrl.finish)

    def thread_main(self) -> None:
        try:
            for action, source, arg in self.program:
                if source != "thread":
                    continue
                if action == "put":
                    self.put("thread", arg)
                elif action == "get":
                    self.get(arg)
                elif action == "drain":
                    self.ctrl.on_drain(self.callback("on_drain"))
                elif action == "sleep":
                    time.sleep(arg / 1000)
            if self.ending == "finish-in-thread":
                self.finish()
        except Exception as e:
            self.violations.append(f"thread raised {e!r}")
        finally:
            reactor.callFromThread(self.thread_done.callback, None)


def _describe(error: BaseException) -> str:
    """
    A failure hypothesis found, with its falsifying example(s).
    """
    errors = list(getattr(error, "exceptions", [])) or [error]
    parts = []
    for e in errors:
        notes = "\n".join(getattr(e, "__notes__", []))
        parts.append(f"{type(e).__name__}: {e}\n{notes}")
    return "\n\n".join(parts)


class ControllerPropertyTests(TestCase):
    timeout = 600

    def app(self, environ: Dict[str, Any], start_response: Any) -> Any:
        run = self.runs[environ["PATH_INFO"]]
        ctrl = environ["awsgi.controller"](environ)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        run.ctrl, run.environ = ctrl, environ
        exchange = environ["awsgi.controller"].__self__
        run.refs = [weakref.ref(exchange.request)]
        ctrl.on_close(run.callback("on_close", run.closes.append))
        reactor.callLater(0, run.called.callback, None)
        return ctrl

    async def scenario(self, index: int, program: List[Tuple[str, str, int]], ending: str, cut_at: int) -> Run:
        path = f"/p{index}"
        run = self.runs[path] = Run(program, ending, cut_at)
        client = await RawClient.connect(self.server, rcvbuf=4096)
        client.send(b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode())
        await run.called
        thread = threading.Thread(target=run.thread_main, daemon=True)
        thread.start()
        cut = False
        reactor_steps = [s for s in program if s[1] != "thread"]
        for i, (action, source, arg) in enumerate(reactor_steps):
            if ending == "disconnect" and i == min(cut_at, len(reactor_steps)):
                await client.abort()
                cut = True
            if action == "put":
                run.put("reactor", arg)
            elif action == "get":
                run.get(arg)
            elif action == "drain":
                run.call(run.ctrl.on_drain, run.callback("on_drain"))
            elif action == "sleep":
                await sleep(arg / 1000)
            elif not client.closed:
                if action == "send":
                    chunk = bytes(((len(run.sent) + k) % 251 for k in range(arg)))
                    run.sent += chunk
                    client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                elif action == "pause":
                    client.pause_reading()
                elif action == "resume":
                    client.resume_reading()
        if ending == "disconnect" and not cut:
            await client.abort()
            cut = True
        if ending == "finish-racing-thread":
            run.finish()
        await run.thread_done
        thread.join()
        if ending == "finish-after-thread":
            run.finish()
        if ending == "disconnect":
            if not run.ctrl.closed:
                run.finish()
        else:
            if client.paused:
                client.resume_reading()
            responses = await client.wait_for_responses(1, timeout=20)
            run.body = responses[-1].body
        await eventually(lambda: run.closes, timeout=10)
        if ending == "disconnect":
            run.body = b""
            try:
                parsed = parse_response(client.received, eof=False)
                run.body = parsed[0].body if parsed else b""
            except AssertionError:
                run.violations.append(f"unparseable response: {client.received[:200]!r}")
        else:
            await client.close()
        # Let queued reactor calls run, then drop this test's references.
        await sleep(0.02)
        run.ctrl = run.environ = None
        del self.runs[path]
        gc.collect()
        run.leaked = [type(r()).__name__ for r in run.refs if r() is not None]
        # The exchange's own objects have __slots__ (no weakrefs): count them.
        run.leaked += [type(o).__name__ for o in gc.get_objects() if type(o) in _PER_REQUEST]
        return run

    def verify(self, run: Run) -> None:
        where = f"program={run.program!r} ending={run.ending} cut_at={run.cut_at}"
        assert not run.violations, f"{run.violations} -- {where}"
        assert len(run.closes) == 1, f"on_close ran {len(run.closes)} times -- {where}"
        assert not run.leaked, f"still referenced after the request: {run.leaked} -- {where}"
        pieces = [m.group(0) for m in _PAYLOAD.finditer(run.body)]
        rebuilt = b"".join(pieces)
        if run.ending == "disconnect":
            assert run.body.startswith(rebuilt), f"received bytes that are not whole payloads -- {where}"
            assert isinstance(run.closes[0], (ClientDisconnected, type(None))), where
        else:
            assert rebuilt == run.body, f"received bytes that are not payloads: {run.body[:200]!r} -- {where}"
            assert run.closes[0] is None, f"on_close got {run.closes[0]!r} -- {where}"
            assert run.finish_at is not None
            due = {data for data, at in run.put_returned.items() if at < run.finish_at}
            missing = due - set(pieces)
            assert not missing, f"{len(missing)} payload(s) put before finish were not delivered -- {where}"
        assert len(pieces) == len(set(pieces)), f"a payload was delivered twice -- {where}"
        for key, order in run.put_order.items():
            mine = [p for p in pieces if p[1:2] == key.encode()]
            positions = [order.index(p) for p in mine]
            assert positions == sorted(positions), f"{key} payloads out of order -- {where}"
        delivered = b"".join(run.got)
        assert run.sent.startswith(delivered), f"on_get delivered bytes the client did not send -- {where}"
        assert b"" not in run.got, f"on_get signalled the end of a body that did not end -- {where}"

    async def test_interleavings(self) -> None:
        self.runs: Dict[str, Run] = {}
        self.server = await listen(self, AWSGISite(AWSGIResource(reactor, self.app, stream_input=True)), sndbuf=8192)
        counter = [0]
        stats: Dict[str, int] = {}

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(programs)
        def check(example: Tuple[List[Tuple[str, str, int]], str, int]) -> None:
            program, ending, cut_at = example
            counter[0] += 1
            run = blockingCallFromThread(
                reactor,
                lambda: Deferred.fromCoroutine(self.scenario(counter[0], program, ending, cut_at)).addTimeout(60, reactor),
            )
            stats[ending] = stats.get(ending, 0) + 1
            for name, value in (
                ("backpressure", run.backpressure),
                ("rejected after finish", len(run.rejected)),
                ("callbacks", run.callbacks),
                ("body bytes read", sum(map(len, run.got))),
                ("payloads", len(run.put_returned)),
            ):
                stats[name] = stats.get(name, 0) + value
            self.verify(run)

        try:
            await deferToThread(check)
        except BaseException as e:
            self.fail(_describe(e))
        _log.info("Controller properties: {examples} examples, {stats}", examples=counter[0], stats=stats)
        self.assertGreaterEqual(counter[0], min(EXAMPLES, 20))
        self.assertEqual(self.runs, {})
