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
strports.service(
    "tcp:%s:interface=127.0.0.1:backlog=4096" % os.environ["BENCH_PORT"], Site(resource)
).setServiceParent(application)
