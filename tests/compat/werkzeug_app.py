"""
The compatibility routes in plain Werkzeug (routing map, request and
response objects).
"""

import json

from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect, send_file
from werkzeug.wrappers import Request, Response

from tests.compat.common import Boom, dumps, file_summary, lines, payload_path


def as_json(obj: object) -> Response:
    return Response(dumps(obj), mimetype="application/json")


def hello(request):
    return Response("hello\n", mimetype="text/plain")


def item(request, item):
    return as_json({"id": item})


def query(request):
    return as_json({key: request.args.getlist(key) for key in request.args})


def cookies(request):
    return as_json(dict(request.cookies))


def setcookie(request):
    response = Response("set\n", mimetype="text/plain")
    response.set_cookie("flavor", "oat")
    response.set_cookie("session", "abc", httponly=True)
    return response


def form(request):
    return as_json({key: request.form.getlist(key) for key in request.form})


def upload(request):
    f = request.files["file"]
    return Response(file_summary(request.form["title"], f.filename, f.read()), mimetype="application/json")


def echo_json(request):
    return as_json({"echo": json.loads(request.get_data())})


def stream(request):
    return Response(lines(), mimetype="text/plain")


def file(request):
    return send_file(payload_path(), request.environ, mimetype="application/octet-stream")


def go(request):
    return redirect("/hello")


def error(request):
    raise Boom("this view fails")


VIEWS = {view.__name__: view for view in (hello, item, query, cookies, setcookie, form, upload, echo_json, stream, file, go, error)}

url_map = Map(
    [
        Rule("/hello", endpoint="hello", methods=["GET"]),
        Rule("/items/<int:item>", endpoint="item", methods=["GET"]),
        Rule("/query", endpoint="query", methods=["GET"]),
        Rule("/cookies", endpoint="cookies", methods=["GET"]),
        Rule("/setcookie", endpoint="setcookie", methods=["GET"]),
        Rule("/form", endpoint="form", methods=["POST"]),
        Rule("/upload", endpoint="upload", methods=["POST"]),
        Rule("/json", endpoint="echo_json", methods=["POST"]),
        Rule("/stream", endpoint="stream", methods=["GET"]),
        Rule("/file", endpoint="file", methods=["GET"]),
        Rule("/redirect", endpoint="go", methods=["GET"]),
        Rule("/error", endpoint="error", methods=["GET"]),
    ]
)


@Request.application
def application(request):
    adapter = url_map.bind_to_environ(request.environ)
    try:
        endpoint, args = adapter.match()
        return VIEWS[endpoint](request, **args)
    except HTTPException as e:
        return e
    except Exception:
        return InternalServerError()
