"""
The built-in demo, served by C{twistd awsgi} when no C{--app} is given.

A page with a live clock and a chat room, both pushed to the browser over
server-sent events from one controller per visitor: nothing here blocks, and
a thousand open pages cost a thousand idle controllers, not a thousand
threads.

Routes::

    GET  /            the page
    GET  /events      text/event-stream: clock ticks and chat messages
    POST /send        a chat message (the request body, UTF-8 text)
    GET  /stream?n=5  n plain-text lines, one every half second (try curl -N)
"""

from __future__ import annotations

import json
from html import escape
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

from twisted.internet.task import LoopingCall

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>txawsgi demo</title>
<style>
body {{ font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; }}
#clock {{ font-size: 2em; font-variant-numeric: tabular-nums; }}
#log {{ border: 1px solid #ccc; height: 14em; overflow-y: auto; padding: .5em; }}
</style></head>
<body>
<h1>txawsgi</h1>
<p>A WSGI app running in Twisted's reactor. The clock and the chat below are
pushed over one streamed response (server-sent events) fed by
<code>environ['awsgi.controller']</code>.</p>
<p id="clock">--:--:--</p>
<p><span id="count">{count}</span> open pages.</p>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" placeholder="Say something">
<button>Send</button></form>
<script>
const events = new EventSource("events");
events.addEventListener("tick", e => {{
  const d = JSON.parse(e.data);
  document.getElementById("clock").textContent = d.time;
  document.getElementById("count").textContent = d.listeners;
}});
events.addEventListener("message", e => {{
  const p = document.createElement("p");
  p.className = "message";
  p.textContent = JSON.parse(e.data).text;
  const log = document.getElementById("log");
  log.appendChild(p);
  log.scrollTop = log.scrollHeight;
}});
document.getElementById("form").addEventListener("submit", e => {{
  e.preventDefault();
  const input = document.getElementById("text");
  if (input.value) fetch("send", {{method: "POST", body: input.value}});
  input.value = "";
}});
</script>
</body></html>
"""


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode("utf-8")


class Room:
    """
    The visitors' event streams, and the clock that ticks while any is open.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._listeners: set[Any] = set()
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = clock

    def __len__(self) -> int:
        return len(self._listeners)

    def join(self, controller: Any) -> None:
        self._listeners.add(controller)
        controller.on_close(lambda reason: self._leave(controller))
        if not self._ticker.running:
            self._ticker.start(1.0, now=False)
        controller.put(b"retry: 2000\n\n")
        self._send_tick(controller)

    def _leave(self, controller: Any) -> None:
        self._listeners.discard(controller)
        if not self._listeners and self._ticker.running:
            self._ticker.stop()

    def _send_tick(self, controller: Any) -> None:
        seconds = int(self._clock.seconds())
        time = "%02d:%02d:%02d UTC" % (seconds // 3600 % 24, seconds // 60 % 60, seconds % 60)
        controller.put(_event("tick", {"time": time, "listeners": len(self._listeners)}))

    def tick(self) -> None:
        """
        Send the time to every listener that is keeping up; a slow reader
        misses ticks rather than making the server buffer them.
        """
        for controller in list(self._listeners):
            if controller.writable:
                self._send_tick(controller)

    def say(self, text: str) -> None:
        message = _event("message", {"text": text})
        for controller in list(self._listeners):
            controller.put(message)


def make_demo_app(clock: Any = None) -> Callable[[dict, Callable[..., Any]], Iterable[bytes]]:
    """
    Build a demo application with its own chat room.

    @param clock: the L{IReactorTime} for the clock; by default the reactor
        serving the first request (C{environ['awsgi.reactor']}).
    """
    rooms: list[Room] = []

    def room(environ: dict) -> Room:
        if not rooms:
            rooms.append(Room(clock if clock is not None else environ["awsgi.reactor"]))
        return rooms[0]

    def application(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ["PATH_INFO"] or "/"
        if path == "/" and method in ("GET", "HEAD"):
            body = _PAGE.format(count=escape(str(len(room(environ))))).encode("utf-8")
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/events" and method == "GET":
            controller = environ["awsgi.controller"](environ)
            start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
            room(environ).join(controller)
            return controller
        if path == "/send" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            text = environ["wsgi.input"].read(min(length, 4096)).decode("utf-8", "replace").strip()
            if text:
                room(environ).say(text)
            start_response("204 No Content", [])
            return []
        if path == "/stream" and method == "GET":
            return _stream(environ, start_response)
        body = b"Not Found\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return application


def _stream(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """
    C{n} lines, half a second apart, from a controller fed by the reactor.
    """
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        count = max(1, min(int(query.get("n", ["5"])[0]), 1000))
    except ValueError:
        count = 5
    reactor = environ["awsgi.reactor"]
    controller = environ["awsgi.controller"](environ)
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])

    def line(i: int) -> None:
        if controller.closed:
            return
        controller.put(b"line %d of %d\n" % (i, count))
        if i < count:
            reactor.callLater(0.5, line, i + 1)
        else:
            controller.finish()

    line(1)
    return controller


application = make_demo_app()
