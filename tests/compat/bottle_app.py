"""
The compatibility routes in Bottle.
"""

import os

import bottle
from bottle import HTTPResponse, redirect, request, response, static_file

from tests.compat.common import Boom, dumps, file_summary, lines, payload_path

app = bottle.Bottle()


def as_json(obj: object) -> str:
    response.content_type = "application/json"
    return dumps(obj)


@app.get("/hello")
def hello():
    response.content_type = "text/plain"
    return "hello\n"


@app.get("/items/<item:int>")
def item(item):
    return as_json({"id": item})


@app.get("/query")
def query():
    return as_json({key: request.query.getall(key) for key in request.query})


@app.get("/cookies")
def cookies():
    return as_json({key: request.cookies[key] for key in request.cookies})


@app.get("/setcookie")
def setcookie():
    response.content_type = "text/plain"
    response.set_cookie("flavor", "oat", path="/")
    response.set_cookie("session", "abc", path="/", httponly=True)
    return "set\n"


@app.post("/form")
def form():
    return as_json({key: request.forms.getall(key) for key in request.forms})


@app.post("/upload")
def upload():
    f = request.files.get("file")
    return HTTPResponse(
        file_summary(request.forms.get("title"), f.raw_filename, f.file.read()),
        headers={"Content-Type": "application/json"},
    )


@app.post("/json")
def echo_json():
    return as_json({"echo": request.json})


@app.get("/stream")
def stream():
    response.content_type = "text/plain"
    return (line.encode() for line in lines())


@app.get("/file")
def file():
    path = payload_path()
    return static_file(os.path.basename(path), root=os.path.dirname(path), mimetype="application/octet-stream")


@app.get("/redirect")
def go():
    redirect("/hello")


@app.get("/error")
def error():
    raise Boom("this view fails")


application = app
