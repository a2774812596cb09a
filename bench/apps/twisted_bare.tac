# twistd -n -y twisted_bare.tac   (BENCH_PORT=... in the environment)
import os

from twisted.application import service, strports
from twisted.internet import reactor
from twisted.web.server import Site

from twisted_bare import Root, listen_trigger

application = service.Application("bench-twisted-bare")
strports.service(
    "tcp:%s:interface=127.0.0.1:backlog=4096" % os.environ["BENCH_PORT"], Site(Root())
).setServiceParent(application)
listen_trigger(reactor)
