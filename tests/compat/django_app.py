"""
The compatibility routes in Django (a single-module project).
"""

import json
import logging

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="txawsgi-compat",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import FileResponse, HttpResponse, HttpResponseRedirect, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.http import require_GET, require_POST  # noqa: E402

from tests.compat.common import Boom, dumps, file_summary, lines, payload_path  # noqa: E402

# Unhandled view errors are logged by Django itself (the server sees a 500).
logging.getLogger("django.request").addHandler(logging.NullHandler())
logging.getLogger("django.request").propagate = False


def as_json(obj: object) -> HttpResponse:
    return HttpResponse(dumps(obj), content_type="application/json")


@require_GET
def hello(request):
    return HttpResponse("hello\n", content_type="text/plain")


@require_GET
def item(request, item):
    return as_json({"id": item})


@require_GET
def query(request):
    return as_json({key: values for key, values in request.GET.lists()})


@require_GET
def cookies(request):
    return as_json(dict(request.COOKIES))


@require_GET
def setcookie(request):
    response = HttpResponse("set\n", content_type="text/plain")
    response.set_cookie("flavor", "oat")
    response.set_cookie("session", "abc", httponly=True)
    return response


@require_POST
def form(request):
    return as_json({key: values for key, values in request.POST.lists()})


@require_POST
def upload(request):
    f = request.FILES["file"]
    return HttpResponse(file_summary(request.POST["title"], f.name, f.read()), content_type="application/json")


@require_POST
def echo_json(request):
    return as_json({"echo": json.loads(request.body)})


@require_GET
def stream(request):
    return StreamingHttpResponse(lines(), content_type="text/plain")


@require_GET
def file(request):
    return FileResponse(open(payload_path(), "rb"), content_type="application/octet-stream")


@require_GET
def go(request):
    return HttpResponseRedirect("/hello")


@require_GET
def error(request):
    raise Boom("this view fails")


urlpatterns = [
    path("hello", hello),
    path("items/<int:item>", item),
    path("query", query),
    path("cookies", cookies),
    path("setcookie", setcookie),
    path("form", form),
    path("upload", upload),
    path("json", echo_json),
    path("stream", stream),
    path("file", file),
    path("redirect", go),
    path("error", error),
]

application = get_wsgi_application()
