"""
Twisted plugin dropin for C{twistd awsgi} and C{twist awsgi}.

Every C{twistd} run imports every dropin, so this module imports nothing from
txawsgi until the C{awsgi} subcommand is actually used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import implementer

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import IPlugin

if TYPE_CHECKING:
    from txawsgi.tap import Options


@implementer(IServiceMaker, IPlugin)
class _AWSGIServiceMaker:
    """
    Build the txawsgi service from C{txawsgi.tap}.
    """

    tapname = "awsgi"
    description = "Serve a WSGI application asynchronously (txawsgi)."

    @property
    def options(self) -> type[Options]:
        from txawsgi.tap import Options

        return Options

    def makeService(self, options: Options) -> IService:
        from txawsgi.tap import makeService

        return makeService(options)


serviceMaker = _AWSGIServiceMaker()
