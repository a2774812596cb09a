"""
Run child processes from trial tests without blocking the reactor.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

import txawsgi


def scriptsDir() -> Path:
    """
    The directory holding this interpreter's console scripts (the venv's
    C{bin}).
    """
    return Path(sys.executable).parent


def script(name: str) -> Optional[str]:
    """
    The path of console script C{name} next to this interpreter, if any.
    """
    path = scriptsDir() / name
    return str(path) if path.exists() else None


def sourceEnv() -> Dict[str, str]:
    """
    An environment whose children import the same txawsgi (and dropin) as
    this test process, wherever that came from.
    """
    env = dict(os.environ)
    root = str(Path(txawsgi.__file__).resolve().parent.parent)
    extra = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root if not extra else os.pathsep.join([root, extra])
    return env


def installedEnv() -> Dict[str, str]:
    """
    An environment whose children only see what is installed.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child(ProcessProtocol):
    """
    A spawned process: collects its output; C{ended} fires with its exit
    code (or C{-signal} when killed by a signal).
    """

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred[int] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if reason.check(ProcessDone):
            self.ended.callback(0)
        else:
            code = reason.value.exitCode
            self.ended.callback(code if code is not None else -reason.value.signal)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def output(self) -> str:
        """
        Both streams, for assertion messages.
        """
        return (
            f"--- stdout ---\n{self.out.decode(errors='replace')}"
            f"--- stderr ---\n{self.err.decode(errors='replace')}"
        )


def spawn(argv: Sequence[str], env: Dict[str, str], cwd: str) -> Child:
    """
    Start C{argv} with stdin closed.
    """
    child = Child()
    reactor.spawnProcess(  # type: ignore[attr-defined]
        child,
        argv[0],
        list(argv),
        env=env,
        path=cwd,
        childFDs={0: "w", 1: "r", 2: "r"},
    )
    child.transport.closeStdin()
    return child


async def run(
    argv: List[str], env: Dict[str, str], cwd: str
) -> Tuple[str, str, int]:
    """
    Run a short command to completion: (stdout, stderr, exit code).
    """
    child = spawn(argv, env, cwd)
    code = await child.ended
    return (
        child.out.decode(errors="replace"),
        child.err.decode(errors="replace"),
        code,
    )
