"""Serving ``orcs-client.js``, the JavaScript client, from the app (next to the event docs).

The module is served as ``text/javascript`` with a strong ``ETag`` (a hash of its content)
and ``Cache-Control: public, max-age=3600``; a request with a matching ``If-None-Match``
gets ``304 Not Modified`` (RFC 9110 §13.1.2, RFC 9111 §5.2.2.1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

CLIENT_FILE = "orcs-client.js"
CACHE_CONTROL = "public, max-age=3600"
MEDIA_TYPE = "text/javascript; charset=utf-8"


@cache
def client_script() -> tuple[bytes, str]:
    """The module's bytes and its ETag (quoted, strong)."""
    body = resources.files(__package__).joinpath("static", CLIENT_FILE).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def client_script_endpoint() -> Callable[[Request], Awaitable[Response]]:
    """An endpoint serving the client (for ``GET`` and ``HEAD``)."""

    async def orcs_client_js(request: Request) -> Response:
        body, etag = client_script()
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=MEDIA_TYPE, headers=headers)

    return orcs_client_js


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags
