"""
The request body, behind the L{IRequestBody} seam.

How the bytes arrived (buffered by Twisted before the app runs, or streamed
as they come) is this module's business; the environ's C{wsgi.input} and the
controller's C{on_get} only talk to an L{IRequestBody}.
"""

from __future__ import annotations

import weakref
from collections import deque
from enum import auto
from tempfile import SpooledTemporaryFile
from threading import Condition
from typing import IO, Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.threadable import isInIOThread
from zope.interface import Interface, implementer

from txawsgi.errors import BodyTooLarge, BodyTruncated, WouldBlock
from txawsgi.interfaces import IRequestBody
from txawsgi.runners import IRunner, ReactorRunner
from txawsgi.states import Machine, State, edges

#: Unread bytes at which a streamed body stops reading the connection:
#: above one socket read (Twisted reads 64 KiB at a time), so an application
#: that keeps up never pauses reading (two system calls each time).
HIGH_WATER = 128 * 1024

#: Bytes of a spooled body kept in memory before it moves to a temp file.
SPOOL = 1024 * 1024


@implementer(IRequestBody)
class BufferedBody:
    """
    A body Twisted received completely before the app was called
    (C{request.content}: memory, or a temporary file when large).

    C{wsgi.input} is the content file itself: it already has the file
    semantics PEP 3333 asks for, and sharing it keeps C{wsgi.input} reads and
    C{on_get} deliveries on one read position.
    """

    __slots__ = ("_reactor", "file")

    def __init__(self, reactor: IReactorTime, content: IO[bytes]) -> None:
        self._reactor = reactor
        self.file = content

    def request(self, length: int, callback: Callable[[bytes], Any], errback: Callable[[BaseException], Any]) -> None:
        self._reactor.callLater(0, self._deliver, length, callback)

    def _deliver(self, length: int, callback: Callable[[bytes], Any]) -> None:
        callback(self.file.read(length) if not self.file.closed else b"")

    def ready(self) -> None:
        """
        The body is already complete: call the application now.
        """
        return None

    def close(self) -> None:
        pass


class _Pieces:
    """
    Received bytes not read yet, kept as the pieces they arrived in: a read
    of what one piece holds takes that piece itself, copying nothing (a
    bytearray would copy every byte in and out again).
    """

    __slots__ = ("_pieces", "_offset", "_size")

    def __init__(self) -> None:
        self._pieces: deque[bytes] = deque()
        #: Bytes of the first piece already taken.
        self._offset = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        self._pieces.append(data)
        self._size += len(data)

    def clear(self) -> None:
        self._pieces.clear()
        self._offset = 0
        self._size = 0

    def find(self, sub: bytes) -> int:
        """
        Where the byte C{sub} first is, from the start of what is unread, or
        -1.
        """
        start = self._offset
        position = -start
        for piece in self._pieces:
            found = piece.find(sub, start)
            if found >= 0:
                return position + found
            position += len(piece)
            start = 0
        return -1

    def take(self, length: int) -> bytes:
        """
        Remove and return the first C{length} bytes (all for a negative
        length, or fewer if fewer are here).
        """
        size = self._size
        if length < 0 or length > size:
            length = size
        pieces = self._pieces
        parts: list[bytes] = []
        offset = self._offset
        left = length
        while left:
            piece = pieces[0]
            available = len(piece) - offset
            if available <= left:
                parts.append(piece[offset:] if offset else piece)
                pieces.popleft()
                offset = 0
                left -= available
            else:
                parts.append(piece[offset : offset + left])
                offset += left
                left = 0
        self._offset = offset
        self._size = size - length
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)


class Body(State):
    """
    Where a streamed request body is.
    """

    #: Bytes may still arrive.
    OPEN = auto()
    #: The last byte arrived; the buffer may still hold unread bytes.
    EOF = auto()
    #: The body was cut short (client gone, or over the size limit).
    TRUNCATED = auto()
    #: The exchange is over; buffered bytes were dropped.
    CLOSED = auto()


_BODY_EDGES = edges(
    Body,
    {
        Body.OPEN: {Body.EOF, Body.TRUNCATED, Body.CLOSED},
        Body.EOF: {Body.CLOSED},
        Body.TRUNCATED: {Body.CLOSED},
        Body.CLOSED: set(),
    },
)


class IBodyFlow(Interface):
    """
    The connection, as a body sees it: reading can be paused and resumed,
    and an interim C{100 Continue} sent when the application first asks.
    """

    def pause_reading() -> None:
        """
        Stop reading the request's connection (TCP pushes back on the client).
        """

    def resume_reading() -> None:
        """
        Read the connection again.
        """

    def send_continue() -> None:
        """
        Send C{100 Continue} if the client asked for it and nothing was sent.
        """


class IBodySink(Interface):
    """
    Where the site delivers a request body dispatched at headers time.
    """

    def feed(data: bytes) -> None:
        """
        Bytes of the (de-chunked) body arrived.
        """

    def end() -> None:
        """
        The body ended.
        """

    def lose(reason: BaseException) -> None:
        """
        The connection went away before the body ended.
        """


@implementer(IRequestBody, IBodySink)
class StreamingBody:
    """
    A body the application reads as it arrives, with backpressure: while
    more than C{high_water} bytes are unread, the connection is not read, so
    a client that sends faster than the application reads is held back by
    TCP and server memory stays flat.

    C{wsgi.input} (L{StreamingInput}) blocks a worker thread until enough
    bytes are in; in the reactor thread it raises L{WouldBlock} instead.
    C{request} (the controller's C{on_get}) delivers bytes as they come.
    """

    def __init__(
        self,
        reactor: Any,
        flow: IBodyFlow,
        *,
        max_body: Optional[int] = None,
        high_water: int = HIGH_WATER,
        overflow: Callable[[BaseException], Any] = lambda reason: None,
        runner: IRunner = ReactorRunner(),
    ) -> None:
        """
        @param max_body: the most bytes accepted; past it the body is
            truncated with L{BodyTooLarge} and C{overflow} is called.
        @param runner: where the application runs; it says whether a
            C{wsgi.input} read may wait (a worker thread or a greenlet) or
            must raise L{WouldBlock} (the reactor thread).
        """
        self._reactor = reactor
        self._runner = runner
        self._changed: list[Deferred[None]] = []
        self._flow = flow
        self._max_body = max_body
        self._high_water = high_water
        self._overflow = overflow
        self._machine = Machine(Body.OPEN, _BODY_EDGES)
        self._buffer = _Pieces()
        self._lock = Condition()
        self._pending: Optional[tuple[int, Callable[[bytes], Any], Callable[[BaseException], Any]]] = None
        self._reading = True
        self._asked = False
        self._reason: Optional[BaseException] = None
        self.received = 0
        self._file: Optional[weakref.ref[StreamingInput]] = None

    @property
    def file(self) -> "StreamingInput":
        """
        C{wsgi.input}.  The input holds the body, and the body only a weak
        reference to it (no reference cycle): the one whoever reads it keeps
        alive, made on first use.
        """
        ref = self._file
        file = ref() if ref is not None else None
        if file is None:
            file = StreamingInput(self)
            self._file = weakref.ref(file)
        return file

    @property
    def state(self) -> Body:
        return self._machine.state

    def ready(self) -> None:
        """
        A streaming body never delays the application call.
        """
        return None

    # -- the connection's side (reactor thread) ------------------------------

    def feed(self, data: bytes) -> None:
        if self._machine.state is not Body.OPEN:
            return
        self.received += len(data)
        if self._max_body is not None and self.received > self._max_body:
            reason = BodyTooLarge(f"request body over the limit of {self._max_body} bytes")
            self._truncate(reason)
            self._overflow(reason)
            return
        if type(data) is not bytes:
            data = bytes(data)
        with self._lock:
            self._buffer.append(data)
            self._notify()
        if self._pending is not None:
            self._schedule()
        self._regulate()

    def end(self) -> None:
        if self._machine.state is not Body.OPEN:
            return
        with self._lock:
            self._machine.to(Body.EOF)
            self._notify()
        if self._pending is not None:
            self._schedule()
        # Nothing more for this body: what follows on the connection is the
        # channel's business, even if the app never reads what is buffered.
        self._regulate()

    def lose(self, reason: BaseException) -> None:
        if self._machine.state is Body.OPEN:
            self._truncate(BodyTruncated(f"the client went away after {self.received} bytes of body"))

    def cut(self, reason: BaseException) -> None:
        """
        The exchange is ending for C{reason} (the request timeout) while
        the body is still arriving: a C{wsgi.input} read waiting for bytes
        (a worker thread, a greenlet), and any later one, raises C{reason}
        rather than wait for bytes nobody will use.  Reactor thread.
        """
        if self._machine.state is not Body.OPEN:
            return
        with self._lock:
            self._reason = reason
            self._machine.to(Body.TRUNCATED)
            self._buffer.clear()
            self._notify()

    def _truncate(self, reason: BaseException) -> None:
        with self._lock:
            self._reason = reason
            self._machine.to(Body.TRUNCATED)
            self._buffer.clear()
            self._notify()
        if self._pending is not None:
            # At once, not later: the exchange ends right after, and a
            # pending on_get must learn of the truncation before it does.
            self._deliver()

    def _notify(self) -> None:
        """
        Wake readers waiting for bytes: worker threads now, greenlets on the
        next reactor turn (never inside the connection's dataReceived).
        """
        self._lock.notify_all()
        if self._changed:
            waiting, self._changed = self._changed, []
            for waiter in waiting:
                self._reactor.callLater(0, waiter.callback, None)

    def changed(self) -> Deferred[None]:
        """
        Fires after the next change: bytes in, the end, a truncation, the
        close.  For readers that wait by switching, not by blocking.
        """
        waiter: Deferred[None] = Deferred()
        self._changed.append(waiter)
        return waiter

    def _regulate(self) -> None:
        """
        Pause reading while the unread buffer is over the high-water mark,
        resume below it.  Reactor thread only.
        """
        over = len(self._buffer) >= self._high_water and self._machine.state is Body.OPEN
        if over and self._reading:
            self._reading = False
            self._flow.pause_reading()
        elif not over and not self._reading:
            self._reading = True
            self._flow.resume_reading()

    # -- the application's side -----------------------------------------------

    def ask(self) -> None:
        """
        The application wants body bytes: the first time, send C{100
        Continue} if the client waits for it.  Any thread.
        """
        if not self._asked:
            self._asked = True
            _in_reactor(self._reactor, self._flow.send_continue)

    def request(self, length: int, callback: Callable[[bytes], Any], errback: Callable[[BaseException], Any]) -> None:
        self.ask()
        self._pending = (length, callback, errback)
        if self._buffer or self._machine.state is not Body.OPEN:
            self._schedule()

    def _schedule(self) -> None:
        self._reactor.callLater(0, self._deliver)

    def _deliver(self) -> None:
        pending = self._pending
        if pending is None:
            return
        length, callback, errback = pending
        state = self._machine.state
        if state is Body.TRUNCATED:
            self._pending = None
            assert self._reason is not None  # set with the TRUNCATED state
            errback(self._reason)
            return
        data = self.take(length)
        if data or state is not Body.OPEN:
            self._pending = None
            callback(data)

    def take(self, length: int) -> bytes:
        """
        Remove and return up to C{length} buffered bytes (all for a
        negative length), reading the connection again if that brought the
        buffer under the high-water mark.  Any thread.
        """
        with self._lock:
            data = self._buffer.take(length)
        if data and not self._reading:
            _in_reactor(self._reactor, self._regulate)
        return data

    def close(self) -> None:
        with self._lock:
            if self._machine.state is not Body.CLOSED:
                self._machine.to(Body.CLOSED)
            self._buffer.clear()
            self._pending = None
            self._notify()
        # It calls the exchange, which holds this body.
        self._overflow = _ignore


def _ignore(reason: BaseException) -> None:
    pass


def _in_reactor(reactor: Any, f: Callable[[], Any]) -> None:
    if isInIOThread():
        f()
    else:
        reactor.callFromThread(f)


class StreamingInput:
    """
    C{wsgi.input} over a L{StreamingBody}: file semantics (PEP 3333) that
    block only a worker thread.  In the reactor thread a read that cannot be
    answered from what has arrived raises L{WouldBlock} rather than block the
    server or return a short read.
    """

    __slots__ = ("_body", "__weakref__")

    def __init__(self, body: StreamingBody) -> None:
        self._body = body

    def _check(self) -> None:
        # The reason outlives the TRUNCATED state: the exchange may close the
        # body before a blocked worker wakes up to see it.
        if self._body._reason is not None:
            raise self._body._reason

    def _open(self) -> bool:
        return self._body._machine.state is Body.OPEN

    def _next_piece(self, limit: int, line: bool) -> tuple[bytes, bool]:
        """
        Take the next piece of a read (C{limit} bytes at most, negative for
        no limit; up to a newline if C{line}), and whether the read is
        complete.  Called with the body's lock held.

        In the reactor thread a piece that is not complete yet raises
        L{WouldBlock}, so nothing is consumed by a read that fails.  A worker
        thread or greenlet waits for bytes, takes what there is and reports it
        incomplete, so a large read never keeps the connection paused.
        """
        body = self._body
        buffer = body._buffer
        if not body._runner.can_wait():
            self._check()
            newline = buffer.find(b"\n") if line else -1
            if newline >= 0 and (limit < 0 or newline < limit):
                return body.take(newline + 1), True
            if self._open() and (limit < 0 or len(buffer) < limit):
                raise WouldBlock("wsgi.input read would block the reactor; use on_get, or a threadpool")
            return body.take(limit), True
        while not buffer and self._open():
            if isInIOThread():
                body._runner.wait(body.changed)  # a greenlet: switch away
            else:
                body._lock.wait()
        self._check()
        newline = buffer.find(b"\n") if line else -1
        if newline >= 0 and (limit < 0 or newline < limit):
            return body.take(newline + 1), True
        piece = body.take(limit)
        return piece, (not piece and not self._open()) or (limit >= 0 and len(piece) == limit)

    def _read(self, size: Optional[int], line: bool) -> bytes:
        body = self._body
        body.ask()
        limit = -1 if size is None or size < 0 else size
        if limit == 0:
            return b""
        chunks = []
        with body._lock:
            while True:
                piece, complete = self._next_piece(limit, line)
                chunks.append(piece)
                if complete:
                    break
                if limit > 0:
                    limit -= len(piece)
        return b"".join(chunks)

    def read(self, size: Optional[int] = -1) -> bytes:
        return self._read(size, line=False)

    def readline(self, size: Optional[int] = -1) -> bytes:
        return self._read(size, line=True)

    def readlines(self, hint: Optional[int] = -1) -> list[bytes]:
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> "StreamingInput":
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


@implementer(IRequestBody, IBodySink)
class SpooledBody:
    """
    A body collected whole before the application is called: in memory up to
    C{spool} bytes, then in a temporary file.  For plain (blocking-read) apps
    in the reactor thread, as nginx's mod_wsgi does.
    """

    def __init__(
        self,
        reactor: Any,
        flow: IBodyFlow,
        *,
        max_body: Optional[int] = None,
        spool: int = SPOOL,
        overflow: Callable[[BaseException], Any] = lambda reason: None,
    ) -> None:
        self._reactor = reactor
        self._max_body = max_body
        self._overflow = overflow
        self._machine = Machine(Body.OPEN, _BODY_EDGES)
        self._complete: Deferred[None] = Deferred()
        self.received = 0
        self.file = SpooledTemporaryFile(max_size=spool)
        self._buffered = BufferedBody(reactor, self.file)
        flow.send_continue()

    @property
    def state(self) -> Body:
        return self._machine.state

    def ready(self) -> Deferred[None]:
        """
        Fires when the whole body is in; fails with L{BodyTruncated} (or
        L{BodyTooLarge}) if it never will be.
        """
        return self._complete

    def feed(self, data: bytes) -> None:
        if self._machine.state is not Body.OPEN:
            return
        self.received += len(data)
        if self._max_body is not None and self.received > self._max_body:
            reason = BodyTooLarge(f"request body over the limit of {self._max_body} bytes")
            self._machine.to(Body.TRUNCATED)
            self._overflow(reason)
            self._complete.errback(reason)
            return
        self.file.write(data)

    def end(self) -> None:
        if self._machine.state is Body.OPEN:
            self._machine.to(Body.EOF)
            self.file.seek(0)
            self._complete.callback(None)

    def lose(self, reason: BaseException) -> None:
        if self._machine.state is Body.OPEN:
            self._machine.to(Body.TRUNCATED)
            self._complete.errback(BodyTruncated(f"the client went away after {self.received} bytes of body"))

    def request(self, length: int, callback: Callable[[bytes], Any], errback: Callable[[BaseException], Any]) -> None:
        self._buffered.request(length, callback, errback)

    def close(self) -> None:
        state = self._machine.state
        if state is Body.OPEN:
            # It will never fire now: drop what waits on it (the exchange's
            # call of the application, which holds this body).
            self._complete = Deferred()
        if state is not Body.CLOSED:
            self._machine.to(Body.CLOSED)
        self.file.close()
        # It calls the exchange, which holds this body.
        self._overflow = _ignore
