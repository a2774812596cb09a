"""
The compatibility routes in Falcon.
"""

import os

import falcon

from tests.compat.common import Boom, dumps, file_summary, lines, payload_path


def as_json(resp, obj):
    resp.content_type = "application/json"
    resp.text = dumps(obj)


class Hello:
    def on_get(self, req, resp):
        resp.content_type = "text/plain"
        resp.text = "hello\n"


class Item:
    def on_get(self, req, resp, item):
        as_json(resp, {"id": item})


class Query:
    def on_get(self, req, resp):
        as_json(resp, {key: req.get_param_as_list(key) for key in req.params})


class Cookies:
    def on_get(self, req, resp):
        as_json(resp, dict(req.cookies))


class SetCookie:
    def on_get(self, req, resp):
        resp.content_type = "text/plain"
        resp.text = "set\n"
        resp.set_cookie("flavor", "oat", path="/", secure=False, http_only=False)
        resp.set_cookie("session", "abc", path="/", secure=False, http_only=True)


class Form:
    def on_post(self, req, resp):
        media = req.get_media()
        as_json(resp, {key: value if isinstance(value, list) else [value] for key, value in media.items()})


class Upload:
    def on_post(self, req, resp):
        title = filename = data = None
        for part in req.get_media():
            if part.name == "title":
                title = part.text
            elif part.name == "file":
                filename, data = part.filename, part.data
        resp.content_type = "application/json"
        resp.text = file_summary(title, filename, data)


class Json:
    def on_post(self, req, resp):
        as_json(resp, {"echo": req.get_media()})


class Stream:
    def on_get(self, req, resp):
        resp.content_type = "text/plain"
        resp.stream = (line.encode() for line in lines())


class File:
    def on_get(self, req, resp):
        path = payload_path()
        resp.content_type = "application/octet-stream"
        resp.stream = open(path, "rb")
        resp.content_length = os.path.getsize(path)


class Redirect:
    def on_get(self, req, resp):
        raise falcon.HTTPFound("/hello")


class Error:
    def on_get(self, req, resp):
        raise Boom("this view fails")


app = falcon.App()
app.add_route("/hello", Hello())
app.add_route("/items/{item:int}", Item())
app.add_route("/query", Query())
app.add_route("/cookies", Cookies())
app.add_route("/setcookie", SetCookie())
app.add_route("/form", Form())
app.add_route("/upload", Upload())
app.add_route("/json", Json())
app.add_route("/stream", Stream())
app.add_route("/file", File())
app.add_route("/redirect", Redirect())
app.add_route("/error", Error())

application = app
