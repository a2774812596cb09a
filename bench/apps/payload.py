"""
What every benchmark application serves, so all servers send the same bytes.

Stdlib only: imported by the WSGI, AWSGI, Twisted and ASGI applications alike.
"""

import os
from urllib.parse import parse_qs

HELLO = b"Hello, World!\n"
HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]

#: Response bodies are sent in blocks of this size.  Each block is a fresh
#: bytes object (as a real application's would be), so a server that buffers
#: without bound really holds the memory.
CHUNK_SIZE = 65536
_CHUNK = bytearray(b"x" * CHUNK_SIZE)

#: How many bytes /stream sends without ?size=.
DEFAULT_STREAM = 64 * 1024 * 1024

#: A long-poll answer: b"event " + an 8-byte token + b"\n", always 15 bytes.
EVENT_LEN = 15

#: How long a blocking long-poll (threads) waits before answering "timeout".
WAIT_TIMEOUT = float(os.environ.get("BENCH_WAIT_TIMEOUT", "60"))

#: UDP port (on 127.0.0.1) on which a datagram with a token broadcasts to
#: every held long-poll: the event comes from outside, as from a message bus,
#: so it reaches even a server whose every thread is held.  Unset: no trigger.
TRIGGER_PORT = int(os.environ.get("BENCH_TRIGGER_PORT", "0") or 0)


def fresh_chunk(n=CHUNK_SIZE):
    """
    A new bytes object of C{n} bytes (n <= CHUNK_SIZE).
    """
    return bytes(_CHUNK[:n]) if n != CHUNK_SIZE else bytes(_CHUNK)


def chunk_sizes(size):
    """
    The block sizes that make up a body of C{size} bytes.
    """
    full, rest = divmod(size, CHUNK_SIZE)
    for _ in range(full):
        yield CHUNK_SIZE
    if rest:
        yield rest


def stream_size(query):
    """
    The ?size= of a query string (str or bytes), or the default.
    """
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    values = parse_qs(query).get("size")
    return int(values[0]) if values else DEFAULT_STREAM


def event(token):
    """
    The long-poll answer for a broadcast token (bytes, padded/cut to 8).
    """
    token = bytes(token)[:8].ljust(8, b"-")
    return b"event " + token + b"\n"


def stream_headers(size):
    return [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]


def gc_stats():
    """
    The garbage collector's counters, as JSON bytes (GET /gc: a diagnostic
    for bench/profile.py, not part of any scenario).
    """
    import gc
    import json

    return json.dumps({"stats": gc.get_stats(), "count": gc.get_count()}).encode()
