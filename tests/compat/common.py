"""
What the compatibility apps share: the file they serve, and JSON output
that is byte-for-byte reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from typing import Any, Iterator

#: Size of the served file: several of txawsgi's file_wrapper blocks.
PAYLOAD_SIZE = 300 * 1024


def payload_path() -> str:
    """
    A file of deterministic bytes, the same in every process (written once,
    atomically, into the temporary directory).
    """
    path = os.path.join(tempfile.gettempdir(), f"txawsgi-compat-payload-{PAYLOAD_SIZE}.bin")
    if not os.path.exists(path) or os.path.getsize(path) != PAYLOAD_SIZE:
        data = random.Random(3333).randbytes(PAYLOAD_SIZE)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def dumps(obj: Any) -> str:
    """
    JSON with sorted keys, so both sides produce the same bytes.
    """
    return json.dumps(obj, sort_keys=True)


def file_summary(title: Any, filename: Any, data: bytes) -> str:
    return dumps({"title": title, "filename": filename, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


def lines() -> Iterator[str]:
    """
    The streamed response, a line at a time.
    """
    for i in range(5):
        yield f"line {i}\n"


class Boom(RuntimeError):
    """
    Raised by every app's /error view.
    """
