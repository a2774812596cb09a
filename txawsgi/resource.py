"""
L{AWSGIResource}: a Twisted resource that serves a WSGI application.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.task import Cooperator
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from txawsgi.exchange import Container, Exchange, WSGIApplication
from txawsgi.interfaces import IAWSGIResource


@implementer(IAWSGIResource)
class AWSGIResource(Resource):
    """
    Serve a PEP 3333 application, asynchronously.

    Use it as a L{twisted.web.server.Site}'s root or as a child anywhere in a
    resource tree: C{SCRIPT_NAME} is the path that led here, C{PATH_INFO}
    the rest.

    Without a threadpool the application is called, and its iterable
    iterated, in the reactor thread: it must not block, and it gets Eby's
    controller (C{environ['awsgi.controller']}) to respond asynchronously.
    With a threadpool, calls into the application run in its workers, for
    applications that block; the controller works the same.

    @param reactor: the reactor serving requests.
    @param application: the WSGI application callable.
    @param threadpool: a started L{ThreadPool} for blocking applications, or
        L{None} to run in the reactor thread.
    @param stream_input: in the reactor thread, call the application as
        soon as the request headers are in (under an L{AWSGISite}) and let
        the body stream to C{on_get}; a C{wsgi.input} read that would block
        raises L{WouldBlock}.  Otherwise a plain application is called once
        the whole body is in.  Threadpool mode always streams.
    @param max_body: the largest request body accepted, in bytes; larger
        ones get a 413.  L{None} for no limit.
    """

    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        application: WSGIApplication,
        threadpool: Optional[ThreadPool] = None,
        *,
        stream_input: bool = False,
        max_body: Optional[int] = None,
    ) -> None:
        super().__init__()
        cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        self._container = Container(reactor, application, threadpool, cooperator, stream_input, max_body)

    def render(self, request: IRequest) -> Any:
        Exchange(self._container, request).start()
        return NOT_DONE_YET

    def getChildWithDefault(self, name: bytes, request: IRequest) -> "AWSGIResource":
        """
        Everything below this resource belongs to the application.
        """
        return self
