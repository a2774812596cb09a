"""
Tests for L{txawsgi.engine}: the iteration engine's state machine, backoff,
wake-up, push-producer behaviour and cooperative scheduling.

The first classes drive an L{Engine} directly with a L{Clock}, a
deterministic L{Cooperator} and a fake response, so time and scheduling are
exact.  The last ones serve real requests over TCP on 127.0.0.1 and capture
the L{Engine} each exchange builds, to check which final state real
scenarios reach.
"""

from __future__ import annotations

import io
import threading
from typing import Any, Iterator, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

import txawsgi.exchange
from txawsgi import AWSGIResource
from txawsgi.engine import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    EAGER_STEPS,
    FINAL,
    Engine,
    Flow,
    Run,
    _FLOW_EDGES,
    _RUN_EDGES,
)
from txawsgi.errors import IllegalTransition, InvalidBody
from txawsgi.states import Machine, edges

from .support import RawClient, eventually, listen, parse_response, request, sleep


# ---------------------------------------------------------------------------
# Fakes for driving an Engine directly
# ---------------------------------------------------------------------------


class FakeResponse:
    """
    What the engine needs from L{txawsgi.response.Response}, recorded.
    """

    def __init__(self) -> None:
        self.written: List[bytes] = []
        self.finished = 0
        self.failures: List[Failure] = []
        self.aborted = 0
        self.overflowed = False
        self.finish_error: Optional[Exception] = None
        self.events: List[str] = []
        self.producer: Optional[object] = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def finish(self) -> None:
        if self.finish_error is not None:
            raise self.finish_error
        self.finished += 1
        self.events.append("finish")

    def fail(self, reason: Failure) -> None:
        self.failures.append(reason)
        self.events.append("fail")

    def abort(self) -> None:
        self.aborted += 1
        self.events.append("abort")

    def attach(self, producer: object) -> None:
        self.producer = producer
        self.events.append("attach")


class Source:
    """
    A wake source (L{txawsgi.interfaces.IWakeSource}) whose idleness the test
    sets.
    """

    def __init__(self, idle: bool = True) -> None:
        self.idle = idle


class Closing:
    """
    An iterable over C{chunks} (callables are called and their result
    yielded; exceptions propagate) that records C{next()} times and
    C{close()}.
    """

    def __init__(self, clock: Clock, chunks: Iterator[Any], events: Optional[List[str]] = None) -> None:
        self._clock = clock
        self._chunks = chunks
        self.pulls: List[float] = []
        self.closed = 0
        self.events = events if events is not None else []

    def __iter__(self) -> "Closing":
        return self

    def __next__(self) -> Any:
        self.pulls.append(self._clock.seconds())
        chunk = next(self._chunks)
        if callable(chunk):
            return chunk()
        return chunk

    def close(self) -> None:
        self.closed += 1
        self.events.append("close")


def empties() -> Iterator[bytes]:
    while True:
        yield b""


class EngineHarness:
    """
    An L{Engine} on a L{Clock} with a cooperator that runs one step per
    reactor turn, so every step is visible.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.cooperator = Cooperator(
            terminationPredicateFactory=lambda: lambda: True,
            scheduler=lambda work: self.clock.callLater(0, work),
        )
        self.response = FakeResponse()
        self.ended: List[Run] = []
        self.engine = Engine(self.clock, self.cooperator, self.response, self._ended)

    def _ended(self, final: Run) -> None:
        self.ended.append(final)
        self.response.events.append(f"ended:{final.name}")

    def iterable(self, chunks: Any) -> Closing:
        return Closing(self.clock, iter(chunks), self.response.events)

    def run_until_idle(self, limit: float = 100.0) -> None:
        """
        Fire every scheduled call in time order until nothing is left or
        C{limit} seconds of clock time have passed; each call fires at its
        exact time.
        """
        clock = self.clock
        while True:
            calls = clock.getDelayedCalls()
            if not calls:
                return
            when = min(c.getTime() for c in calls)
            if when > limit:
                return
            clock.advance(max(0.0, when - clock.seconds()))

    def turn(self) -> None:
        """
        Run what is due now (zero-delay calls, cooperator steps).
        """
        self.clock.advance(0)


# ---------------------------------------------------------------------------
# State machine
# ---------------------------------------------------------------------------


class MachineTests(SynchronousTestCase):
    """
    L{txawsgi.states.Machine} and the engine's transition tables.
    """

    def test_illegalTransitionRaises(self) -> None:
        machine = Machine(Run.CALLING, _RUN_EDGES)
        with self.assertRaises(IllegalTransition) as caught:
            machine.to(Run.WAITING)
        self.assertEqual(str(caught.exception), "CALLING -> WAITING")
        self.assertIs(machine.state, Run.CALLING)

    def test_legalPath(self) -> None:
        machine = Machine(Run.CALLING, _RUN_EDGES)
        for state in (Run.RUNNING, Run.PULLING, Run.WAITING, Run.RUNNING, Run.PULLING, Run.DONE):
            machine.to(state)
        self.assertIs(machine.state, Run.DONE)

    def test_finalStatesHaveNoExit(self) -> None:
        self.assertEqual(FINAL, {Run.DONE, Run.FAILED, Run.ABORTED})
        for final in FINAL:
            self.assertEqual(_RUN_EDGES[final], frozenset())
            for target in Run:
                machine = Machine(final, _RUN_EDGES)
                self.assertRaises(IllegalTransition, machine.to, target)

    def test_everyFinalStateReachable(self) -> None:
        """
        Each final state has an edge leading into it from a live state.
        """
        for final in FINAL:
            self.assertTrue(any(final in targets for state, targets in _RUN_EDGES.items() if state not in FINAL))

    def test_cancellingOnlyEnds(self) -> None:
        self.assertEqual(_RUN_EDGES[Run.CANCELLING], {Run.FAILED, Run.ABORTED})

    def test_flowToggles(self) -> None:
        machine = Machine(Flow.FLOWING, _FLOW_EDGES)
        self.assertRaises(IllegalTransition, machine.to, Flow.FLOWING)
        machine.to(Flow.PAUSED)
        self.assertRaises(IllegalTransition, machine.to, Flow.PAUSED)
        machine.to(Flow.FLOWING)

    def test_edgesRequiresEveryState(self) -> None:
        with self.assertRaises(ValueError) as caught:
            edges(Flow, {Flow.FLOWING: {Flow.PAUSED}})
        self.assertIn("PAUSED", str(caught.exception))

    def test_illegalTransitionIsAWSGIError(self) -> None:
        from txawsgi.errors import AWSGIError

        self.assertTrue(issubclass(IllegalTransition, AWSGIError))
        self.assertTrue(issubclass(IllegalTransition, RuntimeError))


# ---------------------------------------------------------------------------
# Engine driven directly
# ---------------------------------------------------------------------------


class EngineFinalStateTests(SynchronousTestCase):
    """
    Every final state of an L{Engine}, reached in the scenario it stands for,
    and only once.
    """

    def setUp(self) -> None:
        self.h = EngineHarness()

    def test_done(self) -> None:
        h = self.h
        it = h.iterable([b"a", b"b"])
        h.engine.start(it)
        h.run_until_idle()
        self.assertIs(h.engine.state, Run.DONE)
        self.assertEqual(h.response.written, [b"a", b"b"])
        self.assertEqual(h.ended, [Run.DONE])
        self.assertEqual(it.closed, 1)
        # The response is finished, then ended is told, then the iterable is
        # closed (PEP 3333: close after the last chunk was handled).
        self.assertEqual(h.response.events, ["finish", "ended:DONE", "close"])

    def test_shortResponseWithinStart(self) -> None:
        """
        A response of fewer than L{EAGER_STEPS} chunks is complete when
        C{start()} returns, before the cooperator runs.
        """
        h = self.h
        h.engine.start(h.iterable([b"x"] * (EAGER_STEPS - 2)))
        self.assertIs(h.engine.state, Run.DONE)
        self.assertEqual(len(h.response.written), EAGER_STEPS - 2)

    def test_listWrittenAtOnce(self) -> None:
        """
        A list is written within C{start()}, however long, with its empty
        strings skipped (nothing would wake the engine for them) and no
        producer registered (the response ended before it could matter).
        """
        h = self.h
        chunks = [b"a", b"", b"b"] * (EAGER_STEPS * 4)
        h.engine.start(chunks)
        self.assertIs(h.engine.state, Run.DONE)
        self.assertEqual(h.response.written, [b"a", b"b"] * (EAGER_STEPS * 4))
        self.assertEqual(h.response.events, ["finish", "ended:DONE"])
        self.assertIsNone(h.response.producer)

    def test_listWithNonBytesFails(self) -> None:
        """
        A tuple holding a C{str} fails the response precisely; what came
        before it was written.
        """
        h = self.h
        h.engine.start((b"a", "b"))
        self.assertIs(h.engine.state, Run.FAILED)
        self.assertEqual(h.response.written, [b"a"])
        [failure] = h.response.failures
        self.assertIsInstance(failure.value, InvalidBody)

    def test_generatorAttachesProducerWhenLong(self) -> None:
        """
        An iterable that outlives the eager steps registers the engine as
        the transport's producer, to follow the client's pace.
        """
        h = self.h
        h.engine.start(h.iterable([b"x"] * (EAGER_STEPS * 3)))
        self.assertIs(h.response.producer, h.engine)
        h.run_until_idle()
        self.assertIs(h.engine.state, Run.DONE)

    def test_longResponseHandedToCooperator(self) -> None:
        h = self.h
        h.engine.start(h.iterable([b"x"] * 50))
        self.assertEqual(len(h.response.written), EAGER_STEPS)
        self.assertIs(h.engine.state, Run.RUNNING)
        h.turn()
        self.assertEqual(len(h.response.written), 50)
        self.assertIs(h.engine.state, Run.DONE)

    def test_failedWhenIterableRaises(self) -> None:
        h = self.h

        def boom() -> bytes:
            raise ZeroDivisionError("boom")

        it = h.iterable([b"a", boom, b"never"])
        h.engine.start(it)
        h.run_until_idle()
        self.assertIs(h.engine.state, Run.FAILED)
        [failure] = h.response.failures
        failure.trap(ZeroDivisionError)
        self.assertEqual(h.response.written, [b"a"])
        self.assertEqual(h.ended, [Run.FAILED])
        self.assertEqual(it.closed, 1)
        self.assertEqual(h.response.finished, 0)

    def test_failedWhenIterCallRaises(self) -> None:
        class NotIterable:
            def __iter__(self) -> Any:
                raise KeyError("no")

            def close(self) -> None:
                self.closed = True

        h = self.h
        it = NotIterable()
        h.engine.start(it)
        self.assertIs(h.engine.state, Run.FAILED)
        h.response.failures[0].trap(KeyError)
        self.assertTrue(it.closed)

    def test_failedOnNonBytesChunk(self) -> None:
        h = self.h
        h.engine.start(h.iterable([b"ok", "text"]))
        self.assertIs(h.engine.state, Run.FAILED)
        [failure] = h.response.failures
        self.assertIsInstance(failure.value, InvalidBody)
        self.assertIn("str", str(failure.value))

    def test_bytesSubclassAccepted(self) -> None:
        class B(bytes):
            pass

        h = self.h
        h.engine.start(h.iterable([B(b"sub")]))
        self.assertIs(h.engine.state, Run.DONE)
        self.assertEqual(h.response.written, [b"sub"])
        self.assertIs(type(h.response.written[0]), bytes)

    def test_failedWhenFinishRaises(self) -> None:
        h = self.h
        h.response.finish_error = ValueError("no start_response")
        h.engine.start(h.iterable([]))
        self.assertIs(h.engine.state, Run.FAILED)
        h.response.failures[0].trap(ValueError)
        self.assertEqual(h.ended, [Run.FAILED])

    def test_overflowEndsEarly(self) -> None:
        h = self.h

        class Overflowing(FakeResponse):
            def write(self, data: bytes) -> None:
                super().write(data)
                self.overflowed = len(self.written) == 2

        h.response = Overflowing()
        h.engine = Engine(h.clock, h.cooperator, h.response, h._ended)
        it = h.iterable([b"1", b"2", b"3"])
        h.engine.start(it)
        self.assertIs(h.engine.state, Run.DONE)
        self.assertEqual(h.response.written, [b"1", b"2"])
        self.assertEqual(it.closed, 1)

    def test_abortedWhileWaiting(self) -> None:
        h = self.h
        it = h.iterable(empties())
        h.engine.start(it)
        self.assertIs(h.engine.state, Run.WAITING)
        # The backoff timer only: asleep from its eager steps, the engine is
        # parked, with no cooperator task until woken.
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.engine.abort()
        self.assertIs(h.engine.state, Run.ABORTED)
        self.assertEqual(h.response.aborted, 1)
        self.assertEqual(h.ended, [Run.ABORTED])
        self.assertEqual(it.closed, 1)
        pulls = len(it.pulls)
        h.run_until_idle()
        # The backoff timer was cancelled and the task ended.
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(len(it.pulls), pulls)
        # Aborting again, or stopProducing, changes nothing.
        h.engine.abort()
        h.engine.stopProducing()
        self.assertEqual(h.ended, [Run.ABORTED])
        self.assertEqual(it.closed, 1)

    def test_stopProducingAborts(self) -> None:
        h = self.h
        h.engine.sources.append(Source(idle=True))
        h.engine.start(h.iterable(empties()))
        h.engine.stopProducing()
        self.assertIs(h.engine.state, Run.ABORTED)

    def test_abortedWhilePaused(self) -> None:
        h = self.h
        it = h.iterable([b"x"] * 100)
        h.engine.pauseProducing()
        h.engine.start(it)
        self.assertEqual(it.pulls, [])
        h.engine.abort()
        h.run_until_idle()
        self.assertIs(h.engine.state, Run.ABORTED)
        self.assertEqual(it.pulls, [])
        self.assertEqual(it.closed, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_abortedBeforeIterable(self) -> None:
        """
        The client left while the application callable ran (threadpool
        mode): the iterable it then returns is closed, never iterated.
        """
        h = self.h
        self.assertIs(h.engine.state, Run.CALLING)
        h.engine.abort()
        self.assertIs(h.engine.state, Run.ABORTED)
        self.assertEqual(h.ended, [Run.ABORTED])
        it = h.iterable([b"x"])
        h.engine.start(it)
        self.assertEqual(it.pulls, [])
        self.assertEqual(it.closed, 1)
        self.assertEqual(h.ended, [Run.ABORTED])

    def test_crashBeforeIterable(self) -> None:
        h = self.h
        h.engine.crash(Failure(ZeroDivisionError()))
        self.assertIs(h.engine.state, Run.FAILED)
        self.assertEqual(h.ended, [Run.FAILED])

    def test_crashWhileWaiting(self) -> None:
        h = self.h
        h.engine.sources.append(Source(idle=True))
        it = h.iterable(empties())
        h.engine.start(it)
        self.assertIs(h.engine.state, Run.WAITING)
        h.engine.crash(Failure(ZeroDivisionError()))
        self.assertIs(h.engine.state, Run.FAILED)
        h.response.failures[0].trap(ZeroDivisionError)
        self.assertEqual(it.closed, 1)
        h.run_until_idle()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_cancellingThenAborted(self) -> None:
        """
        The client leaves while a pull is in progress: the engine goes
        through CANCELLING and ends ABORTED once the pull returns; the chunk
        it returned is not written.
        """
        h = self.h
        seen: List[Run] = []

        def leave() -> bytes:
            h.engine.abort()
            seen.append(h.engine.state)
            return b"late"

        it = h.iterable([b"a", leave, b"never"])
        h.engine.start(it)
        self.assertEqual(seen, [Run.CANCELLING])
        self.assertIs(h.engine.state, Run.ABORTED)
        self.assertEqual(h.response.written, [b"a"])
        self.assertEqual(h.response.aborted, 1)
        self.assertEqual(h.ended, [Run.ABORTED])
        self.assertEqual(it.closed, 1)

    def test_cancellingThenAbortedWhenPullRaises(self) -> None:
        h = self.h

        def leaveAndRaise() -> bytes:
            h.engine.abort()
            raise ZeroDivisionError("after abort")

        h.engine.start(h.iterable([leaveAndRaise]))
        self.assertIs(h.engine.state, Run.ABORTED)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(h.response.failures, [])

    def test_cancellingThenFailed(self) -> None:
        """
        A controller callback crashes while a pull is in progress: the
        engine ends FAILED with that error once the pull returns.
        """
        h = self.h
        seen: List[Run] = []

        def crashMeanwhile() -> bytes:
            h.engine.crash(Failure(KeyError("callback")))
            seen.append(h.engine.state)
            return b"late"

        it = h.iterable([crashMeanwhile])
        h.engine.start(it)
        self.assertEqual(seen, [Run.CANCELLING])
        self.assertIs(h.engine.state, Run.FAILED)
        [failure] = h.response.failures
        failure.trap(KeyError)
        self.assertEqual(h.response.written, [])
        self.assertEqual(h.ended, [Run.FAILED])
        self.assertEqual(it.closed, 1)

    def test_crashAfterEndIsLogged(self) -> None:
        h = self.h
        h.engine.start(h.iterable([]))
        self.assertIs(h.engine.state, Run.DONE)
        h.engine.crash(Failure(ZeroDivisionError("late")))
        self.assertIs(h.engine.state, Run.DONE)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(h.ended, [Run.DONE])

    def test_startTwiceIsIllegal(self) -> None:
        h = self.h
        h.engine.start(h.iterable([b"x"] * 50))
        self.assertIs(h.engine.state, Run.RUNNING)
        self.assertRaises(IllegalTransition, h.engine.start, h.iterable([b"y"]))

    def test_crashBeforeIterableThenStart(self) -> None:
        """
        A controller callback failed while the application callable still
        ran (threadpool mode): the iterable it then returns is closed, never
        iterated, and no illegal transition is attempted.
        """
        h = self.h
        h.engine.crash(Failure(ZeroDivisionError()))
        it = h.iterable([b"x"])
        h.engine.start(it)
        self.assertIs(h.engine.state, Run.FAILED)
        self.assertEqual(it.pulls, [])
        self.assertEqual(it.closed, 1)
        self.assertEqual(h.ended, [Run.FAILED])

    def test_closeErrorLogged(self) -> None:
        h = self.h

        class BadClose:
            def __iter__(self) -> Iterator[bytes]:
                return iter([b"x"])

            def close(self) -> None:
                raise RuntimeError("close failed")

        h.engine.start(BadClose())
        self.assertIs(h.engine.state, Run.DONE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BackoffTests(SynchronousTestCase):
    """
    An iterable that yields C{b''} with no wake source waiting is retried
    after 1 ms, 2 ms, 4 ms... up to L{BACKOFF_MAX}; the delay starts over
    after a non-empty chunk.
    """

    def test_constants(self) -> None:
        self.assertEqual(BACKOFF_INITIAL, 0.001)
        self.assertEqual(BACKOFF_MAX, 1.0)

    def delays(self, pulls: List[float]) -> List[float]:
        return [round(b - a, 6) for a, b in zip(pulls, pulls[1:])]

    def test_exponential(self) -> None:
        h = EngineHarness()
        it = h.iterable(empties())
        h.engine.start(it)
        h.run_until_idle(limit=10.0)
        expected = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512]
        expected += [1.0] * 8
        self.assertEqual(self.delays(it.pulls)[: len(expected)], expected)
        # Over 10 s of clock time: 11 pulls to climb to the cap, then one a
        # second (a polling engine would pull thousands of times).
        self.assertEqual(len(it.pulls), 19)
        h.engine.abort()

    def test_resetAfterChunk(self) -> None:
        h = EngineHarness()
        it = h.iterable([b""] * 6 + [b"data"] + [b""] * 3 + [b"more"] + [b""] * 2)
        h.engine.start(it)
        h.run_until_idle()
        self.assertEqual(
            self.delays(it.pulls),
            # 6 empties (5 waits), then data follows the 6th wait; the delay
            # after the data starts again from 1 ms.
            [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0, 0.001, 0.002, 0.004, 0.0, 0.001, 0.002],
        )
        self.assertEqual(h.response.written, [b"data", b"more"])
        self.assertIs(h.engine.state, Run.DONE)

    def test_capAfterManyEmpties(self) -> None:
        h = EngineHarness()
        it = h.iterable(empties())
        h.engine.start(it)
        h.run_until_idle(limit=30.0)
        self.assertEqual(max(self.delays(it.pulls)), BACKOFF_MAX)
        self.assertEqual(self.delays(it.pulls)[-5:], [BACKOFF_MAX] * 5)
        h.engine.abort()

    def test_noTimerWhileSourceIdle(self) -> None:
        """
        With an idle wake source the engine sleeps without a timer: no
        pulls at all until L{Engine.wake}.
        """
        h = EngineHarness()
        source = Source(idle=True)
        h.engine.sources.append(source)
        it = h.iterable(empties())
        h.engine.start(it)
        h.run_until_idle()
        self.assertEqual(len(it.pulls), 1)
        self.assertIs(h.engine.state, Run.WAITING)
        h.clock.advance(3600)
        self.assertEqual(len(it.pulls), 1)
        h.engine.wake()
        self.assertIs(h.engine.state, Run.RUNNING)
        h.turn()
        self.assertEqual(len(it.pulls), 2)
        self.assertIs(h.engine.state, Run.WAITING)
        h.engine.abort()

    def test_busySourceBacksOff(self) -> None:
        """
        If no source is idle (e.g. middleware buffers what the controller
        gave it), the empty chunk backs off instead of sleeping forever.
        """
        h = EngineHarness()
        h.engine.sources.append(Source(idle=False))
        it = h.iterable(empties())
        h.engine.start(it)
        h.run_until_idle(limit=0.1)
        self.assertEqual(self.delays(it.pulls)[:4], [0.001, 0.002, 0.004, 0.008])
        h.engine.abort()

    def test_wakeCancelsBackoffTimer(self) -> None:
        h = EngineHarness()
        it = h.iterable(empties())
        h.engine.start(it)
        h.run_until_idle(limit=1.0)
        self.assertIs(h.engine.state, Run.WAITING)
        pulls = len(it.pulls)
        timers = lambda: [c for c in h.clock.getDelayedCalls() if getattr(c.func, "__name__", "") == "wake"]
        self.assertEqual(len(timers()), 1)
        h.engine.wake()
        self.assertEqual(timers(), [])
        h.turn()
        self.assertEqual(len(it.pulls), pulls + 1)
        self.assertEqual(len(timers()), 1)
        h.engine.abort()
        self.assertEqual(timers(), [])
        h.turn()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_wakeWhilePullingSkipsSleep(self) -> None:
        """
        A wake that arrives while the engine is pulling makes the next
        C{b''} go on at once instead of sleeping (no lost wake-up).
        """
        h = EngineHarness()
        h.engine.sources.append(Source(idle=True))

        def wakeMeanwhile() -> bytes:
            h.engine.wake()
            return b""

        it = h.iterable([wakeMeanwhile, b"after"])
        h.engine.start(it)
        self.assertEqual(h.response.written, [b"after"])
        self.assertIs(h.engine.state, Run.DONE)

    def test_wakeIsIdempotentAndHarmlessWhenEnded(self) -> None:
        h = EngineHarness()
        h.engine.wake()  # CALLING: ignored
        self.assertIs(h.engine.state, Run.CALLING)
        h.engine.start(h.iterable([]))
        h.engine.wake()
        h.engine.wake()
        self.assertIs(h.engine.state, Run.DONE)


class ProducerTests(SynchronousTestCase):
    """
    The engine as the transport's push producer.
    """

    def test_noPullsWhilePaused(self) -> None:
        h = EngineHarness()
        it = h.iterable([b"x"] * 100)
        h.engine.start(it)
        h.engine.pauseProducing()
        self.assertTrue(h.engine.paused)
        pulls = len(it.pulls)
        h.run_until_idle()
        h.clock.advance(60)
        self.assertEqual(len(it.pulls), pulls)
        resumed: List[bool] = []
        h.engine.resumed = lambda: resumed.append(True)
        h.engine.resumeProducing()
        self.assertFalse(h.engine.paused)
        self.assertEqual(resumed, [True])
        h.run_until_idle()
        self.assertEqual(len(h.response.written), 100)
        self.assertIs(h.engine.state, Run.DONE)

    def test_pauseResumeIdempotent(self) -> None:
        h = EngineHarness()
        resumed: List[bool] = []
        h.engine.resumed = lambda: resumed.append(True)
        h.engine.resumeProducing()
        self.assertEqual(resumed, [])
        h.engine.pauseProducing()
        h.engine.pauseProducing()
        h.engine.resumeProducing()
        h.engine.resumeProducing()
        self.assertEqual(resumed, [True])

    def test_drained(self) -> None:
        h = EngineHarness()
        self.assertIsNone(h.engine.drained())
        h.engine.pauseProducing()
        first = h.engine.drained()
        second = h.engine.drained()
        self.assertIsInstance(first, Deferred)
        fired: List[Any] = []
        first.addCallback(fired.append)
        second.addCallback(fired.append)
        self.assertEqual(fired, [])
        h.engine.resumeProducing()
        self.assertEqual(fired, [None, None])

    def test_drainedReleasedByAbort(self) -> None:
        """
        A writer blocked on L{Engine.drained} is released when the exchange
        ends, and later calls do not block.
        """
        h = EngineHarness()
        h.engine.pauseProducing()
        waiting = h.engine.drained()
        fired: List[Any] = []
        waiting.addCallback(fired.append)
        h.engine.abort()
        self.assertEqual(fired, [None])
        self.assertIsNone(h.engine.drained())

    def test_sleepingSurvivesPause(self) -> None:
        """
        A wake while paused does not pull; the pull happens on resume.
        """
        h = EngineHarness()
        h.engine.sources.append(Source(idle=True))
        it = h.iterable([b"", b"data"])
        h.engine.start(it)
        self.assertIs(h.engine.state, Run.WAITING)
        h.engine.pauseProducing()
        h.engine.wake()
        h.run_until_idle()
        self.assertEqual(len(it.pulls), 1)
        h.engine.resumeProducing()
        h.run_until_idle()
        self.assertEqual(h.response.written, [b"data"])
        self.assertIs(h.engine.state, Run.DONE)


class CooperationTests(SynchronousTestCase):
    """
    Engines share one cooperator: a long iterable does not monopolise it.
    """

    def test_interleaved(self) -> None:
        clock = Clock()
        cooperator = Cooperator(
            terminationPredicateFactory=lambda: lambda: True,
            scheduler=lambda work: clock.callLater(0, work),
        )
        order: List[str] = []

        def make(name: str, n: int) -> Engine:
            response = FakeResponse()
            response.write = lambda data: order.append(name)  # type: ignore[method-assign]
            return Engine(clock, cooperator, response, lambda final: None)

        big = make("big", 1000)
        big.start(iter([b"x"] * 1000))
        small = make("small", 20)
        small.start(iter([b"y"] * 20))
        while clock.getDelayedCalls():
            clock.advance(0)
        self.assertEqual(order.count("big"), 1000)
        self.assertEqual(order.count("small"), 20)
        # The small response finished long before the big one.
        lastSmall = len(order) - 1 - order[::-1].index("small")
        self.assertLess(lastSmall, 100)


class ClockRequest(DummyRequest):
    """
    Just enough of a request for L{AWSGIResource} to serve without a
    connection, so a L{MemoryReactorClock} drives all of its timing.
    """

    clientproto = b"HTTP/1.1"
    channel = None

    def __init__(self) -> None:
        super().__init__([b""])
        self.uri = b"/"
        self.content = io.BytesIO(b"")

    def isSecure(self) -> bool:
        return False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # DummyRequest's own loops on resumeProducing (a pull producer).
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class ResourceClockTests(SynchronousTestCase):
    """
    L{AWSGIResource} on a L{MemoryReactorClock}: the backoff and the
    controller's wake-up, timed exactly, through the whole exchange.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        # The controller hops to the reactor with callFromThread unless it
        # is in the reactor thread (not registered when no reactor runs).
        self.clock.callFromThread = lambda f, *a, **kw: self.clock.callLater(0, f, *a, **kw)  # type: ignore[attr-defined]

    def run_clock(self, limit: float) -> None:
        clock = self.clock
        while clock.getDelayedCalls():
            when = min(c.getTime() for c in clock.getDelayedCalls())
            if when > limit:
                return
            clock.advance(max(0.0, when - clock.seconds()))

    def test_backoff(self) -> None:
        pulls: List[float] = []

        def app(environ: Any, start_response: Any) -> Iterator[bytes]:
            start_response("200 OK", [])
            for i in range(15):
                pulls.append(self.clock.seconds())
                yield b""
            yield b"done"
            for i in range(3):
                pulls.append(self.clock.seconds())
                yield b""

        request = ClockRequest()
        AWSGIResource(self.clock, app).render(request)
        self.run_clock(limit=100)
        gaps = [round(b - a, 6) for a, b in zip(pulls, pulls[1:])]
        self.assertEqual(
            gaps,
            [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 1.0, 1.0, 1.0]
            # "done" came after a 1 s wait; the delay starts over after it.
            + [1.0, 0.001, 0.002],
        )
        self.assertEqual(request.written, [b"done"])
        self.assertEqual(request.finished, 1)

    def test_controllerNeedsNoTimer(self) -> None:
        """
        While the controller is idle nothing is scheduled at all; a put is
        written in the next reactor turn.
        """
        ctrls: List[Any] = []
        pulls = [0]

        def app(environ: Any, start_response: Any) -> Iterator[bytes]:
            start_response("200 OK", [])
            ctrls.append(environ["awsgi.controller"](environ))
            for chunk in ctrls[0]:
                pulls[0] += 1
                yield chunk

        request = ClockRequest()
        AWSGIResource(self.clock, app).render(request)
        self.run_clock(limit=3600)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(pulls[0], 1)
        ctrls[0].put(b"hello")
        self.clock.advance(0)
        self.assertEqual(request.written, [b"hello"])
        ctrls[0].finish()
        self.clock.advance(0)
        self.assertEqual(request.finished, 1)
        self.assertEqual(pulls[0], 3)


# ---------------------------------------------------------------------------
# Final states of real exchanges
# ---------------------------------------------------------------------------


GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


class CapturedEngineTests(TestCase):
    """
    Real requests over TCP; the L{Engine} of each exchange is captured (by
    patching L{txawsgi.exchange.Engine}) to check the final state every
    scenario ends in.
    """

    def setUp(self) -> None:
        self.engines: List[Engine] = []
        self.finals: List[Run] = []
        test = self

        class CapturingEngine(Engine):
            __slots__ = ()

            def __init__(self, reactor: Any, cooperator: Any, response: Any, ended: Any, threadpool: Any = None) -> None:
                def recording(final: Run) -> None:
                    test.finals.append(final)
                    ended(final)

                super().__init__(reactor, cooperator, response, recording, threadpool)
                test.engines.append(self)

        self.patch(txawsgi.exchange, "Engine", CapturingEngine)

    def pool(self) -> ThreadPool:
        pool = ThreadPool(minthreads=1, maxthreads=4, name="test-engine")
        pool.start()
        from twisted.internet.threads import deferToThread

        self.addCleanup(lambda: deferToThread(pool.stop))
        return pool

    def serve(self, app: Any, threadpool: Optional[ThreadPool] = None, **kw: Any) -> Deferred[Any]:
        return listen(self, AWSGIResource(reactor, app, threadpool), **kw)

    @inlineCallbacks
    def test_done(self) -> Any:
        def app(environ: Any, start_response: Any) -> List[bytes]:
            start_response("200 OK", [])
            return [b"a", b"b"]

        server = yield self.serve(app)
        response = yield request(server)
        self.assertEqual(response.body, b"ab")
        [engine] = self.engines
        self.assertIs(engine.state, Run.DONE)
        self.assertEqual(self.finals, [Run.DONE])
        # Nothing can move a final engine again.
        self.assertRaises(IllegalTransition, engine._run.to, Run.RUNNING)

    @inlineCallbacks
    def test_doneWithController(self) -> Any:
        def app(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", [])
            ctrl = environ["awsgi.controller"](environ)
            reactor.callLater(0.01, ctrl.put, b"later")
            reactor.callLater(0.02, ctrl.finish)
            return ctrl

        server = yield self.serve(app)
        response = yield request(server)
        self.assertEqual(response.body, b"later")
        self.assertEqual(self.finals, [Run.DONE])

    @inlineCallbacks
    def test_failedIterable(self) -> Any:
        def app(environ: Any, start_response: Any) -> Iterator[bytes]:
            start_response("200 OK", [])
            yield b"partial"
            raise ZeroDivisionError("mid-body")

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(GET)
        yield client.wait_closed()
        [partial] = parse_response(client.received, eof=False)
        self.assertFalse(partial.complete)
        self.assertEqual(self.finals, [Run.FAILED])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @inlineCallbacks
    def test_failedCallable(self) -> Any:
        def app(environ: Any, start_response: Any) -> Any:
            raise ZeroDivisionError("in the callable")

        server = yield self.serve(app)
        response = yield request(server)
        self.assertEqual(response.code, 500)
        self.assertEqual(self.finals, [Run.FAILED])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @inlineCallbacks
    def test_abortedWhileWaiting(self) -> Any:
        ctrls: List[Any] = []

        def app(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", [])
            ctrls.append(environ["awsgi.controller"](environ))
            return ctrls[-1]

        server = yield self.serve(app)
        client = yield RawClient.connect(server)
        client.send(GET)
        yield eventually(lambda: ctrls)
        [engine] = self.engines
        self.assertIs(engine.state, Run.WAITING)
        yield client.abort()
        yield eventually(lambda: self.finals)
        self.assertEqual(self.finals, [Run.ABORTED])

    @inlineCallbacks
    def test_abortedWhilePaused(self) -> Any:
        def app(environ: Any, start_response: Any) -> Iterator[bytes]:
            start_response("200 OK", [])
            while True:
                yield b"x" * 65536

        server = yield self.serve(app, sndbuf=65536)
        client = yield RawClient.connect(server, rcvbuf=4096)
        client.pause_reading()
        client.send(GET)
        yield eventually(lambda: self.engines and self.engines[0].paused)
        [engine] = self.engines
        yield sleep(0.05)
        self.assertTrue(engine.paused)
        self.assertIs(engine.state, Run.RUNNING)
        yield client.abort()
        yield eventually(lambda: self.finals)
        self.assertEqual(self.finals, [Run.ABORTED])

    @inlineCallbacks
    def test_cancellingThenAborted(self) -> Any:
        """
        Threadpool mode: the client leaves while a worker is inside the
        iterable's C{next()}; the engine waits in CANCELLING, ends ABORTED
        when the pull returns, and does not send the late chunk.
        """
        inside = threading.Event()
        release = threading.Event()
        closed: List[bool] = []

        class Slow:
            def __init__(self) -> None:
                self.n = 0

            def __iter__(self) -> "Slow":
                return self

            def __next__(self) -> bytes:
                self.n += 1
                if self.n == 1:
                    return b"first"
                inside.set()
                release.wait(10)
                return b"late"

            def close(self) -> None:
                closed.append(threading.current_thread() is not threading.main_thread())

        def app(environ: Any, start_response: Any) -> Slow:
            start_response("200 OK", [])
            return Slow()

        pool = self.pool()
        # Runs before the pool stops: a worker must not stay blocked.
        self.addCleanup(release.set)
        server = yield self.serve(app, pool)
        client = yield RawClient.connect(server)
        client.send(GET)
        yield client.wait_for(b"first")
        yield eventually(inside.is_set)
        [engine] = self.engines
        self.assertIs(engine.state, Run.PULLING)
        yield client.abort()
        yield eventually(lambda: engine.state is Run.CANCELLING)
        self.assertEqual(self.finals, [])
        release.set()
        yield eventually(lambda: self.finals)
        self.assertEqual(self.finals, [Run.ABORTED])
        yield eventually(lambda: closed)
        self.assertEqual(closed, [True])

    @inlineCallbacks
    def test_cancellingThenFailed(self) -> Any:
        """
        Threadpool mode: a controller callback fails while a worker is
        inside the iterable's C{next()}; the engine ends FAILED (a 500) once
        the pull returns.
        """
        inside = threading.Event()
        release = threading.Event()

        class Waits:
            def __init__(self, environ: Any) -> None:
                self.ctrl = environ["awsgi.controller"](environ)

            def __iter__(self) -> "Waits":
                return self

            def __next__(self) -> bytes:
                self.ctrl.on_get(10, lambda data: 1 / 0)
                inside.set()
                release.wait(10)
                return b"late"

        def app(environ: Any, start_response: Any) -> Waits:
            start_response("200 OK", [])
            return Waits(environ)

        pool = self.pool()
        # Runs before the pool stops: a worker must not stay blocked.
        self.addCleanup(release.set)
        server = yield self.serve(app, pool)
        responding = request(server, "POST", "/", body=b"abc")
        yield eventually(inside.is_set)
        [engine] = self.engines
        yield eventually(lambda: engine.state is Run.CANCELLING)
        release.set()
        response = yield responding
        self.assertEqual(response.code, 500)
        self.assertEqual(self.finals, [Run.FAILED])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @inlineCallbacks
    def test_abortedWhileCalling(self) -> Any:
        """
        Threadpool mode: the client leaves while the application callable
        still runs; the engine is ABORTED at once and the iterable returned
        later is closed without being iterated.
        """
        inside = threading.Event()
        release = threading.Event()
        events: List[str] = []

        class Body:
            def __iter__(self) -> Iterator[bytes]:
                events.append("iter")
                return iter([b"never"])

            def close(self) -> None:
                events.append("close")

        def app(environ: Any, start_response: Any) -> Body:
            start_response("200 OK", [])
            inside.set()
            release.wait(10)
            return Body()

        pool = self.pool()
        # Runs before the pool stops: a worker must not stay blocked.
        self.addCleanup(release.set)
        server = yield self.serve(app, pool)
        client = yield RawClient.connect(server)
        client.send(GET)
        yield eventually(inside.is_set)
        [engine] = self.engines
        self.assertIs(engine.state, Run.CALLING)
        yield client.abort()
        yield eventually(lambda: self.finals)
        self.assertEqual(self.finals, [Run.ABORTED])
        release.set()
        yield eventually(lambda: events)
        self.assertEqual(events, ["close"])
