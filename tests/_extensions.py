"""
Shared helpers for the tests of the Web-SIG asynchronous extensions
(C{tests/test_fdevent.py}, C{test_suspend.py}, C{test_greenlets.py},
C{test_coroutines.py}): middleware that copies the environ and wraps the
iterable, a hello route that proves the reactor is free, and the runnable
examples.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import time
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from .support import PROJECT_ROOT, ProcessHandle, RawClient, Server, project_env, sleep

#: How long "nothing happened" is watched for before it is believed.
QUIET = 0.2

HELLO = b"hello"


def get(path: bytes = b"/", *extra: bytes) -> bytes:
    """
    A complete HTTP/1.1 GET.
    """
    return b"GET " + path + b" HTTP/1.1\r\nHost: test\r\n" + b"".join(h + b"\r\n" for h in extra) + b"\r\n"


def with_hello(app: Callable[..., Any]) -> Callable[..., Any]:
    """
    C{app}, except that C{/hello} is answered at once with C{hello}.
    """

    def dispatch(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/hello":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))])
            return [HELLO]
        return app(environ, start_response)

    return dispatch


@inlineCallbacks
def fetch(server: Server, path: bytes = b"/") -> Any:
    """
    C{GET path} from C{server} on a fresh connection: the response.
    """
    client = yield RawClient.connect(server)
    client.send(get(path))
    [response] = yield client.wait_for_responses(1)
    return response


async def hello_while(server: Server, busy: Callable[[], bool], timeout: float = 2) -> float:
    """
    Ask C{server} for C{/hello} on a fresh connection, check that C{busy()}
    is still true once it has answered (the other requests were still
    waiting), and return how long the answer took.
    """
    assert busy(), "nothing is waiting yet"
    client = await RawClient.connect(server)
    started = time.monotonic()
    client.send(get(b"/hello"))
    [response] = await client.wait_for_responses(1, timeout=timeout)
    took = time.monotonic() - started
    assert response.code == 200 and response.body == HELLO, response
    assert busy(), "the other requests ended before hello was answered"
    await client.close()
    return took


async def stalled_download(testcase: TestCase, server: Server, blocks: List[bytes], progress: List[int]) -> Any:
    """
    C{GET /} from C{server} with a client that does not read: the
    application's progress (C{progress[0]}, blocks written) stalls before
    half of C{blocks} while a hello is answered promptly; then the client
    reads, and gets C{blocks} whole and in order: the response.
    """
    client = await RawClient.connect(server, rcvbuf=16 * 1024)
    client.pause_reading()
    client.send(get())
    await sleep(QUIET)
    stalled = progress[0]
    await sleep(QUIET)
    testcase.assertEqual(progress[0], stalled)
    testcase.assertLess(stalled, len(blocks) // 2)
    took = await hello_while(server, lambda: progress[0] == stalled)
    testcase.assertLess(took, 1.0)
    client.resume_reading()
    [response] = await client.wait_for_responses(1, timeout=10)
    testcase.assertEqual(response.body, b"".join(blocks))
    return response


class Middleware:
    """
    WSGI middleware of the most ordinary kind: it hands the application a
    copy of the environ (with a key of its own) and wraps its iterable in a
    generator, passing every chunk -- C{b''} too -- through.

    @ivar chunks: every chunk that went through, in order.
    @ivar closed: how many times the wrapping generator ended (and closed
        the application's iterable).
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.chunks: List[bytes] = []
        self.closed = 0

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        copy = dict(environ)
        copy["test.middleware"] = True
        return self._wrap(self.app(copy, start_response))

    def _wrap(self, iterable: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in iterable:
                self.chunks.append(chunk)
                yield chunk
        finally:
            self.closed += 1
            close = getattr(iterable, "close", None)
            if close is not None:
                close()


class Pipe:
    """
    A non-blocking pipe whose ends are closed at cleanup (unless the test
    closed them first; a closed end is never closed twice, since its number
    may have been reused).
    """

    def __init__(self, testcase: TestCase) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self._open = {self.r, self.w}
        testcase.addCleanup(self.close)

    def close_read(self) -> None:
        self._close(self.r)

    def close_write(self) -> None:
        self._close(self.w)

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def close(self) -> None:
        for fd in list(self._open):
            self._close(fd)

    def fill(self) -> int:
        """
        Write until the pipe is full; return how many bytes went in.
        """
        total = 0
        while True:
            try:
                total += os.write(self.w, b"x" * 65536)
            except BlockingIOError:
                return total

    def drain(self) -> int:
        """
        Read everything buffered; return how many bytes.
        """
        total = 0
        while True:
            try:
                data = os.read(self.r, 65536)
            except BlockingIOError:
                return total
            if not data:
                return total
            total += len(data)


def load_example(name: str) -> ModuleType:
    """
    Import C{examples/<name>.py} (a fresh module object each time).
    """
    path = os.path.join(PROJECT_ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spy_on_hashing(testcase: TestCase, example: ModuleType) -> List[int]:
    """
    Patch C{example}'s C{hashlib.sha256} for the test: the list returned
    grows by the length of every piece the example hashes, as it hashes it.
    """
    pieces: List[int] = []
    real = hashlib.sha256

    class Spy:
        def __init__(self) -> None:
            self._h = real()

        def update(self, data: bytes) -> None:
            pieces.append(len(data))
            self._h.update(data)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    testcase.patch(example, "hashlib", SimpleNamespace(sha256=Spy))
    return pieces


async def run_example(testcase: TestCase, name: str) -> Tuple[ProcessHandle, int]:
    """
    Start C{python examples/<name>.py 0}; return it and the port it printed.
    """
    proc = ProcessHandle.start(
        testcase, [sys.executable, os.path.join(PROJECT_ROOT, "examples", f"{name}.py"), "0"], env=project_env()
    )
    pattern = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)/")
    found = await proc.wait_for_output(pattern.search, timeout=20)
    return proc, int(found.group(1))

