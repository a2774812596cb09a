# twistd -n -y twisted_bare.tac   (BENCH_PORT=... in the environment)
import os

from twisted.application import service, strports
from twisted.internet import reactor
from twisted.web.server import Site

from twisted_bare import Root, listen_trigger

application = service.Application("bench-twisted-bare")
site = Site(Root())
if os.environ.get("BENCH_ACCESS_LOG") != "1":
    # No request log, as the other servers run (bench/servers.py).
    site.log = lambda request: None
strports.service(
    "tcp:%s:interface=127.0.0.1:backlog=4096" % os.environ["BENCH_PORT"], site
).setServiceParent(application)
listen_trigger(reactor)
