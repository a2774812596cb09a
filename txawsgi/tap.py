"""
C{twistd awsgi} / C{twist awsgi}: command-line options and service assembly.

The service tree is::

    MultiService (logs what it serves at startup)
      +- ThreadPoolService     only with --threads N > 0; first to start
      +- one strports service per --listen, all serving one AWSGISite
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from txawsgi.loader import load_app

__all__ = ["DEFAULT_APP", "DEFAULT_LISTEN", "Options", "makeService"]

DEFAULT_APP = "txawsgi.demo:application"
DEFAULT_LISTEN = "tcp:8080"


class Options(usage.Options):
    """
    Options for C{twistd awsgi}.

    After parsing, C{self["application"]} holds the loaded WSGI callable.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve a WSGI application (plain PEP 3333, or using the "
        "environ['awsgi.controller'] asynchronous API) over HTTP.  "
        "Without --app, a small demo application is served."
    )
    optParameters = [
        [
            "app",
            "a",
            None,
            "WSGI application to serve, as 'pkg.module:app', "
            "'pkg.module:attr.sub' or 'pkg.module.app'; the current "
            f"directory is importable.  [default: {DEFAULT_APP}]",
        ],
        [
            "threads",
            "t",
            0,
            "Run the application in a pool of at most N threads; "
            "0 runs it in the reactor thread.",
            int,
        ],
        [
            "max-body",
            None,
            None,
            "Refuse request bodies over BYTES with 413 (default: no limit).",
            int,
        ],
    ]
    optFlags = [
        [
            "stream-input",
            None,
            "In the reactor thread, call the application as soon as the "
            "request headers are in and stream the body to on_get (a "
            "wsgi.input read that would block raises WouldBlock).  Without "
            "it a plain application is called once its body is in.  "
            "Threadpool mode always streams.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on a Twisted server endpoint, e.g. tcp:8080,
        tcp:0:interface=127.0.0.1 or unix:/tmp/s.sock.  Repeatable.
        [default: tcp:8080]
        """
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        """
        Apply defaults, validate C{--listen} and C{--threads}, load the
        application.
        """
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for description in self["listen"]:
            _checkEndpoint(description)
        if self["max-body"] is not None and self["max-body"] < 0:
            raise usage.UsageError(f"--max-body must be >= 0, not {self['max-body']}")
        if self["threads"] < 0:
            raise usage.UsageError(
                f"--threads must be >= 0, not {self['threads']}"
            )
        if self["app"] is None:
            self["app"] = DEFAULT_APP
        try:
            self["application"] = load_app(self["app"])
        except ValueError as e:  # AppNotFound, or a malformed spec
            raise usage.UsageError(f"--app: {e}") from e


def _checkEndpoint(description: str) -> None:
    """
    Parse a server endpoint description now, so a typo is a usage error
    rather than a traceback once the service starts.  Nothing listens yet.
    """
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise usage.UsageError(f"--listen {description!r}: {e}") from e


class ThreadPoolService(Service):
    """
    Tie a L{ThreadPool}'s lifetime to the service hierarchy.

    Stopping joins the worker threads in another thread so the reactor keeps
    running meanwhile: a worker may be waiting on the reactor (e.g. for
    request body data), and joining it from the reactor thread would
    deadlock.
    """

    def __init__(self, pool: ThreadPool, reactor: Any) -> None:
        self.pool = pool
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Optional[Deferred[None]]:
        super().stopService()
        if not self.pool.started:
            return None
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self.pool.stop
        )


class _AWSGIService(MultiService):
    """
    The top-level service; says what it serves once started.
    """

    _log = Logger()

    def __init__(self, spec: str, endpoints: Sequence[str], threads: int) -> None:
        super().__init__()
        self.spec = spec
        self.endpoints = list(endpoints)
        self.threads = threads

    def startService(self) -> None:
        super().startService()
        self._log.info(
            "txawsgi serving {app} on {endpoints} ({mode})",
            app=self.spec,
            endpoints=", ".join(self.endpoints),
            mode=(
                f"in a pool of up to {self.threads} threads"
                if self.threads
                else "in the reactor thread"
            ),
        )


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the service tree for parsed L{Options}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    from txawsgi.resource import AWSGIResource
    from txawsgi.site import AWSGISite

    app: Callable[..., Any] = options["application"]
    threads: int = options["threads"]
    top = _AWSGIService(options["app"], options["listen"], threads)

    pool: Optional[ThreadPool] = None
    if threads > 0:
        pool = ThreadPool(minthreads=0, maxthreads=threads, name="txawsgi")
        ThreadPoolService(pool, reactor).setServiceParent(top)

    # A twisted.web.server.Site that streams request bodies to the app.
    resource = AWSGIResource(
        reactor,
        app,
        threadpool=pool,
        stream_input=bool(options["stream-input"]),
        max_body=options["max-body"],
    )
    site = AWSGISite(resource)
    for endpoint in options["listen"]:
        strports.service(endpoint, site, reactor=reactor).setServiceParent(top)
    return top
