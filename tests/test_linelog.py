"""
Log lines shared by processes (L{txawsgi.linelog}), workers' log observer
and where it writes (L{txawsgi.worker.WorkerLogObserver},
L{txawsgi.workers.LogTarget}).
"""

from __future__ import annotations

import fcntl
import io
import os
from typing import Any, List

from twisted.internet.task import Clock
from twisted.logger import (
    FileLogObserver,
    Logger,
    LoggingFile,
    LogLevel,
    LogPublisher,
    eventAsText,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from txawsgi.linelog import PIPE_BUF, LineWriter
from txawsgi.worker import WorkerLogObserver
from txawsgi.workers import LogTarget

from ._production import temp_dir


def pipe(testcase: SynchronousTestCase) -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    testcase.addCleanup(os.close, r)
    testcase.addCleanup(os.close, w)
    return r, w


def drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


class Recording(LineWriter):
    """
    A L{LineWriter} that records each C{write()} it makes.
    """

    def __init__(self, fd: int, **kwargs: Any) -> None:
        super().__init__(fd, **kwargs)
        self.writes: List[bytes] = []

    def _os_write(self, fd: int, data: Any) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return os.write(fd, data)


class LineWriterTests(SynchronousTestCase):
    def test_oneWritePerTurn(self) -> None:
        """
        Lines wait for the end of the reactor's turn, then go out in one
        write.
        """
        r, w = pipe(self)
        clock = Clock()
        writer = Recording(w, reactor=clock)
        writer.write(b"a\n")
        writer.write(b"b\n")
        self.assertEqual(drain(r), b"")
        clock.advance(0)
        self.assertEqual(writer.writes, [b"a\nb\n"])
        self.assertEqual(drain(r), b"a\nb\n")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_delay(self) -> None:
        r, w = pipe(self)
        clock = Clock()
        writer = LineWriter(w, reactor=clock, delay=0.5)
        writer.write(b"a\n")
        clock.advance(0.4)
        self.assertEqual(drain(r), b"")
        clock.advance(0.1)
        self.assertEqual(drain(r), b"a\n")

    def test_closeWritesWhatIsLeft(self) -> None:
        """
        L{LineWriter.close} writes the buffered lines (a server stopping
        loses none) and later lines are dropped.
        """
        r, w = pipe(self)
        clock = Clock()
        writer = LineWriter(w, reactor=clock, delay=10)
        writer.write(b"a\n")
        writer.close()
        self.assertEqual(drain(r), b"a\n")
        self.assertEqual(clock.getDelayedCalls(), [])
        writer.write(b"b\n")
        clock.advance(10)
        self.assertEqual(drain(r), b"")

    def test_immediate(self) -> None:
        r, w = pipe(self)
        writer = LineWriter(w, reactor=Clock(), delay=None)
        writer.write(b"a\n")
        self.assertEqual(drain(r), b"a\n")

    def test_pipeChunksAreWholeLines(self) -> None:
        """
        To a pipe, each write is whole lines of at most C{PIPE_BUF} bytes
        (so writes of several processes do not interleave), except a line
        longer than that, written alone.
        """
        r, w = pipe(self)
        clock = Clock()
        writer = Recording(w, reactor=clock)
        lines = [b"%d %s\n" % (i, b"x" * (i * 97 % 700)) for i in range(40)]
        long = b"L" * (PIPE_BUF + 10) + b"\n"
        for line in lines[:20] + [long] + lines[20:]:
            writer.write(line)
        clock.advance(0)
        self.assertEqual(drain(r), b"".join(lines[:20] + [long] + lines[20:]))
        self.assertGreater(len(writer.writes), 3)
        self.assertIn(long, writer.writes)
        for chunk in writer.writes:
            self.assertTrue(chunk.endswith(b"\n"))
            if chunk != long:
                self.assertLessEqual(len(chunk), PIPE_BUF)

    def test_fileInOneWrite(self) -> None:
        """
        A regular file takes everything in one write (atomic there).
        """
        path = os.path.join(temp_dir(self), "f")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        clock = Clock()
        writer = Recording(fd, reactor=clock, owned=True)
        data = [b"%d %s\n" % (i, b"y" * 500) for i in range(40)]
        for line in data:
            writer.write(line)
        clock.advance(0)
        writer.close()
        self.assertEqual(len(writer.writes), 1)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"".join(data))

    def test_muchBufferedWritesAtOnce(self) -> None:
        path = os.path.join(temp_dir(self), "f")
        writer = LineWriter(os.open(path, os.O_WRONLY | os.O_CREAT), reactor=Clock(), delay=10, owned=True)
        self.addCleanup(writer.close)
        for _ in range(63):
            writer.write(b"z" * 1023 + b"\n")
        self.assertEqual(os.path.getsize(path), 0)
        writer.write(b"z" * 1023 + b"\n")
        self.assertEqual(os.path.getsize(path), 64 * 1024)

    def test_errorsReportedOnce(self) -> None:
        """
        A failing descriptor is reported once (lines are dropped), again
        after it has worked in between.
        """
        good_r, good_w = pipe(self)
        bad_r, bad_w = os.pipe()
        os.close(bad_r)  # nobody reads
        self.addCleanup(os.close, bad_w)
        fd = os.dup(bad_w)
        errors: List[OSError] = []
        writer = LineWriter(fd, reactor=Clock(), delay=None, on_error=errors.append, owned=True)
        self.addCleanup(writer.close)
        writer.write(b"a\n")
        writer.write(b"b\n")
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], BrokenPipeError)
        os.dup2(good_w, fd)
        writer.write(b"c\n")
        self.assertEqual(drain(good_r), b"c\n")
        os.dup2(bad_w, fd)
        writer.write(b"d\n")
        self.assertEqual(len(errors), 2)

    def test_followRotation(self) -> None:
        """
        With C{follow}, once the file at the path is another one (rotated),
        lines go there, at most a second later.
        """
        directory = temp_dir(self)
        path = os.path.join(directory, "log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        clock = Clock()
        writer = LineWriter(fd, reactor=clock, follow=path, owned=True)
        self.addCleanup(writer.close)
        writer.write(b"1\n")
        clock.advance(0)
        os.rename(path, path + ".1")
        with open(path, "wb"):
            pass
        writer.write(b"2\n")
        clock.advance(0.5)  # checked less than a second ago
        clock.advance(0.6)
        writer.write(b"3\n")
        clock.advance(0)
        with open(path + ".1", "rb") as f:
            self.assertEqual(f.read(), b"1\n2\n")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"3\n")
        self.assertTrue(fcntl.fcntl(writer.fd, fcntl.F_GETFL) & os.O_APPEND)  # type: ignore[arg-type]


class WorkerLogObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.r, w = pipe(self)
        self.clock = Clock()
        self.observer = WorkerLogObserver(LineWriter(w, reactor=self.clock), "worker-3")

    def test_format(self) -> None:
        """
        twistd's classic line with the worker's name after the time; lines
        of a multi-line message are continued with a tab.
        """
        when = 1_700_000_000.25
        self.observer({"log_format": "hello {x}", "x": 1, "log_time": when, "log_system": "sys"})
        self.observer({"log_format": "a\nb", "log_time": when, "log_namespace": "ns", "log_level": LogLevel.info})
        self.observer({"log_time": when})  # nothing to say
        self.clock.advance(0)
        expected = textFileLogObserver(io.StringIO()).formatEvent(
            {"log_format": "hello", "log_time": when, "log_system": "x"}
        )
        assert expected is not None
        stamp = expected.split(" [")[0]
        self.assertEqual(
            drain(self.r).decode(),
            f"{stamp} [worker-3] [sys] hello 1\n{stamp} [worker-3] [ns#info] a\n\tb\n",
        )

    def test_loggingFile(self) -> None:
        """
        Lines written to a L{LoggingFile} (Twisted's request log) come out
        as the general formatter has them.
        """
        events: List[Any] = []
        out = LoggingFile(Logger(namespace="web", observer=events.append))
        out.write('"GET /{x} %s" 200\n')
        [event] = events
        for variant in (event, dict(event, log_system="HTTPChannel,1,127.0.0.1"), dict(event, log_level=None)):
            self.assertEqual(
                WorkerLogObserver._text(variant),
                eventAsText(variant, includeTimestamp=False, includeSystem=True),
            )
        self.observer(event)
        self.clock.advance(0)
        self.assertTrue(drain(self.r).endswith(b' [worker-3] [web#info] "GET /{x} %s" 200\n'))

    def test_failure(self) -> None:
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        self.observer(
            {"log_format": "oops", "log_failure": failure, "log_time": 0.0, "log_level": LogLevel.error}
        )
        # An error is written at once, not at the end of the turn.
        text = drain(self.r).decode()
        self.assertIn("[worker-3] [-#error] oops\n\tTraceback", text)
        self.assertIn("\tbuiltins.ZeroDivisionError", text)


class LogTargetTests(SynchronousTestCase):
    def test_stdoutLike(self) -> None:
        """
        twistd's observer to a file with a descriptor (its standard
        output): workers write to that descriptor.
        """
        path = os.path.join(temp_dir(self), "out")
        with open(path, "w") as f:
            target = LogTarget.find(LogPublisher(textFileLogObserver(f)))
            assert target is not None
            self.assertEqual(target.fileno(), f.fileno())
            self.assertIsNone(target.path)
            self.assertTrue(fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_APPEND)

    def test_logFile(self) -> None:
        """
        twistd's C{--logfile}: workers are given its path to follow; it is
        written with C{O_APPEND} before and after a rotation.
        """
        directory = temp_dir(self)
        logfile = LogFile.fromFullPath(os.path.join(directory, "twistd.log"))
        self.addCleanup(logfile.close)
        target = LogTarget.find(LogPublisher(textFileLogObserver(logfile)))
        assert target is not None
        self.assertEqual(target.path, logfile.path)
        first = target.fileno()
        self.assertTrue(fcntl.fcntl(first, fcntl.F_GETFL) & os.O_APPEND)
        logfile.rotate()
        self.assertTrue(fcntl.fcntl(target.fileno(), fcntl.F_GETFL) & os.O_APPEND)
        # Found again (a restarted service): not wrapped twice.
        LogTarget.find(LogPublisher(textFileLogObserver(logfile)))
        logfile.rotate()
        self.assertTrue(fcntl.fcntl(target.fileno(), fcntl.F_GETFL) & os.O_APPEND)

    def test_otherLogs(self) -> None:
        """
        Workers write themselves only where they would write the same: not
        for JSON logs, several observers, other observers, or a file with
        no descriptor.
        """
        path = os.path.join(temp_dir(self), "out")
        with open(path, "w") as f:
            text = textFileLogObserver(f)
            self.assertIsNone(LogTarget.find(LogPublisher(jsonFileLogObserver(f))))
            self.assertIsNone(LogTarget.find(LogPublisher(text, text)))
            self.assertIsNone(LogTarget.find(LogPublisher(lambda event: None)))
            self.assertIsNone(LogTarget.find(LogPublisher()))
            custom = FileLogObserver(f, lambda event: "custom\n")
            self.assertIsNone(LogTarget.find(LogPublisher(custom)))
        self.assertIsNone(LogTarget.find(LogPublisher(textFileLogObserver(io.StringIO()))))
