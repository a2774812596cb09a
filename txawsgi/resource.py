"""
L{AWSGIResource}: a Twisted resource that serves a WSGI application.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Cooperator
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from txawsgi.runners import GreenletRunner, IRunner, ReactorRunner, ThreadRunner
from txawsgi.exchange import Container, Exchange, WSGIApplication
from txawsgi.interfaces import IAWSGIResource, IDrainable, IExchangeObserver


@implementer(IExchangeObserver)
class _InFlight:
    """
    The exchanges of one resource that have started and not yet ended, and
    the graceful shutdown that waits for them.
    """

    __slots__ = ("live", "shutting_down", "_waiting")

    def __init__(self) -> None:
        self.live: set[Exchange] = set()
        self.shutting_down = False
        self._waiting: list[Deferred[None]] = []

    def exchange_started(self, exchange: Exchange) -> None:
        self.live.add(exchange)
        if self.shutting_down:
            exchange.notify_shutdown()

    def exchange_ended(self, exchange: Exchange) -> None:
        self.live.discard(exchange)
        if not self.live and self._waiting:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def shutdown(self) -> Deferred[None]:
        self.shutting_down = True
        for exchange in list(self.live):
            exchange.notify_shutdown()
        if not self.live:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d


@implementer(IAWSGIResource, IDrainable)
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
        the whole body is in.  Threadpool mode always streams.  An
        application that reads its bodies with C{on_get} can ask for this
        itself with a true C{awsgi_stream_input} attribute.
    @param max_body: the largest request body accepted, in bytes; larger
        ones get a 413.  L{None} for no limit.
    @param greenlets: run each call into the application in a greenlet on
        the reactor thread, so a blocking C{wsgi.input} read or C{write()}
        suspends only that request (needs the C{greenlet} package).  Bodies
        stream, as in threadpool mode.
    @param observers: L{IExchangeObserver}s told when each exchange starts
        and ends (server policies such as request timeouts).
    @param multiprocess: the value of C{wsgi.multiprocess}: whether other
        processes serve the same application.
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
        greenlets: bool = False,
        observers: Sequence[IExchangeObserver] = (),
        multiprocess: bool = False,
    ) -> None:
        super().__init__()
        runner: IRunner
        if greenlets and threadpool is not None:
            raise ValueError("greenlets and a threadpool are two ways to run the app: choose one")
        if threadpool is not None:
            runner = ThreadRunner(reactor, threadpool)
        elif greenlets:
            runner = GreenletRunner()
        else:
            runner = ReactorRunner()
        cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        self._in_flight = _InFlight()
        self._container = Container(
            reactor,
            application,
            runner,
            cooperator,
            stream_input or bool(getattr(application, "awsgi_stream_input", False)),
            max_body,
            observers=(self._in_flight, *observers),
            multiprocess=multiprocess,
        )

    def render(self, request: IRequest) -> Any:
        exchange = Exchange(self._container, request)
        try:
            exchange.start()
        except BaseException:
            # Not served: Twisted answers 500; do not wait for it at shutdown.
            self._in_flight.exchange_ended(exchange)
            raise
        return NOT_DONE_YET

    @property
    def in_flight(self) -> int:
        """
        How many exchanges have started and not yet ended.
        """
        return len(self._in_flight.live)

    def shutdown(self) -> Deferred[None]:
        """
        See L{IDrainable.shutdown}: tell every in-flight application that
        the server is shutting down (C{ctrl.on_shutdown}), and every later
        one as it starts; fire once none is in flight.  Serving goes on:
        stopping new requests is the listener's and the site's business.
        """
        return self._in_flight.shutdown()

    def getChildWithDefault(self, name: bytes, request: IRequest) -> "AWSGIResource":
        """
        Everything below this resource belongs to the application.
        """
        return self
