"""
WSGI applications for the C{twistd awsgi} tests.
"""

from typing import Callable, Iterable, List, Tuple

StartResponse = Callable[[str, List[Tuple[str, str]]], object]


def hello(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """
    A plain PEP 3333 app.
    """
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from txawsgi\n"]


NOT_AN_APP = "a string"
