# twistd -n -y twisted_wsgi.tac   (BENCH_PORT=... in the environment)
# twisted.web.wsgi.WSGIResource on the reactor's own threadpool (10 threads
# at most, Twisted's default), serving the plain WSGI app.
import os

from twisted.application import service, strports
from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from wsgi_app import application as wsgi_application

application = service.Application("bench-twisted-wsgi")
resource = WSGIResource(reactor, reactor.getThreadPool(), wsgi_application)
site = Site(resource)
if os.environ.get("BENCH_ACCESS_LOG") != "1":
    # No request log, as the other servers run (bench/servers.py).
    site.log = lambda request: None
strports.service(
    "tcp:%s:interface=127.0.0.1:backlog=4096" % os.environ["BENCH_PORT"], site
).setServiceParent(application)
