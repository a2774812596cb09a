"""
The compatibility routes in Pyramid.
"""

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound, HTTPInternalServerError
from pyramid.response import FileResponse, Response

from tests.compat.common import Boom, dumps, file_summary, lines, payload_path


def as_json(obj: object) -> Response:
    return Response(body=dumps(obj).encode(), content_type="application/json")


def hello(request):
    return Response("hello\n", content_type="text/plain")


def item(request):
    return as_json({"id": int(request.matchdict["item"])})


def query(request):
    return as_json({key: request.GET.getall(key) for key in request.GET})


def cookies(request):
    return as_json(dict(request.cookies))


def setcookie(request):
    response = Response("set\n", content_type="text/plain")
    response.set_cookie("flavor", "oat")
    response.set_cookie("session", "abc", httponly=True)
    return response


def form(request):
    return as_json({key: request.POST.getall(key) for key in request.POST})


def upload(request):
    f = request.POST["file"]
    summary = file_summary(request.POST["title"], f.filename, f.file.read())
    return Response(body=summary.encode(), content_type="application/json")


def echo_json(request):
    return as_json({"echo": request.json_body})


def stream(request):
    return Response(app_iter=(line.encode() for line in lines()), content_type="text/plain")


def file(request):
    return FileResponse(payload_path(), request=request, content_type="application/octet-stream")


def go(request):
    return HTTPFound(location="/hello")


def error(request):
    raise Boom("this view fails")


def failed(exc, request):
    """
    Pyramid lets an unhandled exception reach the server; an exception view
    is how a Pyramid app answers with its own error page.
    """
    return HTTPInternalServerError()


def make_app():
    with Configurator() as config:
        for name, pattern, view, method in [
            ("hello", "/hello", hello, "GET"),
            ("item", r"/items/{item:\d+}", item, "GET"),
            ("query", "/query", query, "GET"),
            ("cookies", "/cookies", cookies, "GET"),
            ("setcookie", "/setcookie", setcookie, "GET"),
            ("form", "/form", form, "POST"),
            ("upload", "/upload", upload, "POST"),
            ("json", "/json", echo_json, "POST"),
            ("stream", "/stream", stream, "GET"),
            ("file", "/file", file, "GET"),
            ("redirect", "/redirect", go, "GET"),
            ("error", "/error", error, "GET"),
        ]:
            config.add_route(name, pattern, request_method=method)
            config.add_view(view, route_name=name)
        config.add_exception_view(failed, context=Boom)
        return config.make_wsgi_app()


application = make_app()
