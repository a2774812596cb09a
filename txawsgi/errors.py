"""
Exceptions raised at application authors.

Every misuse of PEP 3333 or of the controller raises a subclass of
L{AWSGIError}, so tests and logs can tell exactly which rule was broken.
"""


class AWSGIError(Exception):
    """
    Base class for every error txawsgi raises at an application.
    """


class StartResponseError(AWSGIError, AssertionError):
    """
    C{start_response} was called wrongly: twice without C{exc_info}, or
    C{write()} was called before it.

    Subclasses L{AssertionError} because that is what C{wsgiref} and most
    WSGI servers raise for the same mistakes.
    """


class InvalidStatus(AWSGIError, ValueError):
    """
    The status is not a native latin-1 C{str} of the form C{"NNN Reason"}, or
    contains a control character.
    """


class InvalidHeader(AWSGIError, ValueError):
    """
    A response header is not a pair of native latin-1 C{str}, has an invalid
    name, or its value holds a control character (response splitting).
    """


class HopByHopHeader(InvalidHeader):
    """
    The application tried to set a hop-by-hop header (PEP 3333 forbids it:
    connection management belongs to the server).
    """


class InvalidBody(AWSGIError, TypeError):
    """
    The application produced body data that is not C{bytes}.
    """


class ControllerError(AWSGIError):
    """
    Base class for misuse of the controller.
    """


class AlreadyFinished(ControllerError):
    """
    C{put()} or C{finish()} was called after C{finish()}.
    """


class GetPending(ControllerError):
    """
    C{on_get()} was called while an earlier C{on_get()} had not called back.
    """


class InputReplaced(ControllerError):
    """
    C{on_get()} was refused because middleware replaced C{wsgi.input}: the
    bytes the server would deliver are not the bytes the application's
    environ promises (PEP 3333, "Server Extension APIs").
    """


class WrongEnviron(ControllerError):
    """
    The controller factory was given an environ that does not belong to the
    request it serves.
    """


class ClientDisconnected(AWSGIError, ConnectionError):
    """
    The client went away before the response was complete.
    """


class BodyTruncated(AWSGIError, ConnectionError):
    """
    The request body ended before it was complete (the client disconnected
    mid-upload).
    """


class WouldBlock(AWSGIError, BlockingIOError):
    """
    A blocking C{wsgi.input} read was attempted in the reactor thread while
    the body is still arriving.
    """


class IllegalTransition(AWSGIError, RuntimeError):
    """
    A state machine was asked to move along an edge it does not have; always a
    bug in txawsgi or in an extension built on it.
    """


class BodyTooLarge(BodyTruncated):
    """
    The request body passed the configured maximum size; the client got (or
    will get) a 413.
    """


class RequestTimedOut(AWSGIError, TimeoutError):
    """
    The application did not finish its response within the server's request
    timeout; the client got a 503 (or a cut response, if it had started).
    Also raised into an application that was waiting then (a C{wsgi.input}
    read in a worker thread or greenlet, a greenlet's C{wait(d)}).
    """


class ExtensionMisuse(AWSGIError):
    """
    An asynchronous extension (C{x-wsgiorg.fdevent}, C{x-wsgiorg.suspend})
    was misused: called twice before the application yielded, or followed by
    a non-empty chunk instead of C{b''}.
    """
