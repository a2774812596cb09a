"""
txawsgi: an asynchronous WSGI container for Twisted.

WSGI applications run in the reactor thread (or a threadpool, for blocking
ones), with Phillip J. Eby's iterator-controller for responding
asynchronously, streamed request bodies, and backpressure both ways.
"""

from txawsgi.resource import AWSGIResource

__version__ = "0.1.0"

__all__ = ["AWSGIResource", "__version__"]
