"""
One request/response exchange: builds the environ, calls the application (in
the reactor or in a worker thread) and wires its iterable, its controller and
its body to the engine and the response.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from twisted.web.http import Request as HTTPRequest
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from txawsgi.controller import Controller
from txawsgi.engine import FINAL, Engine, Run
from txawsgi.environ import ErrorStream, build_environ
from txawsgi.errors import BodyTooLarge, ClientDisconnected, WrongEnviron
from txawsgi.fdevent import FdEvents, TimeoutFlag
from txawsgi.filewrapper import FileWrapper
from txawsgi.input import BufferedBody, SpooledBody, StreamingBody
from txawsgi.interfaces import IExchangeObserver, IRequestBody
from txawsgi.response import Response
from txawsgi.runners import IRunner
from txawsgi.suspend import Suspender

WSGIApplication = Callable[[dict, Callable[..., Any]], Iterable[bytes]]

#: (Module names, not C{Run.X}: see L{txawsgi.engine}'s.)
_CALLING, _ABORTED = Run.CALLING, Run.ABORTED


def _end_reason(final: Run) -> Optional[BaseException]:
    """
    What a controller's C{on_close} callbacks are told for an exchange that
    ended in C{final}.
    """
    return ClientDisconnected("the client went away") if final is Run.ABORTED else None


class _LossWatch:
    """
    Told, like the L{Deferred}s of C{Request.notifyFinish()}, when the
    request finishes (L{callback}) or loses its connection first
    (L{errback}): Twisted calls one of them on each object of
    C{request.notifications}.  A Deferred with an errback would cost a held
    request some 600 bytes; this costs a tenth of that and runs no callback
    chain.
    """

    __slots__ = ("_exchange",)

    def __init__(self, exchange: "Exchange") -> None:
        self._exchange: Optional[Exchange] = exchange

    def callback(self, result: object) -> None:
        self._exchange = None

    def errback(self, reason: Failure) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange._lost(reason)


class Container:
    """
    What every exchange of one resource shares: the reactor, the app, where
    it runs, and the cooperator that schedules iteration.
    """

    __slots__ = (
        "reactor",
        "application",
        "runner",
        "cooperator",
        "stream_input",
        "max_body",
        "log",
        "errors_log",
        "observers",
        "multiprocess",
    )

    def __init__(
        self,
        reactor: Any,
        application: WSGIApplication,
        runner: IRunner,
        cooperator: Cooperator,
        stream_input: bool = False,
        max_body: Optional[int] = None,
        observers: Sequence[IExchangeObserver] = (),
        multiprocess: bool = False,
    ) -> None:
        """
        @param observers: told when each exchange starts and ends.
        @param multiprocess: C{wsgi.multiprocess} (other processes serve the
            same application).
        """
        self.reactor = reactor
        self.application = application
        self.runner = runner
        self.cooperator = cooperator
        self.stream_input = stream_input
        self.max_body = max_body
        self.log = Logger(namespace="txawsgi.app")
        self.errors_log = Logger(namespace="txawsgi.wsgi.errors")
        self.observers = tuple(observers)
        self.multiprocess = multiprocess


class Exchange:
    """
    One request served by one application call.
    """

    __slots__ = (
        "_container",
        "_request",
        "_body",
        "_response",
        "_engine",
        "_controller",
        "_shutting_down",
        "_flag",
        "_fdevents",
        "_suspender",
    )

    def __init__(self, container: Container, request: IRequest) -> None:
        # IRequest is all Resource.render promises; the exchange serves the
        # twisted.web.server.Request (or AWSGIRequest) it really is, whose
        # content file is set.  (Said with ignores, not typing.cast(): a
        # Python-level call, on every request.)
        self._container = container
        self._request: Request = request  # type: ignore[assignment]
        self._response = Response(self._request, container.log)
        self._engine = Engine(
            container.reactor,
            container.cooperator,
            self._response,
            self._ended,
            container.runner,
        )
        self._controller: Optional[Controller] = None
        self._body: IRequestBody = BufferedBody(container.reactor, self._request.content)  # type: ignore[arg-type]
        self._shutting_down = False
        self._flag: Optional[TimeoutFlag] = None
        self._fdevents: Optional[FdEvents] = None
        self._suspender: Optional[Suspender] = None

    @property
    def request(self) -> Request:
        """
        The Twisted request this exchange answers.
        """
        return self._request

    def _choose_body(self) -> Optional[BodyTooLarge]:
        """
        Pick how the body reaches the app: as Twisted buffered it, streamed
        (a runner that can wait, or C{stream_input}), or spooled before the
        call.

        @return: why the body is refused outright, if it is.
        """
        container = self._container
        request: Any = self._request  # an AWSGIRequest if dispatched_at_headers
        max_body = container.max_body
        if max_body is not None:
            declared = request.requestHeaders.getRawHeaders(b"content-length")
            if declared and int(declared[0]) > max_body:
                return BodyTooLarge(f"declared body of {int(declared[0])} bytes is over the limit of {max_body}")
        if not getattr(request, "dispatched_at_headers", False):
            return None
        if not container.runner.inline or container.stream_input:
            body: Any = StreamingBody(
                container.reactor, request, max_body=max_body, overflow=self._too_large, runner=container.runner
            )
        else:
            body = SpooledBody(container.reactor, request, max_body=max_body, overflow=self._too_large)
        self._body = request.body_sink = body
        return None

    def _too_large(self, reason: BaseException) -> None:
        """
        The body passed the limit while arriving: answer 413 (or abort, if
        the response has started).
        """
        self._engine.crash(Failure(reason))

    def start(self) -> None:
        """
        Serve the request: call the application and start iterating.
        """
        container = self._container
        request = self._request
        for observer in container.observers:
            observer.exchange_started(self)
        request.defaultContentType = None
        refused = self._choose_body()
        environ = build_environ(
            request,
            input=self._body.file,
            errors=ErrorStream(container.errors_log),
            multithread=container.runner.multithread,
            multiprocess=container.multiprocess,
            file_wrapper=FileWrapper,
        )
        # The environ refers to this exchange (through these bound methods),
        # never the other way round: an app that keeps its environ after the
        # end keeps no reference cycle alive.
        environ["awsgi.controller"] = self.controller
        environ["awsgi.reactor"] = container.reactor
        environ["x-wsgiorg.suspend"] = self._suspend
        if container.runner.inline:
            self._flag = TimeoutFlag()
            environ["x-wsgiorg.fdevent.readable"] = self._readable
            environ["x-wsgiorg.fdevent.writable"] = self._writable
            environ["x-wsgiorg.fdevent.timeout"] = self._flag
        response = self._response
        if not container.runner.inline:
            # Writes from a worker or greenlet wait on the transport from
            # the start; inline, the engine registers once it outlives its
            # eager steps (a short response never needs to).
            response.attach(self._engine)
        if isinstance(request, HTTPRequest):
            # What notifyFinish().addErrback(self._lost) does, for a tenth
            # of the memory a held request keeps (see _LossWatch).
            request.notifications.append(_LossWatch(self))  # type: ignore[arg-type]
        else:
            request.notifyFinish().addErrback(self._lost)
        if refused is not None:
            self._engine.crash(Failure(refused))
            return
        ready = self._body.ready()
        if ready is None:
            self._call(environ)
        else:
            ready.addCallbacks(lambda ignored: self._call(environ), lambda reason: None)

    def _call(self, environ: dict[str, Any]) -> None:
        """
        Call the application through the runner: in the reactor thread, a
        worker thread or a greenlet.
        """
        container = self._container
        response = self._response
        engine = self._engine
        if engine.state is not _CALLING:
            return
        if "HTTP_TRANSFER_ENCODING" in environ:
            self._unframe(environ)
        runner = container.runner
        if not runner.inline:
            response.app_write = self._write_blocking
            calling = runner.call(container.application, environ, response.start_response, owner=engine)
            calling.addCallbacks(engine.start, engine.crash)
            return
        try:
            iterable = container.application(environ, response.start_response)
        except Exception:
            engine.crash(Failure())
            return
        engine.start(iterable)

    def _unframe(self, environ: dict[str, Any]) -> None:
        """
        The server decoded a chunked body: like waitress, hide its
        C{Transfer-Encoding} (Bottle would decode the chunks again) and, if
        the whole body is in before the call, give its C{CONTENT_LENGTH}
        (Django and WebOb read that many bytes, and none without it).
        """
        del environ["HTTP_TRANSFER_ENCODING"]
        body = self._body
        if "CONTENT_LENGTH" in environ or isinstance(body, StreamingBody):
            return
        if isinstance(body, SpooledBody):
            environ["CONTENT_LENGTH"] = str(body.received)
            return
        content = body.file
        try:
            position = content.tell()
            size = content.seek(0, 2) - position
            content.seek(position)
        except (AttributeError, OSError, ValueError):
            return
        environ["CONTENT_LENGTH"] = str(size)

    def controller(self, environ: dict[str, Any]) -> Controller:
        """
        The C{awsgi.controller} factory: this exchange's controller (one per
        exchange; asking again returns the same one).

        @param environ: the environ the application received (a copy made by
            middleware will do); C{on_get} checks its C{wsgi.input}.
        @raise WrongEnviron: if C{environ} is not this request's.
        """
        # (Bound methods are equal when they bind the same exchange.)
        if not isinstance(environ, dict) or environ.get("awsgi.controller") != self.controller:
            raise WrongEnviron("awsgi.controller() must be given the environ of its own request")
        controller = self._controller
        if controller is None:
            # The engine is the controller's hooks: no adapter per request.
            controller = self._controller = Controller(self._engine, environ, self._body)
            if self._shutting_down:
                controller.server_shutting_down()
            if isInIOThread():
                self._adopt(controller)
            else:
                self._container.reactor.callFromThread(self._adopt, controller)
        return controller

    def _adopt(self, controller: Controller) -> None:
        """
        Make a new controller the engine's wake source, in the reactor; one
        asked for after the exchange ended is born closed.
        """
        engine = self._engine
        final = engine.state
        if final in FINAL:
            controller.exchange_ended(_end_reason(final))
            return
        engine.sources.append(controller)
        engine.resumed = controller.check_drain

    def _write_blocking(self, data: bytes) -> None:
        """
        The C{write} callable when the app may wait (a worker thread, a
        greenlet): hand the bytes to the reactor, then wait until the
        transport accepts more.
        """
        runner = self._container.runner
        if not runner.can_wait():
            # A controller callback (reactor thread) called write(): waiting
            # for the reactor here would deadlock it, so write at once.
            self._response.write(data)
            return
        runner.wait(lambda: self._write_and_wait(data))

    def _write_and_wait(self, data: bytes) -> Any:
        if self._engine.state is Run.CANCELLING:
            # The exchange is ending (the client left, a timeout): drop the
            # bytes rather than buffer them in a paused transport.
            return None
        self._response.write(data)
        return self._engine.drained()

    def notify_shutdown(self) -> None:
        """
        The server began a graceful shutdown: tell the application through
        its controller (now, or when it asks for one).
        """
        self._shutting_down = True
        if self._controller is not None:
            self._controller.server_shutting_down()

    def cancel(self, reason: Failure) -> None:
        """
        End the exchange from outside (e.g. a request timeout): fail it as
        if the application had raised C{reason}, and wake an application
        waiting in a worker or a greenlet (for body bytes, or on a
        L{Deferred}) with C{reason}'s exception.
        """
        if self._engine.state in FINAL:
            return
        cut = getattr(self._body, "cut", None)
        if cut is not None:
            cut(reason.value)
        self._engine.cancel(reason)

    def _lost(self, reason: Failure) -> None:
        """
        The connection closed before the response finished.
        """
        self._response.abort()
        self._engine.abort()

    # -- the Web-SIG suspension extensions, created on first use -------------

    def _suspend(self, timeout: Optional[float] = None) -> Callable[[], None]:
        """
        C{environ['x-wsgiorg.suspend']}: see L{txawsgi.suspend}.
        """
        if self._suspender is None:
            engine = self._engine
            self._suspender = Suspender(self._container.reactor, engine.wake, engine.arm)
        return self._suspender.suspend(timeout)

    def _fd_events(self) -> FdEvents:
        if self._fdevents is None:
            engine = self._engine
            self._fdevents = FdEvents(self._container.reactor, engine.wake, engine.arm, self._flag)
        return self._fdevents

    def _readable(self, fd: Any, timeout: Optional[float] = None) -> str:
        """
        C{environ['x-wsgiorg.fdevent.readable']}: see L{txawsgi.fdevent}.
        """
        return self._fd_events().readable(fd, timeout)

    def _writable(self, fd: Any, timeout: Optional[float] = None) -> str:
        """
        C{environ['x-wsgiorg.fdevent.writable']}: see L{txawsgi.fdevent}.
        """
        return self._fd_events().writable(fd, timeout)

    def _ended(self, final: Run) -> None:
        """
        The engine reached a final state: tell the controller, drop the body.
        """
        if final is _ABORTED:
            # The transport stops its producer (the engine) before the
            # request hears of the lost connection: a body still arriving
            # must report its truncation before it is closed.
            lose = getattr(self._body, "lose", None)
            if lose is not None:
                lose(ClientDisconnected("the client went away"))
        self._body.close()
        for extension in (self._fdevents, self._suspender):
            if extension is not None:
                extension.close()
        controller = self._controller
        if controller is not None:
            controller.exchange_ended(_end_reason(final))
        # Break what pointed back here, so the exchange is freed by
        # reference counting: the blocking write (the response keeps it),
        # the body sink (its request is its flow).
        self._response.app_write = None
        request: Any = self._request
        if getattr(request, "body_sink", None) is not None:
            request.body_sink = None
        for watch in getattr(request, "notifications", ()):
            if watch.__class__ is _LossWatch and watch._exchange is self:
                watch._exchange = None  # a loss after the end changes nothing
        for observer in self._container.observers:
            observer.exchange_ended(self)
