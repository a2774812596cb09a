"""
Whole log lines to a file descriptor that other processes write to as well
(the worker processes of C{--workers N} and their supervisor share the log
and the access log).

Lines are buffered and written once the reactor has handled the events at
hand (a delayed call of L{FLUSH_DELAY} seconds, 0 by default), when much is
buffered, or when the writer is flushed or closed: one C{write()} per
reactor turn instead of one per request, and a process that is killed
loses at most the lines of the turn it was in.  Each C{write()} holds only whole
lines, and at most C{PIPE_BUF} bytes of them when the descriptor is not a
regular file, so lines from different processes never interleave: a
regular file is written with C{O_APPEND} or through one shared file
description (both atomic per call on Linux), a pipe atomically up to
C{PIPE_BUF}.
"""

from __future__ import annotations

import os
import select
import stat
from typing import Any, Callable, Optional

__all__ = ["FLUSH_DELAY", "LineWriter", "set_append"]

#: Seconds a buffered line may wait before it is written (0: until the
#: reactor has handled the events at hand).
FLUSH_DELAY = 0.0

#: Bytes buffered before a write is due at once.
MAX_BUFFERED = 64 * 1024

#: The largest write that a pipe keeps whole with other writers about.
PIPE_BUF: int = getattr(select, "PIPE_BUF", 512)

#: The largest write to a regular file (atomic at any size).
_FILE_CHUNK = 1 << 20

#: How often, at most, a followed path is checked for rotation (seconds).
_FOLLOW_EVERY = 1.0


def set_append(fd: int) -> None:
    """
    Make every write to C{fd}'s open file description go to the end of the
    file, if it is a regular file, whoever else writes to it.
    """
    if stat.S_ISREG(os.fstat(fd).st_mode):
        import fcntl

        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags & os.O_APPEND:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_APPEND)


class LineWriter:
    """
    Buffer whole lines for a descriptor and write them in a few whole-line
    chunks.

    @param fd: where lines go (not closed by L{close} unless C{owned}).
    @param reactor: schedules the delayed flush (L{None}: the global
        reactor, looked up when first needed).
    @param delay: seconds a line may wait (C{0}: the rest of this reactor
        turn); L{None} writes each one at once.
    @param on_error: told of the first failing write after a good one
        (lines are dropped while writes fail).
    @param follow: a path whose rotation to follow: when the file there is
        no longer the one C{fd} writes to, open the new one (C{O_APPEND})
        and write there.
    @param owned: close C{fd} on L{close}.
    """

    def __init__(
        self,
        fd: int,
        *,
        reactor: Any = None,
        delay: Optional[float] = FLUSH_DELAY,
        on_error: Optional[Callable[[OSError], None]] = None,
        follow: Optional[str] = None,
        owned: bool = False,
    ) -> None:
        self.fd: Optional[int] = fd
        self._reactor = reactor
        self._delay = delay
        self._on_error = on_error
        self._follow = follow
        self._owned = owned
        self._chunk = self._chunk_size(fd)
        self._pending: list[bytes] = []
        self._size = 0
        self._call: Any = None
        self._failed = False
        self._checked = float("-inf")

    @staticmethod
    def _chunk_size(fd: int) -> int:
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            regular = False
        return _FILE_CHUNK if regular else PIPE_BUF

    def write(self, data: bytes) -> None:
        """
        Queue C{data}: one or more lines, each ending in C{\\n}.
        """
        if self.fd is None:
            return
        self._pending.append(data)
        self._size += len(data)
        if self._size >= MAX_BUFFERED or self._delay is None:
            self.flush()
        elif self._call is None:
            self._call = self._get_reactor().callLater(self._delay, self._timed)

    def _get_reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def _timed(self) -> None:
        self._call = None
        self.flush()

    def flush(self) -> None:
        """
        Write everything buffered now.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._size = 0
        if self._follow is not None:
            self._check_rotation()
        fd = self.fd
        if fd is None:
            return
        try:
            self._write_all(fd, data)
        except OSError as e:
            if not self._failed:
                self._failed = True
                if self._on_error is not None:
                    self._on_error(e)
        else:
            self._failed = False

    def _write_all(self, fd: int, data: bytes) -> None:
        limit = self._chunk
        view = memoryview(data)
        start, end = 0, len(data)
        while start < end:
            stop = end
            if end - start > limit:
                # Cut after the last whole line that fits (or after the
                # first line, if even that one is longer).
                cut = data.rfind(b"\n", start, start + limit)
                if cut < 0:
                    cut = data.find(b"\n", start + limit)
                stop = end if cut < 0 else cut + 1
            while start < stop:
                start += self._os_write(fd, view[start:stop])

    #: The system call (a seam for tests that count writes).
    _os_write = staticmethod(os.write)

    def _check_rotation(self) -> None:
        """
        Follow the path to a new file if the old one was rotated away (at
        most once per L{_FOLLOW_EVERY} seconds).
        """
        now = self._get_reactor().seconds()
        if now - self._checked < _FOLLOW_EVERY:
            return
        self._checked = now
        path, fd = self._follow, self.fd
        assert path is not None and fd is not None
        try:
            there = os.stat(path)
            here = os.fstat(fd)
        except OSError:
            return  # being rotated right now: keep writing here
        if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
            return
        try:
            new = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            if self._on_error is not None:
                self._on_error(e)
            return
        if self._owned:
            os.close(fd)
        self.fd, self._owned = new, True

    def close(self) -> None:
        """
        Write what is buffered, then stop (later lines are dropped).
        """
        self.flush()
        fd, self.fd = self.fd, None
        if fd is not None and self._owned:
            os.close(fd)
