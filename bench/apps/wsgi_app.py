"""
The plain PEP 3333 application served by the WSGI anchors: gunicorn,
waitress, gevent.pywsgi and twisted.web.wsgi.WSGIResource.

    GET  /hello              14 bytes
    GET  /stream?size=N      N bytes from a generator, 64 KiB fresh blocks
    POST /upload             reads wsgi.input in 64 KiB reads, answers the count
    GET  /wait               a long-poll: blocks this thread (or greenlet)
                             until a broadcast, answers 15 bytes
    GET  /waiting            how many long-polls are held right now
    GET  /publish?TOKEN      broadcasts TOKEN to every held long-poll

A UDP datagram to BENCH_TRIGGER_PORT broadcasts too (see payload.py).
Under gevent the module is imported after monkey.patch_all(), so the
condition and the trigger thread are cooperative.
"""

import socket
import threading

from payload import (
    HELLO,
    HELLO_HEADERS,
    TRIGGER_PORT,
    WAIT_TIMEOUT,
    chunk_sizes,
    event,
    fresh_chunk,
    stream_headers,
    stream_size,
)

_cond = threading.Condition()
_state = {"gen": 0, "msg": b"", "waiting": 0}


def publish(token):
    with _cond:
        _state["gen"] += 1
        _state["msg"] = event(token)
        held = _state["waiting"]
        _cond.notify_all()
    return held


def _text(start_response, body):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hello":
        start_response("200 OK", HELLO_HEADERS)
        return [HELLO]
    if path == "/stream":
        size = stream_size(environ.get("QUERY_STRING", ""))
        start_response("200 OK", stream_headers(size))
        return (fresh_chunk(n) for n in chunk_sizes(size))
    if path == "/upload":
        read = environ["wsgi.input"].read
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
        total = 0
        while remaining > 0:
            data = read(min(65536, remaining))
            if not data:
                break
            total += len(data)
            remaining -= len(data)
        return _text(start_response, b"%d\n" % total)
    if path == "/wait":
        with _cond:
            gen = _state["gen"]
            _state["waiting"] += 1
            try:
                answered = _cond.wait_for(lambda: _state["gen"] != gen, timeout=WAIT_TIMEOUT)
            finally:
                _state["waiting"] -= 1
            msg = _state["msg"] if answered else b"timeout\n"
        return _text(start_response, msg)
    if path == "/waiting":
        return _text(start_response, b"%d\n" % _state["waiting"])
    if path == "/publish":
        held = publish(environ.get("QUERY_STRING", "").encode("latin-1"))
        return _text(start_response, b"delivered to %d\n" % held)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return []


def _trigger_loop(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    while True:
        data, _ = sock.recvfrom(256)
        publish(data.strip())


if TRIGGER_PORT:
    threading.Thread(target=_trigger_loop, args=(TRIGGER_PORT,), name="bench-trigger", daemon=True).start()
