"""
A raw ASGI 3 application (no framework) for uvicorn: the non-WSGI reference.
The same endpoints as the WSGI apps; the UDP trigger is opened at lifespan
startup.
"""

import asyncio

from payload import EVENT_LEN, HELLO, TRIGGER_PORT, chunk_sizes, event, fresh_chunk, stream_size

_waiters = set()

_TEXT = [(b"content-type", b"text/plain")]


def publish(token):
    msg = event(token)
    held = list(_waiters)
    _waiters.clear()
    for fut in held:
        if not fut.done():
            fut.set_result(msg)
    return len(held)


class _Trigger(asyncio.DatagramProtocol):
    def datagram_received(self, data, addr):
        publish(data.strip())


async def _text(send, body):
    await send({"type": "http.response.start", "status": 200,
                "headers": _TEXT + [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if TRIGGER_PORT:
                loop = asyncio.get_running_loop()
                await loop.create_datagram_endpoint(_Trigger, local_addr=("127.0.0.1", TRIGGER_PORT))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/hello":
        await _text(send, HELLO)
    elif path == "/stream":
        size = stream_size(scope.get("query_string", b""))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", b"%d" % size)]})
        for n in chunk_sizes(size):
            await send({"type": "http.response.body", "body": fresh_chunk(n), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/upload":
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await _text(send, b"%d\n" % total)
    elif path == "/wait":
        fut = asyncio.get_running_loop().create_future()
        _waiters.add(fut)
        try:
            msg = await fut
        finally:
            _waiters.discard(fut)
        await send({"type": "http.response.start", "status": 200,
                    "headers": _TEXT + [(b"content-length", b"%d" % EVENT_LEN)]})
        await send({"type": "http.response.body", "body": msg})
    elif path == "/waiting":
        await _text(send, b"%d\n" % len(_waiters))
    elif path == "/publish":
        await _text(send, b"delivered to %d\n" % publish(scope.get("query_string", b"")))
    else:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
