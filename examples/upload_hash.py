"""
Hash uploads as they stream in.

The application reads the request body with the controller's C{on_get}, a
piece at a time as the client sends it, and feeds each piece to SHA-256:
nothing is buffered, however large the upload, and a slow reader holds a
fast client back through TCP (the server stops reading the connection while
more than 64 KiB are unread).  It answers as soon as the body ends, so a
client on a keep-alive connection can send its next request right away.

Run it::

    python examples/upload_hash.py            # listens on 127.0.0.1:8080
    python examples/upload_hash.py 0          # any free port (printed)

and upload something::

    curl -T big.iso http://127.0.0.1:8080/    # -> "<bytes> <sha256 hex>"
    sha256sum big.iso

Only L{txawsgi.site.AWSGISite} streams bodies as they arrive; under a plain
C{twisted.web.server.Site} the same application still works, on a body
Twisted buffered first.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Callable, Dict, Iterable, Optional

#: The most bytes asked for at a time.
CHUNK = 64 * 1024


def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """
    C{POST} or C{PUT} a body: the answer is C{"<length> <sha256 hex>\\n"}.
    """
    if environ["REQUEST_METHOD"] not in ("POST", "PUT"):
        body = b"POST or PUT a body to get its length and SHA-256.\n"
        start_response(
            "405 Method Not Allowed",
            [("Allow", "POST, PUT"), ("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        return [body]

    controller = environ["awsgi.controller"](environ)
    hasher = hashlib.sha256()
    size = 0

    def got(data: bytes) -> None:
        nonlocal size
        if data:
            hasher.update(data)
            size += len(data)
            controller.on_get(CHUNK, got, lost)
            return
        # b'' is the end of the body: answer now.
        answer = b"%d %s\n" % (size, hasher.hexdigest().encode("ascii"))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
        controller.put(answer)
        controller.finish()

    def lost(reason: BaseException) -> None:
        # The client went away mid-upload (BodyTruncated): nobody to answer.
        environ["wsgi.errors"].write(f"upload abandoned after {size} bytes: {reason}\n")

    controller.on_get(CHUNK, got, lost)
    return controller


def make_site(reactor: Any, max_body: Optional[int] = None) -> Any:
    """
    The site serving L{application}, streaming request bodies.
    """
    from txawsgi import AWSGIResource
    from txawsgi.site import AWSGISite

    return AWSGISite(AWSGIResource(reactor, application, stream_input=True, max_body=max_body))


if __name__ == "__main__":
    from _serve import serve

    serve(sys.argv, make_site)
