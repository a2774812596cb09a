"""
The built-in demo, served by C{twistd awsgi} when no C{--app} is given.

A page with a live clock, a chat room and a file upload whose progress is
reported as the bytes arrive, all pushed to the browser over server-sent
events from one controller per visitor: nothing here blocks, and a thousand
open pages cost a thousand idle controllers, not a thousand threads.

Routes::

    GET  /                   the page (?name=alice picks a chat name)
    GET  /events?client=ID   text/event-stream: clock ticks, chat messages,
                             and the progress of this page's uploads
    POST /send               a chat message: JSON {"name": ..., "text": ...}
                             (or plain UTF-8 text)
    POST /upload?client=ID&name=FILE
                             a file, read as it streams in (ctrl.on_get);
                             progress events go to page ID's event stream,
                             the answer is JSON {name, bytes, sha256}
    GET  /stream?n=5         n plain-text lines, one every half second
                             (try curl -N)

The application reads request bodies with C{ctrl.on_get}, so it asks for
them as they arrive (C{awsgi_stream_input}, see L{AWSGIResource}).
"""

from __future__ import annotations

import hashlib
import json
from html import escape
from typing import Any, Callable, Dict, Iterable, Optional
from urllib.parse import parse_qs

from twisted.internet.task import LoopingCall
from twisted.python.threadable import isInIOThread

#: The largest chat message body and upload accepted, in bytes.
MAX_MESSAGE = 4096
MAX_UPLOAD = 512 * 1024 * 1024

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>txawsgi demo</title>
<style>
body {{ font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; }}
#clock {{ font-size: 2em; font-variant-numeric: tabular-nums; margin: .2em 0; }}
#log {{ border: 1px solid #ccc; height: 9em; overflow-y: auto; padding: .5em; }}
#log p {{ margin: .2em 0; }}
.name {{ font-weight: bold; }}
progress {{ width: 14em; vertical-align: middle; }}
</style></head>
<body>
<h1>txawsgi</h1>
<p>A WSGI app running in Twisted's reactor. The clock, the chat and the upload
progress below are pushed over one streamed response (server-sent events) fed
by <code>environ['awsgi.controller']</code>.</p>
<p id="clock">--:--:--</p>
<p><span id="count">{count}</span> open pages. You are
<span id="me" class="name"></span>.</p>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" placeholder="Say something">
<button id="send">Send</button></form>
<h2>Upload</h2>
<form id="upload-form"><input id="file" type="file">
<button id="upload">Upload</button></form>
<p><progress id="progress" max="100" value="0"></progress>
<span id="progress-text"></span></p>
<p id="upload-result"></p>
<script>
const params = new URLSearchParams(location.search);
const me = params.get("name") || "guest-" + Math.floor(Math.random() * 10000);
const client = Math.random().toString(36).slice(2) + Date.now().toString(36);
document.getElementById("me").textContent = me;
const events = new EventSource("events?client=" + client);
events.addEventListener("open", () => document.body.dataset.connected = "yes");
events.addEventListener("tick", e => {{
  const d = JSON.parse(e.data);
  document.getElementById("clock").textContent = d.time;
  document.getElementById("count").textContent = d.listeners;
}});
events.addEventListener("message", e => {{
  const d = JSON.parse(e.data);
  const p = document.createElement("p");
  p.className = "message";
  const who = document.createElement("span");
  who.className = "name";
  who.textContent = d.name;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = d.text;
  p.append(who, ": ", text);
  const log = document.getElementById("log");
  log.appendChild(p);
  log.scrollTop = log.scrollHeight;
}});
events.addEventListener("progress", e => {{
  const d = JSON.parse(e.data);
  const bar = document.getElementById("progress");
  if (d.total) {{ bar.max = d.total; bar.value = d.received; }}
  document.getElementById("progress-text").textContent =
    d.name + ": " + d.received + (d.total ? " of " + d.total : "") + " bytes";
  document.body.dataset.progressEvents = (+(document.body.dataset.progressEvents || 0) + 1).toString();
}});
document.getElementById("form").addEventListener("submit", e => {{
  e.preventDefault();
  const input = document.getElementById("text");
  if (input.value) fetch("send", {{method: "POST",
    headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{name: me, text: input.value}})}});
  input.value = "";
}});
document.getElementById("upload-form").addEventListener("submit", async e => {{
  e.preventDefault();
  const file = document.getElementById("file").files[0];
  if (!file) return;
  const result = document.getElementById("upload-result");
  result.textContent = "uploading " + file.name + "...";
  const url = "upload?client=" + client + "&by=" + encodeURIComponent(me) +
    "&name=" + encodeURIComponent(file.name);
  const response = await fetch(url, {{method: "POST", body: file}});
  const d = await response.json();
  result.textContent = response.ok
    ? d.name + ": " + d.bytes + " bytes, sha256 " + d.sha256
    : "upload failed: " + d.error;
  result.dataset.done = response.ok ? "ok" : "failed";
}});
</script>
</body></html>
"""


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode("utf-8")


def _query(environ: dict) -> Dict[str, str]:
    return {key: values[0] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}


class Room:
    """
    The visitors' event streams, and the clock that ticks while any is open.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._listeners: set[Any] = set()
        self._clients: Dict[str, Any] = {}
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = clock

    def __len__(self) -> int:
        return len(self._listeners)

    def join(self, controller: Any, client: Optional[str] = None) -> None:
        """
        Add a visitor's event stream; C{client} names it for the progress
        of its uploads.
        """
        self._listeners.add(controller)
        if client:
            self._clients[client] = controller
        controller.on_close(lambda reason: self._leave(controller, client))
        if not self._ticker.running:
            self._ticker.start(1.0, now=False)
        controller.put(b"retry: 2000\n\n")
        self._send_tick(controller)

    def _leave(self, controller: Any, client: Optional[str]) -> None:
        self._listeners.discard(controller)
        if client and self._clients.get(client) is controller:
            del self._clients[client]
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

    def say(self, name: str, text: str) -> None:
        """
        Send a chat message to everyone.
        """
        message = _event("message", {"name": name, "text": text})
        for controller in list(self._listeners):
            controller.put(message)

    def progress(self, client: Optional[str], data: Dict[str, Any]) -> None:
        """
        Tell the page C{client} how its upload is going (if it is listening
        and keeping up: a progress report can be skipped, the next one says
        more).
        """
        controller = self._clients.get(client or "")
        if controller is not None and controller.writable:
            controller.put(_event("progress", data))


def _in_reactor(environ: dict, f: Callable[..., Any], *args: Any) -> None:
    """
    Run C{f} in the reactor thread: the room and its clock live there, and
    with C{--threads} the application is called in a worker.
    """
    if isInIOThread():
        f(*args)
    else:
        environ["awsgi.reactor"].callFromThread(f, *args)


def _read_body(controller: Any, limit: int, done: Callable[[Optional[bytes]], Any]) -> None:
    """
    Collect a small request body with C{on_get}: C{done(body)}, or
    C{done(None)} if it is over C{limit} bytes or was cut short.
    """
    pieces: list[bytes] = []
    size = [0]

    def got(data: bytes) -> None:
        if not data:
            done(b"".join(pieces))
            return
        size[0] += len(data)
        if size[0] > limit:
            done(None)
            return
        pieces.append(data)
        controller.on_get(65536, got, lost)

    def lost(reason: BaseException) -> None:
        done(None)

    controller.on_get(65536, got, lost)


def _json_response(start_response: Callable[..., Any], controller: Any, status: str, data: Any) -> None:
    body = json.dumps(data).encode("utf-8") + b"\n"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    controller.put(body)
    controller.finish()


def _send(environ: dict, start_response: Callable[..., Any], room: Room) -> Any:
    """
    POST /send: a chat message, read with C{on_get}.
    """
    controller = environ["awsgi.controller"](environ)
    json_body = environ.get("CONTENT_TYPE", "").startswith("application/json")

    def received(body: Optional[bytes]) -> None:
        if controller.closed:
            return
        if body is None:
            start_response("413 Payload Too Large", [("Content-Length", "0")])
            controller.finish()
            return
        name, text = "anonymous", body.decode("utf-8", "replace")
        if json_body:
            try:
                message = json.loads(text)
                name = str(message.get("name") or name)[:40]
                text = str(message.get("text") or "")
            except (ValueError, AttributeError):
                text = ""
        text = text.strip()[:1000]
        if text:
            room.say(name, text)
        start_response("204 No Content", [])
        controller.finish()

    _read_body(controller, MAX_MESSAGE, received)
    return controller


def _upload(environ: dict, start_response: Callable[..., Any], room: Room) -> Any:
    """
    POST /upload: hash a file as it streams in, reporting progress to the
    uploader's page; answer with its size and SHA-256.
    """
    controller = environ["awsgi.controller"](environ)
    query = _query(environ)
    client = query.get("client")
    name = query.get("name", "upload")[:200]
    by = query.get("by", "someone")[:40]
    try:
        total: Optional[int] = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        total = None
    if total is not None and total > MAX_UPLOAD:
        _json_response(start_response, controller, "413 Payload Too Large", {"error": f"over {MAX_UPLOAD} bytes"})
        return controller
    digest = hashlib.sha256()
    state = {"received": 0, "reported": -1}

    def report(final: bool = False) -> None:
        received = state["received"]
        # At most one report per percent (or per 64 KiB without a length).
        step = max(1, (total or 0) // 100) if total else 65536
        if received != state["reported"] and (final or received // step != state["reported"] // step):
            state["reported"] = received
            room.progress(client, {"name": name, "received": received, "total": total})

    def got(data: bytes) -> None:
        if controller.closed:
            return
        if not data:
            report(final=True)
            size = state["received"]
            room.say(by, f"uploaded {name} ({size} bytes)")
            _json_response(
                start_response, controller, "200 OK", {"name": name, "bytes": size, "sha256": digest.hexdigest()}
            )
            return
        state["received"] += len(data)
        if state["received"] > MAX_UPLOAD:
            _json_response(start_response, controller, "413 Payload Too Large", {"error": f"over {MAX_UPLOAD} bytes"})
            return
        digest.update(data)
        report()
        controller.on_get(65536, got, lost)

    def lost(reason: BaseException) -> None:
        # The uploader went away: nothing to answer.
        room.progress(client, {"name": name, "received": state["received"], "total": total, "failed": True})

    controller.on_get(65536, got, lost)
    return controller


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
            start_response(
                "200 OK",
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-cache"),
                ],
            )
            return [body]
        if path == "/events" and method == "GET":
            controller = environ["awsgi.controller"](environ)
            start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
            _in_reactor(environ, room(environ).join, controller, _query(environ).get("client"))
            return controller
        if path == "/send" and method == "POST":
            return _send(environ, start_response, room(environ))
        if path == "/upload" and method == "POST":
            return _upload(environ, start_response, room(environ))
        if path == "/stream" and method == "GET":
            return _stream(environ, start_response)
        body = b"Not Found\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    # Bodies are read with on_get: take them as they arrive.
    application.awsgi_stream_input = True  # type: ignore[attr-defined]
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
