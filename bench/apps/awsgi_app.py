"""
The application served by txawsgi (reactor mode and --threads): the hello
path is plain PEP 3333; the others use the awsgi controller.

    GET  /hello              14 bytes, a plain list
    GET  /stream?size=N      N bytes put() in 64 KiB fresh blocks, pausing
                             on put() == False until on_drain
    POST /upload             the body read with on_get(65536, ...), answers
                             the count
    GET  /wait               a long-poll held on its controller (no thread)
    GET  /waiting            how many long-polls are held
    GET  /publish?TOKEN      broadcasts TOKEN to every held long-poll

A UDP datagram to BENCH_TRIGGER_PORT broadcasts too, in the reactor.
"""

import threading

from payload import gc_stats as _gc_stats

from payload import (
    EVENT_LEN,
    HELLO,
    HELLO_HEADERS,
    TRIGGER_PORT,
    chunk_sizes,
    event,
    fresh_chunk,
    stream_headers,
    stream_size,
)

_waiting = set()
_lock = threading.Lock()  # /wait runs in worker threads under --threads


def publish(token):
    msg = event(token)
    with _lock:
        held = list(_waiting)
        _waiting.clear()
    for ctrl in held:
        if not ctrl.closed:
            ctrl.put(msg)
            ctrl.finish()
    return len(held)


def _discard(ctrl):
    with _lock:
        _waiting.discard(ctrl)


def _text(start_response, body):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _stream(environ, start_response):
    size = stream_size(environ.get("QUERY_STRING", ""))
    ctrl = environ["awsgi.controller"](environ)
    start_response("200 OK", stream_headers(size))
    blocks = chunk_sizes(size)

    def produce():
        for n in blocks:
            if ctrl.closed:
                return
            if not ctrl.put(fresh_chunk(n)):
                ctrl.on_drain(produce)
                return
        if not ctrl.closed:
            ctrl.finish()

    # callFromThread: the app may be running in a worker (--threads).
    environ["awsgi.reactor"].callFromThread(produce)
    return ctrl


def _upload(environ, start_response):
    ctrl = environ["awsgi.controller"](environ)
    start_response("200 OK", [("Content-Type", "text/plain")])
    total = [0]

    def got(data):
        if data:
            total[0] += len(data)
            ctrl.on_get(65536, got)
        else:
            ctrl.put(b"%d\n" % total[0])
            ctrl.finish()

    ctrl.on_get(65536, got)
    return ctrl


def _wait(environ, start_response):
    ctrl = environ["awsgi.controller"](environ)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(EVENT_LEN))])
    with _lock:
        _waiting.add(ctrl)
    ctrl.on_close(lambda reason: _discard(ctrl))
    return ctrl


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hello":
        start_response("200 OK", HELLO_HEADERS)
        return [HELLO]
    if path == "/stream":
        return _stream(environ, start_response)
    if path == "/upload":
        return _upload(environ, start_response)
    if path == "/wait":
        return _wait(environ, start_response)
    if path == "/waiting":
        return _text(start_response, b"%d\n" % len(_waiting))
    if path == "/gc":
        return _text(start_response, _gc_stats())
    if path == "/publish":
        token = environ.get("QUERY_STRING", "").encode("latin-1")
        reactor = environ["awsgi.reactor"]
        held = len(_waiting)
        reactor.callFromThread(publish, token)
        return _text(start_response, b"delivered to %d\n" % held)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return []


if TRIGGER_PORT:
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    class _Trigger(DatagramProtocol):
        def datagramReceived(self, data, addr):
            publish(data.strip())

    reactor.listenUDP(TRIGGER_PORT, _Trigger(), interface="127.0.0.1")
