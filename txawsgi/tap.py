"""
C{twistd awsgi} / C{twist awsgi}: command-line options and service assembly.

The service tree of one serving process (the only process with
C{--workers 1}, or each worker) is::

    _AWSGIService (a ServingService: logs what it serves at startup; on
      |            stop: listeners, then the graceful drain, then the rest)
      +- ThreadPoolService     only with --threads N > 0; first to start
      +- AccessLogService      only with --access-log
      +- one listening service per --listen, all serving one ServerSite

With C{--workers N > 1} the process is a supervisor instead::

    _AWSGIService
      +- Supervisor            binds the --listen sockets, runs N workers
                               (python -m txawsgi.worker) under procmon

Everything the options configure lives in its own module (timeouts, proxy,
accesslog, shutdown, mounts, listeners, workers); this module only parses
and assembles.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional, Sequence

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from txawsgi.accesslog import AccessLog, AccessLogService
from txawsgi.limits import DEFAULT_LIMITS, Limits, non_negative
from txawsgi.listeners import check_shareable
from txawsgi.loader import load_app
from txawsgi.mounts import Mounts, parse_prefix, static_directory
from txawsgi.proxy import DEFAULT_TRUSTED, ProxyHeaders, TrustedProxies
from txawsgi.server import ServerSite
from txawsgi.shutdown import GracefulShutdown, ServingService, drainables
from txawsgi.timeouts import DEFAULT_HEADER, DEFAULT_KEEP_ALIVE, RequestDeadline, Timeouts
from txawsgi.workers import Supervisor, parse_workers

__all__ = [
    "DEFAULT_APP",
    "DEFAULT_GRACEFUL_TIMEOUT",
    "DEFAULT_LISTEN",
    "Options",
    "makeService",
    "make_server_service",
]

DEFAULT_APP = "txawsgi.demo:application"
DEFAULT_LISTEN = "tcp:8080"
DEFAULT_GRACEFUL_TIMEOUT = 30.0


def _one_line(method: Callable[..., Any]) -> Callable[..., Any]:
    """
    Make an C{opt_} method's docstring read well in C{--help}.
    """
    method.__doc__ = " ".join((method.__doc__ or "").split())
    return method


def _seconds(value: str) -> float:
    """
    A non-negative number of seconds (0 means no limit where allowed).
    """
    seconds = float(value)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"must be a number of seconds >= 0, not {value!r}")
    return seconds


class Options(usage.Options):
    """
    Options for C{twistd awsgi}.

    After parsing, C{self["application"]} holds the loaded WSGI callable.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve a WSGI application (plain PEP 3333, or using the "
        "environ['awsgi.controller'] asynchronous API) over HTTP/1.1, and "
        "over HTTP/2 on TLS endpoints when txawsgi[http2] is installed.  "
        "Without --app, --mount or --static, a small demo application is "
        "served.  SIGTERM or SIGINT shuts down gracefully.  "
        "Times are in seconds; a timeout of 0 means no limit."
    )

    #: Check --listen descriptions while parsing (a worker process does not:
    #: it inherits its sockets).
    check_listen = True
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
        [
            "workers",
            "w",
            "1",
            "Serve from N worker processes sharing the listening sockets, "
            "under a supervisor that restarts any that dies; 0 or 'auto' for "
            "one per CPU.  1 serves from this process.",
        ],
        [
            "graceful-timeout",
            None,
            DEFAULT_GRACEFUL_TIMEOUT,
            "On SIGTERM/SIGINT, stop accepting and give requests in flight "
            "this long to finish (applications are told through "
            "ctrl.on_shutdown), then close the rest.",
            _seconds,
        ],
        [
            "access-log",
            None,
            None,
            "Write one line per request, in the combined log format, to "
            "this file ('-' for standard output) once its response has "
            "ended.  Much cheaper per request than Twisted's request log.  "
            "[default: Twisted's request log, in the server log]",
        ],
        [
            "forwarded-allow-ips",
            None,
            None,
            "With --proxy-headers: the comma-separated proxy addresses and "
            "networks to trust ('unix' for UNIX-socket peers, '*' for all).  "
            f"[default: {DEFAULT_TRUSTED}]",
        ],
        [
            "root-path",
            None,
            None,
            "SCRIPT_NAME prefix under which a proxy serves this server, e.g. "
            "/app (a request path starting with it is served as if it did "
            "not).",
        ],
        [
            "keep-alive-timeout",
            None,
            DEFAULT_KEEP_ALIVE,
            "Close a connection with no request in progress after this "
            "long idle.",
            _seconds,
        ],
        [
            "header-timeout",
            None,
            DEFAULT_HEADER,
            "Answer 408 and close if a request's headers are not complete "
            "this long after its first byte (slow clients, slowloris).",
            _seconds,
        ],
        [
            "request-timeout",
            None,
            0.0,
            "Cut off an application that has not finished its response this "
            "long after the request reached it: 503, or a closed connection if the "
            "response had started.  Off by default (long-polls are "
            "legitimate).",
            _seconds,
        ],
        [
            "limit-request-line",
            None,
            DEFAULT_LIMITS.request_line,
            "Answer 414 to a request line longer than BYTES (0: only the "
            "64 KiB head limit applies).",
            non_negative,
        ],
        [
            "limit-request-fields",
            None,
            DEFAULT_LIMITS.fields,
            "Answer 431 to a request with more than N header fields (or "
            "trailer fields); 0: no limit.",
            non_negative,
        ],
        [
            "limit-request-field-size",
            None,
            DEFAULT_LIMITS.field_size,
            "Answer 431 to a header field line longer than BYTES, CRLF "
            "included (0: only the 64 KiB head limit applies).",
            non_negative,
        ],
    ]
    optFlags = [
        [
            "no-access-log",
            None,
            "Log no requests (neither --access-log nor Twisted's request log).",
        ],
        [
            "stream-input",
            None,
            "In the reactor thread, call the application as soon as the "
            "request headers are in and stream the body to on_get (a "
            "wsgi.input read that would block raises WouldBlock).  Without "
            "it a plain application is called once its body is in.  "
            "Threadpool mode always streams.",
        ],
        [
            "greenlets",
            None,
            "Run each request in a greenlet of its own on the reactor thread: "
            "a blocking wsgi.input read or write() suspends only that "
            "request (bodies stream).  Needs pip install txawsgi[greenlet]; "
            "not with --threads.",
        ],
        [
            "proxy-headers",
            None,
            "Behind a reverse proxy: for requests from --forwarded-allow-ips, "
            "take the client address, scheme and host from Forwarded (RFC "
            "7239) or X-Forwarded-For/-Proto/-Host (REMOTE_ADDR, "
            "wsgi.url_scheme, HTTP_HOST, SERVER_NAME, SERVER_PORT).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["mount"] = []
        self["static"] = []
        self.argv: list[str] = []

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        # Kept for the workers, which parse the same options.
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    @_one_line
    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on a Twisted server endpoint, e.g. tcp:8080,
        tcp:0:interface=127.0.0.1, unix:/run/app.sock,
        ssl:8443:privateKey=key.pem:certKey=cert.pem (HTTPS; HTTP/2 too with
        txawsgi[http2]) or systemd:domain=INET:index=0 (socket activation).
        Repeatable.  [default: tcp:8080]
        """
        self["listen"].append(endpoint)

    opt_l = opt_listen

    @_one_line
    def opt_mount(self, value: str) -> None:
        """
        Serve another WSGI application under a path prefix, as
        /prefix=pkg.module:app (SCRIPT_NAME is the prefix).  Repeatable.
        """
        prefix, app = _split_mapping("--mount", value, "/prefix=pkg.module:app")
        self["mount"].append((prefix, app))

    @_one_line
    def opt_static(self, value: str) -> None:
        """
        Serve the files of a directory under a path prefix, as
        /prefix=DIRECTORY (with range and conditional requests; no
        directory listings).  Repeatable.
        """
        prefix, directory = _split_mapping("--static", value, "/prefix=DIRECTORY")
        self["static"].append((prefix, directory))

    def postOptions(self) -> None:
        """
        Apply defaults, validate every option, load the applications.
        """
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["no-access-log"] and self["access-log"] is not None:
            raise usage.UsageError("--no-access-log and --access-log: choose one")
        if self["max-body"] is not None and self["max-body"] < 0:
            raise usage.UsageError(f"--max-body must be >= 0, not {self['max-body']}")
        if self["threads"] < 0:
            raise usage.UsageError(
                f"--threads must be >= 0, not {self['threads']}"
            )
        if self["greenlets"]:
            if self["threads"] > 0:
                raise usage.UsageError("--greenlets and --threads are two ways to run the application: choose one")
            try:
                import greenlet  # noqa: F401
            except ImportError:
                raise usage.UsageError("--greenlets needs the greenlet package: pip install txawsgi[greenlet]") from None
        try:
            self["workers"] = parse_workers(str(self["workers"]))
        except ValueError as e:
            raise usage.UsageError(f"--workers: {e}") from None
        if self.check_listen:
            for description in self["listen"]:
                _checkEndpoint(description, shared=self["workers"] > 1)
        self._check_proxy()
        self._load_apps()

    def _check_proxy(self) -> None:
        allowed = self["forwarded-allow-ips"]
        if allowed is not None and not self["proxy-headers"]:
            raise usage.UsageError("--forwarded-allow-ips needs --proxy-headers")
        try:
            self["trusted-proxies"] = TrustedProxies(
                DEFAULT_TRUSTED if allowed is None else allowed
            )
        except ValueError as e:
            raise usage.UsageError(f"--forwarded-allow-ips: {e}") from None
        if self["root-path"]:
            try:
                parse_prefix(self["root-path"])
            except ValueError as e:
                raise usage.UsageError(f"--root-path: {e}") from None

    def _load_apps(self) -> None:
        """
        Load --app and every --mount; check --static directories and that
        no two things claim one prefix.
        """
        if self["app"] is None and not self["mount"] and not self["static"]:
            self["app"] = DEFAULT_APP
        application = None
        if self["app"] is not None:
            try:
                application = load_app(self["app"])
            except ValueError as e:  # AppNotFound, or a malformed spec
                raise usage.UsageError(f"--app: {e}") from e
        self["application"] = application
        claimed: dict[tuple[bytes, ...], str] = {}
        if application is not None:
            claimed[()] = f"--app {self['app']}"
        mounts = []
        for prefix, spec in self["mount"]:
            _claim(claimed, "--mount", prefix, spec)
            try:
                mounts.append((prefix, spec, load_app(spec)))
            except ValueError as e:
                raise usage.UsageError(f"--mount {prefix}={spec}: {e}") from e
        statics = []
        for prefix, directory in self["static"]:
            _claim(claimed, "--static", prefix, directory)
            if not os.path.isdir(directory):
                raise usage.UsageError(
                    f"--static {prefix}={directory}: not a directory"
                )
            statics.append((prefix, os.path.abspath(directory)))
        self["mounts"] = mounts
        self["statics"] = statics


def _split_mapping(option: str, value: str, form: str) -> tuple[str, str]:
    prefix, sep, target = value.partition("=")
    if not sep or not prefix or not target:
        raise usage.UsageError(f"{option} takes {form}, not {value!r}")
    try:
        parse_prefix(prefix)
    except ValueError as e:
        raise usage.UsageError(f"{option} {value}: {e}") from None
    return prefix, target


def _claim(
    claimed: dict[tuple[bytes, ...], str], option: str, prefix: str, target: str
) -> None:
    """
    Record that C{option} serves C{prefix}, or fail if something else does.
    """
    segments = parse_prefix(prefix)
    other = claimed.get(segments)
    if other is not None:
        raise usage.UsageError(
            f"{option} {prefix}={target} conflicts with {other} (both serve {prefix!r})"
        )
    claimed[segments] = f"{option} {prefix}={target}"


def _checkEndpoint(description: str, shared: bool = False) -> None:
    """
    Parse a server endpoint description now, so a typo is a usage error
    rather than a traceback once the service starts.  Nothing listens yet.

    @param shared: it must be shareable by worker processes.
    """
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
        if shared:
            check_shareable(reactor, description)
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


class _AWSGIService(ServingService):
    """
    The top-level service; says what it serves once started.
    """

    _log = Logger()

    def __init__(
        self,
        spec: str,
        endpoints: Sequence[str],
        threads: int,
        workers: int = 1,
        name: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.endpoints = list(endpoints)
        self.threads = threads
        self.workers = workers
        self.worker_name = name

    def startService(self) -> None:
        super().startService()
        if self.workers > 1:
            mode = f"in {self.workers} worker processes"
        elif self.threads:
            mode = f"in a pool of up to {self.threads} threads"
        else:
            mode = "in the reactor thread"
        if self.worker_name:
            mode = f"{self.worker_name}, {mode}"
        self._log.info(
            "txawsgi serving {app} on {endpoints} ({mode})",
            app=self.spec,
            endpoints=", ".join(self.endpoints),
            mode=mode,
        )


def _describe(options: Options) -> str:
    """
    What is served, for the startup log line.
    """
    parts = [options["app"]] if options["app"] is not None else []
    parts += [f"{prefix}={spec}" for prefix, spec, _ in options["mounts"]]
    parts += [f"{prefix}={directory} (static)" for prefix, directory in options["statics"]]
    return ", ".join(parts)


def _access_log(options: Options) -> Optional[AccessLog]:
    destination = options["access-log"]
    return AccessLog(destination) if destination is not None else None


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the service tree for parsed L{Options}: a serving process, or a
    supervisor of worker processes.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if options["workers"] > 1:
        top = _AWSGIService(
            _describe(options), options["listen"], options["threads"], options["workers"]
        )
        Supervisor(
            reactor,
            options.argv,
            options["workers"],
            options["listen"],
            _access_log(options),
            options["graceful-timeout"],
        ).setServiceParent(top)
        return top
    return make_server_service(options, reactor, access_log=_access_log(options))


def make_server_service(
    options: Options,
    reactor: Any,
    *,
    endpoints: Optional[Sequence[tuple[str, IStreamServerEndpoint]]] = None,
    access_log: Optional[AccessLog] = None,
    multiprocess: bool = False,
    name: Optional[str] = None,
) -> ServingService:
    """
    The service tree of one serving process.

    @param endpoints: C{(description, endpoint)} pairs to listen on;
        L{None} for the C{--listen} descriptions.
    @param access_log: where to log requests (L{None}: Twisted's log).
    @param multiprocess: C{wsgi.multiprocess} (this is one of several
        workers).
    @param name: the worker's name, for the startup log line.
    """
    from txawsgi.resource import AWSGIResource

    threads: int = options["threads"]
    top = _AWSGIService(_describe(options), options["listen"], threads, name=name)

    pool: Optional[ThreadPool] = None
    if threads > 0:
        pool = ThreadPool(minthreads=0, maxthreads=threads, name="txawsgi")
        ThreadPoolService(pool, reactor).setServiceParent(top)
    if access_log is not None:
        AccessLogService(access_log).setServiceParent(top)

    observers = []
    if options["request-timeout"]:
        observers.append(RequestDeadline(reactor, options["request-timeout"]))

    def wsgi(app: Callable[..., Any]) -> AWSGIResource:
        return AWSGIResource(
            reactor,
            app,
            threadpool=pool,
            stream_input=bool(options["stream-input"]),
            greenlets=bool(options["greenlets"]),
            max_body=options["max-body"],
            observers=observers,
            multiprocess=multiprocess,
        )

    application = options["application"]
    root: Any
    if not options["mounts"] and not options["statics"]:
        root = wsgi(application)
    else:
        root = Mounts(wsgi(application) if application is not None else None)
        for prefix, _, app in options["mounts"]:
            root.mount(prefix, wsgi(app))
        for prefix, directory in options["statics"]:
            root.mount(prefix, static_directory(directory))

    site = ServerSite(
        root,
        reactor=reactor,
        timeouts=Timeouts(
            keep_alive=options["keep-alive-timeout"] or None,
            header=options["header-timeout"] or None,
            request=options["request-timeout"] or None,
        ),
        proxy=ProxyHeaders(options["trusted-proxies"]) if options["proxy-headers"] else None,
        root_path=options["root-path"] or "",
        access_log=access_log,
        log_requests=not options["no-access-log"],
    )
    site.limits = Limits(
        request_line=options["limit-request-line"],
        fields=options["limit-request-fields"],
        field_size=options["limit-request-field-size"],
    )
    if endpoints is None:
        for description in options["listen"]:
            top.add_listener(strports.service(description, site, reactor=reactor))
    else:
        for _, endpoint in endpoints:
            top.add_listener(StreamServerEndpointService(endpoint, site))
    top.shutdown = GracefulShutdown(
        reactor, site.connections, drainables([root]), options["graceful-timeout"]
    )
    return top
