"""
The public contracts of txawsgi, as C{zope.interface} interfaces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class IController(Interface):
    """
    Phillip J. Eby's iterator-controller (Web-SIG, 2004), extended with
    output backpressure and disconnect notification.

    An application obtains one with C{environ['awsgi.controller'](environ)},
    returns it as its iterable (middleware may wrap it), and feeds the
    response from callbacks.  Every method is safe to call from any thread;
    every callback runs later in the reactor thread, never synchronously
    inside the call that registered it.
    """

    writable = Attribute(
        "C{True} while C{put()} would not take the queue over its high-water "
        "mark and the client is reading; otherwise wait for C{on_drain}."
    )
    closed = Attribute(
        "C{True} once the exchange has ended: the response was delivered or "
        "the client went away."
    )

    def put(data: bytes) -> bool:
        """
        Queue C{data} for the response body.

        @return: L{writable} after queueing: C{False} asks the application to
            wait for L{on_drain} before putting more.
        @raise AlreadyFinished: after C{finish()}.
        @raise InvalidBody: if C{data} is not C{bytes}.
        """

    def finish() -> None:
        """
        End the response body once the queue is sent.

        @raise AlreadyFinished: if called twice.
        """

    def on_get(
        length: int,
        callback: Callable[[bytes], Any],
        errback: Optional[Callable[[BaseException], Any]] = None,
    ) -> None:
        """
        Ask for request body: one-shot C{callback(data)} with 1 to C{length}
        bytes once some are available, or C{b''} at the end of the body.
        Call again for more.  If the body was cut short (the client went
        away), C{errback(BodyTruncated(...))} is called instead when given.

        @raise GetPending: if an earlier C{on_get} has not called back.
        @raise InputReplaced: if middleware replaced C{wsgi.input}.
        """

    def fail(reason: Optional[Any] = None) -> None:
        """
        End the exchange with an error met asynchronously (in a callback):
        a 500 if nothing was sent yet, else a cut connection.
        """

    def on_drain(callback: Callable[[], Any]) -> None:
        """
        One-shot: C{callback()} once L{writable} is true again (at once, from
        the reactor, if it already is).
        """

    def on_close(callback: Callable[[Optional[BaseException]], Any]) -> None:
        """
        C{callback(reason)} once, when the exchange ends: C{reason} is
        C{None} when the response was delivered, or a L{ClientDisconnected}
        when the client went away first.  Registered after the end, it is
        still called (from the reactor).
        """

    shutting_down = Attribute(
        "C{True} once the server has begun a graceful shutdown (see "
        "L{on_shutdown})."
    )

    def on_shutdown(callback: Callable[[], Any]) -> None:
        """
        One-shot: C{callback()} when the server begins a graceful shutdown
        (SIGTERM or SIGINT under C{twistd}/C{twist}, or
        L{IDrainable.shutdown}), so a long-poll or a stream can answer and
        finish instead of being cut when the grace period ends.  Registered
        during a shutdown, it is called soon.  Never called once the exchange
        has ended.
        """


class IRequestBody(Interface):
    """
    The request body of one exchange: the seam between how bytes arrive (all
    buffered before the app runs, or streamed as they come) and how the app
    reads them.
    """

    file = Attribute("The file-like object installed as C{wsgi.input}.")

    def request(length: int, callback: Callable[[bytes], Any], errback: Callable[[BaseException], Any]) -> None:
        """
        One-shot: call C{callback(data)} from the reactor with 1 to C{length}
        bytes when available, C{b''} at the end; C{errback(exc)} if the body
        was truncated.
        """

    def ready() -> Optional[Deferred[None]]:
        """
        L{None} if the application can be called now; else a L{Deferred}
        that fires once it can (the body is in), or fails if it never will.
        """

    def close() -> None:
        """
        The exchange is over: drop pending requests and buffered data.
        """


class IWakeSource(Interface):
    """
    Something that resumes a suspended iteration out-of-band: a controller,
    a file-descriptor watch, a suspend/resume handle.  When the application
    yields C{b''} while a registered source is L{idle}, the engine sleeps
    until the source calls C{Engine.wake()}, instead of polling.
    """

    idle = Attribute(
        "C{True} when the application is waiting on this source, so that "
        "nothing will happen until the source wakes the engine."
    )


class IAWSGIResource(Interface):
    """
    Marks a resource that runs WSGI applications through txawsgi's engine,
    so a site can dispatch requests to it as soon as their headers are in.
    """


class IDrainable(Interface):
    """
    Something serving requests that can wind down gracefully.
    """

    def shutdown() -> Deferred[None]:
        """
        Begin a graceful shutdown: tell every in-flight application (their
        controllers' C{on_shutdown} callbacks; requests that start later are
        told at once), then wait for them.

        @return: a L{Deferred} that fires with L{None} once every exchange
            in flight has ended.
        """


class IExchangeObserver(Interface):
    """
    Told when each exchange of an L{AWSGIResource} starts and ends, in the
    reactor thread.  For server policies that follow requests (graceful
    shutdown, request timeouts); an observer must not raise.
    """

    def exchange_started(exchange: Any) -> None:
        """
        C{exchange} (a L{txawsgi.exchange.Exchange}) is about to call the
        application.  C{exchange.request} is its Twisted request;
        C{exchange.cancel(reason)} fails it (a 503 for L{RequestTimedOut},
        a 500 otherwise, or a cut response if it had started).
        """

    def exchange_ended(exchange: Any) -> None:
        """
        C{exchange} reached its end (delivered, failed or aborted).  Called
        exactly once for every exchange that was started.
        """
