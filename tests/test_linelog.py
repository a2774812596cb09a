"""
Log lines shared by processes (L{txawsgi.linelog}), workers' log observer
and where it writes (L{txawsgi.worker.WorkerLogObserver},
L{txawsgi.workers.LogTarget}).
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import textwrap
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

from txawsgi.linelog import FOLLOW_EVERY, NEAR_FULL, PIPE_BUF, LineWriter
from txawsgi.worker import WorkerLogObserver
from txawsgi.workers import LogTarget

from ._production import temp_dir
from .support import project_env


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
        lines go there from the first batch written L{FOLLOW_EVERY} seconds
        after the last look; none is lost or written twice.
        """
        directory = temp_dir(self)
        path = os.path.join(directory, "log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        clock = Clock()
        writer = Recording(fd, reactor=clock, follow=path, owned=True)
        self.addCleanup(writer.close)
        writer.write(b"1\n")
        clock.advance(0)
        os.rename(path, path + ".1")
        writer.write(b"2\n")  # renamed, not created yet: the old file
        clock.advance(2 * FOLLOW_EVERY)
        with open(path, "wb"):
            pass
        writer.write(b"3\n")
        clock.advance(FOLLOW_EVERY / 2)  # looked less than FOLLOW_EVERY ago
        writer.write(b"4\n")
        clock.advance(FOLLOW_EVERY)
        with open(path + ".1", "rb") as f:
            self.assertEqual(f.read(), b"1\n2\n3\n")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"4\n")
        self.assertEqual(writer.writes, [b"1\n", b"2\n", b"3\n", b"4\n"])
        self.assertTrue(fcntl.fcntl(writer.fd, fcntl.F_GETFL) & os.O_APPEND)  # type: ignore[arg-type]

    def test_followCost(self) -> None:
        """
        The path is looked at before a batch at most once per
        L{FOLLOW_EVERY} seconds, not per batch or line.
        """
        path = os.path.join(temp_dir(self), "log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        clock = Clock()
        writer = LineWriter(fd, reactor=clock, follow=path, owned=True)
        self.addCleanup(writer.close)
        stats: List[str] = []
        real = os.stat

        def stat(p: Any, *a: Any, **kw: Any) -> Any:
            stats.append(p)
            return real(p, *a, **kw)

        self.patch(os, "stat", stat)
        for _ in range(10):
            writer.write(b"a\n")
            writer.write(b"b\n")
            clock.advance(FOLLOW_EVERY * 0.3)
        self.assertEqual(stats, [path] * 3)  # at 0.3, 1.5 and 2.7 times it

    def test_full(self) -> None:
        """
        C{on_full} is called once per file, after the write that makes it
        C{full_at} bytes long, everybody's lines counted.
        """
        path = os.path.join(temp_dir(self), "log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        other = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.addCleanup(os.close, other)
        clock = Clock()
        sizes: List[int] = []
        writer = LineWriter(
            fd,
            reactor=clock,
            follow=path,
            full_at=100,
            on_full=lambda: sizes.append(os.path.getsize(path)),
            owned=True,
        )
        self.addCleanup(writer.close)

        def turn(line: bytes) -> None:
            writer.write(line)
            clock.advance(1)

        turn(b"a" * 49 + b"\n")
        os.write(other, b"b" * 39 + b"\n")
        turn(b"c" * 8 + b"\n")
        self.assertEqual(sizes, [])
        turn(b"d\n")
        self.assertEqual(sizes, [101])
        turn(b"e\n")
        self.assertEqual(sizes, [101])
        os.rename(path, path + ".1")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT))
        turn(b"f" * 99 + b"\n")
        self.assertEqual(sizes, [101, 100])

    def test_nearFull(self) -> None:
        """
        Within L{NEAR_FULL} bytes of C{full_at}, the path is looked at
        before every batch: the file is said to be full, and its successor
        followed, without waiting for L{FOLLOW_EVERY}.
        """
        path = os.path.join(temp_dir(self), "log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        clock = Clock()
        full: List[int] = []
        real = os.stat
        writer = LineWriter(
            fd,
            reactor=clock,
            follow=path,
            full_at=NEAR_FULL + 1000,
            on_full=lambda: full.append(real(path).st_size),
            owned=True,
        )
        self.addCleanup(writer.close)
        stats: List[str] = []

        def stat(p: Any, *a: Any, **kw: Any) -> Any:
            stats.append(p)
            return real(p, *a, **kw)

        self.patch(os, "stat", stat)
        writer.write(b"a" * 99 + b"\n")
        clock.advance(0)  # looked: far from full
        with open(path, "ab") as f:
            f.write(b"b" * (NEAR_FULL - 1) + b"\n")
        writer.write(b"c\n")
        clock.advance(0)  # not looked: too soon
        self.assertEqual(len(stats), 1)
        writer.write(b"d\n")
        clock.advance(2 * FOLLOW_EVERY)  # looked: near full
        writer.write(b"e" * 899 + b"\n")
        clock.advance(0)  # looked: full
        self.assertEqual(len(stats), 3)
        self.assertEqual(full, [NEAR_FULL + 1004])
        os.rename(path, path + ".1")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT))
        writer.write(b"f\n")
        clock.advance(0)  # looked: still waiting for the rotation
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"f\n")
        writer.write(b"g\n")
        clock.advance(0)  # not looked: far from full again
        self.assertEqual(len(stats), 4)

    def test_newFileUnopenable(self) -> None:
        """
        If the new file cannot be opened, lines go on to the old one, and
        the error is reported once.
        """
        path = os.path.join(temp_dir(self), "log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        clock = Clock()
        errors: List[OSError] = []
        writer = LineWriter(fd, reactor=clock, follow=path, on_error=errors.append, owned=True)
        self.addCleanup(writer.close)
        os.rename(path, path + ".1")
        os.mkdir(path)  # not writable as a file
        for line in (b"1\n", b"2\n"):
            writer.write(line)
            clock.advance(1)
        self.assertEqual(len(errors), 1)
        with open(path + ".1", "rb") as f:
            self.assertEqual(f.read(), b"1\n2\n")

    def test_longLinesOfTwoProcesses(self) -> None:
        """
        Two processes writing lines much longer than C{PIPE_BUF} to one
        C{O_APPEND} file: every line comes out whole.
        """
        path = os.path.join(temp_dir(self), "log")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT))
        script = textwrap.dedent(
            """
            import os, sys
            from txawsgi.linelog import LineWriter
            name, path = sys.argv[1], sys.argv[2]
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            writer = LineWriter(fd, delay=None, owned=True)
            for i in range(300):
                size = (i * 7919) % 200000 + 5000
                writer.write(b"%s %d " % (name.encode(), i) + name.encode() * size + b"\\n")
            writer.close()
            """
        )
        children = [
            subprocess.Popen([sys.executable, "-c", script, name, path], env=project_env())
            for name in ("A", "B")
        ]
        for child in children:
            self.assertEqual(child.wait(timeout=60), 0)
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        self.assertEqual(lines.pop(), b"")
        seen = set()
        for line in lines:
            name, i, body = line.split(b" ")
            size = (int(i) * 7919) % 200000 + 5000
            self.assertEqual(body, name * size, (name, i))
            seen.add((name, int(i)))
        self.assertEqual(len(lines), 600)
        self.assertEqual(len(seen), 600)


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

    def test_rotatesByRealSize(self) -> None:
        """
        twistd's log file rotates when the file reaches C{rotateLength}
        bytes, lines written by other processes (workers) counted: before
        a line of its own, or when told (L{LogTarget.rotate_if_full}).
        """
        directory = temp_dir(self)
        path = os.path.join(directory, "twistd.log")
        logfile = LogFile.fromFullPath(path, rotateLength=1000)
        self.addCleanup(logfile.close)
        target = LogTarget.find(LogPublisher(textFileLogObserver(logfile)))
        assert target is not None
        self.assertEqual(target.rotate_length, 1000)
        worker = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.addCleanup(os.close, worker)
        os.write(worker, b"w" * 899 + b"\n")
        logfile.write("s" * 98 + "\n")
        target.rotate_if_full()
        self.assertEqual(logfile.listLogs(), [])
        os.write(worker, b"w\n")
        target.rotate_if_full()
        self.assertEqual(logfile.listLogs(), [1])
        self.assertEqual(os.path.getsize(path + ".1"), 1001)
        target.rotate_if_full()  # told twice (two workers): once
        self.assertEqual(logfile.listLogs(), [1])
        # Its own line, after the workers' filled the new file.
        os.close(os.open(path, os.O_WRONLY))  # (the worker followed)
        with open(path, "ab") as f:
            f.write(b"w" * 1000)
        logfile.write("s\n")
        self.assertEqual(logfile.listLogs(), [1, 2])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"s\n")

    def test_notBySize(self) -> None:
        """
        A log file with no rotation size (or standard output) is never
        rotated by size.
        """
        logfile = LogFile.fromFullPath(os.path.join(temp_dir(self), "twistd.log"), rotateLength=None)
        self.addCleanup(logfile.close)
        target = LogTarget.find(LogPublisher(textFileLogObserver(logfile)))
        assert target is not None
        self.assertIsNone(target.rotate_length)
        logfile.write("x" * 10000 + "\n")
        target.rotate_if_full()
        self.assertEqual(logfile.listLogs(), [])

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
