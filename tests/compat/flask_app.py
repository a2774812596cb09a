"""
The compatibility routes in Flask.
"""

from flask import Flask, Response, redirect, request, send_file

from tests.compat.common import Boom, dumps, file_summary, lines, payload_path

app = Flask(__name__)


def as_json(obj: object) -> Response:
    return Response(dumps(obj), mimetype="application/json")


@app.get("/hello")
def hello() -> Response:
    return Response("hello\n", mimetype="text/plain")


@app.get("/items/<int:item>")
def item(item: int) -> Response:
    return as_json({"id": item})


@app.get("/query")
def query() -> Response:
    return as_json({key: request.args.getlist(key) for key in request.args})


@app.get("/cookies")
def cookies() -> Response:
    return as_json(dict(request.cookies))


@app.get("/setcookie")
def setcookie() -> Response:
    response = Response("set\n", mimetype="text/plain")
    response.set_cookie("flavor", "oat")
    response.set_cookie("session", "abc", httponly=True)
    return response


@app.post("/form")
def form() -> Response:
    return as_json({key: request.form.getlist(key) for key in request.form})


@app.post("/upload")
def upload() -> Response:
    f = request.files["file"]
    return Response(file_summary(request.form["title"], f.filename, f.read()), mimetype="application/json")


@app.post("/json")
def echo_json() -> Response:
    return as_json({"echo": request.get_json()})


@app.get("/stream")
def stream() -> Response:
    return Response(lines(), mimetype="text/plain")


@app.get("/file")
def file() -> Response:
    return send_file(payload_path(), mimetype="application/octet-stream")


@app.get("/redirect")
def go() -> Response:
    return redirect("/hello")


@app.get("/error")
def error() -> Response:
    raise Boom("this view fails")


application = app
