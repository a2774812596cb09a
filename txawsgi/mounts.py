"""
Several applications and static directories in one site, by path prefix.

L{Mounts} is the root resource: a request goes to the resource mounted at
the longest prefix of its path (whole segments: C{/api} matches C{/api} and
C{/api/x}, not C{/apix}), else to the root resource, else gets a 404.  For a
WSGI application mounted at C{/api}, C{SCRIPT_NAME} is C{/api} and
C{PATH_INFO} the rest, as PEP 3333 wants.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.static import File
from zope.interface import implementer

from txawsgi.interfaces import IDrainable

__all__ = ["Mounts", "StaticFiles", "parse_prefix", "static_directory"]


def parse_prefix(prefix: str) -> tuple[bytes, ...]:
    """
    The path segments of a mount prefix: C{/api/v1} or C{/api/v1/} gives
    C{(b"api", b"v1")}; C{/} gives C{()}.

    @raise ValueError: unless it starts with C{/} and has no empty, C{.}
        or C{..} segment.
    """
    if not prefix.startswith("/"):
        raise ValueError(f"prefix {prefix!r} must start with '/'")
    stripped = prefix.strip("/")
    if not stripped:
        return ()
    segments = stripped.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"prefix {prefix!r} has an empty, '.' or '..' segment")
    return tuple(segment.encode("utf-8") for segment in segments)


class StaticFiles(File):
    """
    L{File} without directory listings (a directory without an index file
    is a 404): the files of a directory, with ranges, conditional requests
    and content types as Twisted serves them.
    """

    def directoryListing(self) -> Resource:
        return NoResource("No such file.")


@implementer(IDrainable)
class Mounts(Resource):
    """
    Route requests by path prefix.

    @param root: the resource for paths under no prefix; L{None} for 404s.
    """

    def __init__(self, root: Optional[IResource] = None) -> None:
        super().__init__()
        self.root = root
        self._mounts: dict[tuple[bytes, ...], IResource] = {}
        self._longest_first: list[tuple[bytes, ...]] = []

    def mount(self, prefix: str, resource: IResource) -> None:
        """
        Serve C{resource} under C{prefix} (C{/} replaces the root).

        @raise ValueError: for a malformed or already mounted prefix.
        """
        segments = parse_prefix(prefix)
        if not segments:
            if self.root is not None:
                raise ValueError("something is already mounted at '/'")
            self.root = resource
            return
        if segments in self._mounts:
            raise ValueError(f"something is already mounted at {prefix!r}")
        self._mounts[segments] = resource
        self._longest_first = sorted(self._mounts, key=len, reverse=True)

    def resources(self) -> Iterator[IResource]:
        """
        Every mounted resource, the root last.
        """
        yield from self._mounts.values()
        if self.root is not None:
            yield self.root

    def getChildWithDefault(self, name: bytes, request: IRequest) -> Any:
        # Twisted has moved `name` from postpath to prepath already.
        rest = request.postpath
        for segments in self._longest_first:
            more = len(segments) - 1
            if segments[0] == name and tuple(rest[:more]) == segments[1:]:
                if more:
                    request.prepath.extend(rest[:more])
                    del rest[:more]
                return self._mounts[segments]
        # Not mounted: the root resource sees the whole path.
        request.postpath.insert(0, request.prepath.pop())
        if self.root is None:
            return NoResource()
        return self.root

    def render(self, request: IRequest) -> Any:
        # Only reached for an empty path (e.g. "OPTIONS *"-like oddities).
        if self.root is None:
            return NoResource().render(request)
        return self.root.render(request)

    def shutdown(self) -> Deferred[None]:
        """
        See L{IDrainable.shutdown}: every mounted application's.
        """
        waiting = [r.shutdown() for r in self.resources() if IDrainable.providedBy(r)]
        return DeferredList(waiting, consumeErrors=True).addCallback(lambda _: None)


def static_directory(path: str) -> StaticFiles:
    """
    The resource serving directory C{path}.

    @raise ValueError: if it is not a directory.
    """
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    return StaticFiles(os.path.abspath(path))
