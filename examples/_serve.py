"""
What every example does when run as a script.

C{python examples/<name>.py [PORT]} listens on 127.0.0.1:PORT (8080 by
default, 0 for any free port), prints C{<name> listening on
http://127.0.0.1:<port>/} once it does (the tests wait for that line) and
runs the reactor; when it cannot listen it says why and exits with status 1.

The examples import this module only under C{__main__}, so they stay
importable on their own (by the tests, by C{twistd awsgi --app}).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, List, Optional, Sequence


def site(reactor: Any, application: Callable[..., Any], *, streaming: bool = True, **options: Any) -> Any:
    """
    A site serving C{application} in an L{AWSGIResource} made with
    C{options}: an L{AWSGISite}, which streams request bodies as they
    arrive, or with C{streaming=False} a plain Twisted C{Site}.
    """
    from twisted.web.server import Site

    from txawsgi import AWSGIResource
    from txawsgi.site import AWSGISite

    return (AWSGISite if streaming else Site)(AWSGIResource(reactor, application, **options))


def serve(argv: Sequence[str], make_site: Callable[[Any], Any], started: Optional[Callable[[], None]] = None) -> None:
    """
    Serve C{make_site(reactor)} (a site, or a L{Deferred} firing with one)
    on the port C{argv[1]} names, then call C{started}; run the reactor.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.endpoints import serverFromString

    name = os.path.splitext(os.path.basename(argv[0]))[0]
    port = int(argv[1]) if len(argv) > 1 else 8080

    def listen(made: Any) -> Any:
        return serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(made)

    def listening(listening_port: Any) -> None:
        print(f"{name} listening on http://127.0.0.1:{listening_port.getHost().port}/", flush=True)
        if started is not None:
            started()

    def failed(reason: Any) -> None:
        print(f"{name}: cannot listen: {reason.getErrorMessage()}", file=sys.stderr, flush=True)
        failures.append(reason)
        reactor.stop()

    def start() -> None:
        maybeDeferred(make_site, reactor).addCallback(listen).addCallbacks(listening, failed)

    failures: List[Any] = []
    # Started from inside the reactor, so that a failure (which may come at
    # once, a port in use) finds a reactor to stop.
    reactor.callWhenRunning(start)
    reactor.run()
    if failures:
        sys.exit(1)
