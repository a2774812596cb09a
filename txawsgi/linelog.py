"""
Whole log lines to a file descriptor that other processes write to as well
(the worker processes of C{--workers N} and their supervisor share the log
and the access log).

Lines are buffered and written once the reactor has handled the events at
hand (a delayed call of L{FLUSH_DELAY} seconds, 0 by default), when much is
buffered, or when the writer is flushed or closed: one C{write()} per
reactor turn instead of one per request, and a process that is killed
loses at most the lines of the turn it was in.

What keeps lines of different processes apart: each C{write()} is whole
lines -- up to 1 MiB of them to a regular file, at most C{PIPE_BUF} (4096
on Linux) bytes of them to anything else, and a longer line alone.

  - A regular file on a local file system, written with C{O_APPEND} (the
    files of C{--workers} are, see L{set_append}): Linux appends the bytes
    of one C{write()} as one piece (under the file's lock), so whole lines
    never interleave, long ones included.  Not so on NFS, where
    C{O_APPEND} is not atomic between machines.
  - A pipe: a C{write()} of at most C{PIPE_BUF} bytes goes in as one
    piece; the pieces of a longer line (longer than C{PIPE_BUF}) may be
    interleaved with other processes' writes.  Other descriptors (a
    terminal, a socket): no promise beyond what the kernel gives.
  - A short C{write()} breaks this: the rest is written by another call,
    and another process's lines may land between the two parts; if a call
    fails, the rest of the batch is dropped (and reported), and a line may
    be left cut.  To a local regular file, Linux writes short only when the
    disk or a quota is full, the file size limit is reached, or a fatal
    signal interrupts the write.

With C{follow}, the writer stats the path before a batch (at most once per
L{FOLLOW_EVERY} seconds, not per line) and moves to the new file once the
old one has been rotated away: lines written until then (for at most
L{FOLLOW_EVERY} seconds, a batch under way) land in the old file, none is
lost or written twice.
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

#: How often, at most, a followed path is checked for rotation (seconds):
#: a C{stat()} next to a C{write()} costs some 8 microseconds, which would
#: double the cost of a line when each reactor turn writes one.
FOLLOW_EVERY = 0.01

#: With C{full_at}: how close to it the file must be for the path to be
#: checked before every batch (so that the file is rotated, and followed,
#: without the C{FOLLOW_EVERY} wait).
NEAR_FULL = MAX_BUFFERED


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
    @param full_at: with C{follow}, the size at which the file is due to be
        rotated (by another process).
    @param on_full: called once per file, after the write that makes it
        reach C{full_at} bytes (anybody's lines counted).
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
        full_at: Optional[int] = None,
        on_full: Optional[Callable[[], None]] = None,
        owned: bool = False,
    ) -> None:
        self.fd: Optional[int] = fd
        self._reactor = reactor
        self._delay = delay
        self._on_error = on_error
        self._follow = follow
        self._full_at = full_at if on_full is not None else None
        self._on_full = on_full
        self._owned = owned
        self._chunk = self._chunk_size(fd)
        self._pending: list[bytes] = []
        self._size = 0
        self._call: Any = None
        self._failed = False
        self._checked = float("-inf")
        self._near_full = False
        #: (st_dev, st_ino) of the file C{fd} writes to, if followed.
        self._ident: Optional[tuple[int, int]] = None
        #: The file L{on_full} was last called for.
        self._told: Optional[tuple[int, int]] = None
        #: The last file at C{follow} that could not be opened.
        self._unopened: Optional[tuple[int, int]] = None
        if follow is not None:
            try:
                here = os.fstat(fd)
            except OSError:
                pass
            else:
                self._ident = (here.st_dev, here.st_ino)

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
        full = False
        if self._follow is not None:
            full = self._check_rotation(len(data))
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
        if full:
            self._told = self._ident
            assert self._on_full is not None
            self._on_full()

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

    def _check_rotation(self, adding: int) -> bool:
        """
        Follow the path to a new file if the old one was rotated away (one
        C{stat()} per batch, at most once per L{FOLLOW_EVERY} seconds unless
        the file is within L{NEAR_FULL} bytes of C{full_at}).

        @param adding: the bytes about to be written.
        @return: whether they make the file due for rotation (and
            C{on_full} was not called for it yet).
        """
        now = self._get_reactor().seconds()
        if now - self._checked < FOLLOW_EVERY and not self._near_full:
            return False
        self._checked = now
        path = self._follow
        assert path is not None
        try:
            there = os.stat(path)
        except OSError:
            return False  # being rotated right now: the old file takes these
        ident = (there.st_dev, there.st_ino)
        if ident != self._ident:
            try:
                new = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                # Go on with the old file; tell once per new file.
                if ident != self._unopened and self._on_error is not None:
                    self._on_error(e)
                self._unopened = ident
                return False
            there = os.fstat(new)  # the file opened (replaced again since?)
            if self._owned and self.fd is not None:
                os.close(self.fd)
            self.fd, self._owned = new, True
            ident = self._ident = (there.st_dev, there.st_ino)
        if self._full_at is None:
            return False
        size = there.st_size + adding
        self._near_full = size >= self._full_at - NEAR_FULL
        return size >= self._full_at and ident != self._told

    def close(self) -> None:
        """
        Write what is buffered, then stop (later lines are dropped).
        """
        self.flush()
        fd, self.fd = self.fd, None
        if fd is not None and self._owned:
            os.close(fd)
