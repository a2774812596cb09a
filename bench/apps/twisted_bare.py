"""
The bare twisted.web anchor: one leaf resource, no WSGI at all.

    GET  /hello              14 bytes returned from render_GET
    GET  /stream?size=N      N bytes from a pull producer (one fresh 64 KiB
                             block each time the transport asks), as
                             twisted.web.static.File serves files
    POST /upload             Twisted buffered the body (request.content, a
                             temp file); read it back in 64 KiB reads
    GET  /wait               NOT_DONE_YET, held until a broadcast
    GET  /waiting            how many are held
    GET  /publish?TOKEN      broadcast

Served by twisted_bare.tac under the same `twistd -n` as txawsgi, so the
logging is identical (no request log unless BENCH_ACCESS_LOG=1).
"""

from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import DatagramProtocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from payload import HELLO, gc_stats, TRIGGER_PORT, chunk_sizes, event, fresh_chunk, stream_size

_waiting = set()


def publish(token):
    msg = event(token)
    held = list(_waiting)
    _waiting.clear()
    for request in held:
        request.write(msg)
        request.finish()
    return len(held)


@implementer(IPullProducer)
class _Pull:
    def __init__(self, request, size):
        self.request = request
        self.blocks = chunk_sizes(size)
        self.done = False

    def resumeProducing(self):
        if self.done:
            return
        n = next(self.blocks, None)
        if n is None:
            self.done = True
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.request.write(fresh_chunk(n))

    def stopProducing(self):
        self.done = True


class Root(Resource):
    isLeaf = True

    def render_GET(self, request):
        path = request.path
        if path == b"/hello":
            request.setHeader(b"content-type", b"text/plain")
            return HELLO
        if path == b"/stream":
            size = stream_size(request.uri.partition(b"?")[2])
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"content-length", b"%d" % size)
            producer = _Pull(request, size)
            request.notifyFinish().addErrback(lambda f: producer.stopProducing())
            request.registerProducer(producer, False)
            return NOT_DONE_YET
        if path == b"/wait":
            request.setHeader(b"content-type", b"text/plain")
            request.setHeader(b"content-length", b"15")
            _waiting.add(request)
            request.notifyFinish().addErrback(lambda f: _waiting.discard(request))
            return NOT_DONE_YET
        if path == b"/waiting":
            request.setHeader(b"content-type", b"text/plain")
            return b"%d\n" % len(_waiting)
        if path == b"/gc":
            return gc_stats()
        if path == b"/publish":
            request.setHeader(b"content-type", b"text/plain")
            return b"delivered to %d\n" % publish(request.uri.partition(b"?")[2])
        request.setResponseCode(404)
        return b""

    def render_POST(self, request):
        if request.path != b"/upload":
            request.setResponseCode(404)
            return b""
        content = request.content
        content.seek(0)
        total = 0
        while True:
            data = content.read(65536)
            if not data:
                break
            total += len(data)
        request.setHeader(b"content-type", b"text/plain")
        return b"%d\n" % total


class _Trigger(DatagramProtocol):
    def datagramReceived(self, data, addr):
        publish(data.strip())


def listen_trigger(reactor):
    if TRIGGER_PORT:
        reactor.listenUDP(TRIGGER_PORT, _Trigger(), interface="127.0.0.1")
