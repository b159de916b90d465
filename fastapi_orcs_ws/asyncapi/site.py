"""Serving the docs: ``/asyncapi.json`` and the offline ``/ws-docs`` page, once per app."""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import EllipsisType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute

from .._client_script import client_script_endpoint
from ..errors import ConfigurationError
from ..routing import event_routes_of
from .document import _base_document, _placeholder_server, _with_server

__all__ = ["add_openapi_link", "mount_docs", "prepare_docs", "render_page"]

DEFAULT_ASYNCAPI_URL = "/asyncapi.json"
DEFAULT_DOCS_URL = "/ws-docs"
DEFAULT_CLIENT_URL = "/orcs-client.js"


# A Host header as a client may send it: a name or an address, and a port.
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def _request_server(request: Request) -> dict[str, Any]:
    """The server a browser reached: its host, ``ws``/``wss`` and the ASGI ``root_path``."""
    netloc = request.url.netloc
    if not _HOST.fullmatch(netloc):
        return _placeholder_server(request.app)
    secure = request.url.scheme in ("https", "wss")
    server: dict[str, Any] = {"host": netloc, "protocol": "wss" if secure else "ws"}
    root_path = str(request.scope.get("root_path", "")).rstrip("/")
    if root_path:
        server["pathname"] = root_path
    return server


@dataclass
class _Docs:
    """The docs of one app: where they are served, and the document once built."""

    asyncapi_url: str | None
    docs_url: str | None
    link_from_openapi: bool
    client_url: str | None = DEFAULT_CLIENT_URL
    routes: list[BaseRoute] = field(default_factory=list)
    document: dict[str, Any] | None = None
    """Built at start-up (or on the first request), without ``servers`` (per request)."""
    console: bool | None = None
    """Whether the page offers the "Try it" console (``WS_DOCS_CONSOLE``), with the document."""

    def document_for(self, request: Request) -> dict[str, Any]:
        if self.document is None:
            self.document = _base_document(request.app)
        return _with_server(self.document, _request_server(request))

    def console_for(self, app: FastAPI) -> bool:
        if self.console is None:
            self.console = _console_on(app)
        return self.console


def _console_on(app: FastAPI) -> bool:
    """The console shows unless a router serving an event route has ``docs_console`` off."""
    return all(route.router.settings.docs_console for _, route in event_routes_of(app))


_MOUNTED: weakref.WeakKeyDictionary[FastAPI, _Docs] = weakref.WeakKeyDictionary()


def mount_docs(
    app: FastAPI,
    *,
    asyncapi_url: str | None = DEFAULT_ASYNCAPI_URL,
    docs_url: str | None = DEFAULT_DOCS_URL,
    link_from_openapi: bool = False,
    client_url: str | EllipsisType | None = ...,
) -> None:
    """Serve the app's AsyncAPI document and an offline HTML page describing every event route.

    The one place where an app's event docs are configured. Without a call, an app with event
    routes gets them at ``/asyncapi.json`` and ``/ws-docs`` when it starts; call this before
    it starts to move them, or to turn them off (``None`` for a URL leaves that route out;
    both ``None``: no docs). The routes are added to the app now and moved after every other
    route at start-up, so the app's own routes always win; they are left out of the OpenAPI
    schema. The document is built at start-up (or on the first request) and cached; its
    ``servers`` entry is filled from each request (host, ``ws``/``wss``, ``root_path``).

    Args:
        app: the FastAPI application (not a router: the docs describe the whole app).
        asyncapi_url: where the JSON document is served, from the app's root.
        docs_url: where the HTML page is served.
        link_from_openapi: add links to both to ``app.description`` (so FastAPI's ``/docs``
            shows them). Off by default: only the app's owner changes its description.
        client_url: where the JavaScript client ``orcs-client.js`` is served (cacheable:
            ``ETag`` and ``Cache-Control: public, max-age=3600``; see docs/clients.md).
            Default ``/orcs-client.js``, or not served when both docs URLs are ``None``.

    Raises:
        ConfigurationError: ``app`` is not a FastAPI app, a URL does not start with ``/``, or
            the app's docs were already mounted differently (call it once).

    Example:
        ```python
        app = FastAPI()
        app.include_router(router)
        mount_docs(app, docs_url="/internal/ws-docs")
        mount_docs(other_app, asyncapi_url=None, docs_url=None)  # no event docs
        ```
    """
    if not isinstance(app, FastAPI):
        raise ConfigurationError(
            f"mount_docs takes the FastAPI application, not {type(app).__name__}: the docs "
            "describe every router of the app and are mounted once"
        )
    if client_url is ...:
        client_url = None if asyncapi_url is None and docs_url is None else DEFAULT_CLIENT_URL
    for url in (asyncapi_url, docs_url, client_url):
        if url is not None and (not isinstance(url, str) or not url.startswith("/")):
            raise ConfigurationError(f"mount_docs: {url!r} is not a path starting with '/'")
    wanted = _Docs(asyncapi_url, docs_url, link_from_openapi, client_url)
    current = _MOUNTED.get(app)
    if current is not None:
        if _where(current) == _where(wanted):
            return
        raise ConfigurationError(
            f"mount_docs: this app's docs are already mounted ({_where(current)}); call "
            "mount_docs(app, ...) once, before the app starts"
        )
    _add_routes(app, wanted)
    _MOUNTED[app] = wanted
    if link_from_openapi and (docs_url or asyncapi_url):
        add_openapi_link(app, docs_url, asyncapi_url)


def _where(docs: _Docs) -> str:
    return (
        f"asyncapi_url={docs.asyncapi_url!r}, docs_url={docs.docs_url!r}, "
        f"link_from_openapi={docs.link_from_openapi!r}, client_url={docs.client_url!r}"
    )


def _add_routes(app: FastAPI, docs: _Docs) -> None:
    if docs.asyncapi_url is not None:

        async def asyncapi_json(request: Request) -> JSONResponse:
            return JSONResponse(docs.document_for(request))

        app.add_api_route(
            docs.asyncapi_url,
            asyncapi_json,
            methods=["GET"],
            include_in_schema=False,
            name="fastapi_orcs_ws_asyncapi",
        )
        docs.routes.append(app.router.routes[-1])

    if docs.docs_url is not None:

        async def ws_docs(request: Request) -> HTMLResponse:
            page = render_page(
                docs.document_for(request),
                asyncapi_url=docs.asyncapi_url,
                docs_url=docs.docs_url,
                console=docs.console_for(request.app),
            )
            return HTMLResponse(page)

        app.add_api_route(
            docs.docs_url,
            ws_docs,
            methods=["GET"],
            include_in_schema=False,
            name="fastapi_orcs_ws_docs",
        )
        docs.routes.append(app.router.routes[-1])

    if docs.client_url is not None:
        app.add_api_route(
            docs.client_url,
            client_script_endpoint(),
            methods=["GET", "HEAD"],
            include_in_schema=False,
            name="fastapi_orcs_ws_client",
        )
        docs.routes.append(app.router.routes[-1])


def prepare_docs(app: Any) -> None:
    """At start-up (each router's lifespan calls it): mount the default docs unless
    [`mount_docs`][fastapi_orcs_ws.asyncapi.mount_docs] configured them, put them after every other
    route, build the document.
    """
    if not isinstance(app, FastAPI) or not event_routes_of(app):
        return
    if app not in _MOUNTED:
        mount_docs(app)
    docs = _MOUNTED[app]
    routes = app.router.routes
    ours = [route for route in routes if any(route is mine for mine in docs.routes)]
    if ours and routes[-len(ours) :] != ours:
        routes[:] = [route for route in routes if not any(route is mine for mine in ours)]
        routes.extend(ours)  # after every route of the app: the app's own win
    if docs.routes and docs.document is None:
        docs.document = _base_document(app)  # now, so its warnings come at start-up
    if docs.routes and docs.console is None:
        docs.console = _console_on(app)


def add_openapi_link(app: FastAPI, docs_url: str | None, asyncapi_url: str | None) -> None:
    """Add links to the event docs to the app's description (so FastAPI's ``/docs`` shows them).

    Only for an app's owner to call (``mount_docs(app, link_from_openapi=True)`` does): it
    changes ``app.description`` and drops a cached OpenAPI schema so it is rebuilt.
    """
    root = app.root_path.rstrip("/")
    links = []
    if docs_url is not None:
        links.append(f"[WebSocket events]({root}{docs_url})")
    if asyncapi_url is not None:
        links.append(f"[AsyncAPI document]({root}{asyncapi_url})")
    line = "WebSocket API: " + " · ".join(links)
    if line in (app.description or ""):
        return
    app.description = f"{app.description}\n\n{line}" if app.description else line
    app.openapi_schema = None  # rebuilt with the new description on the next /openapi.json


@cache
def _template() -> str:
    return resources.files("fastapi_orcs_ws").joinpath("static/ws-docs.html").read_text("utf-8")


def render_page(
    document: dict[str, Any],
    *,
    asyncapi_url: str | None = None,
    docs_url: str | None = None,
    console: bool = True,
) -> str:
    """The self-contained HTML page for ``document`` (inline CSS and JS, no network).

    The page connects to ``servers`` (its first entry's ``pathname``, the app's root path)
    plus each channel's address, on the host the browser is on. With ``console`` (the
    ``WS_DOCS_CONSOLE`` setting), each route gets a "Try it" console: connect (token in the
    ``["token", JWT]`` subprotocol), send client events checked against their JSON Schema,
    see acks, errors and a log of every frame (docs/asyncapi.md).
    """
    values = {
        "TITLE": _html_escape(str(document.get("info", {}).get("title", "WebSocket API"))),
        "ASYNCAPI_URL": _script_json(asyncapi_url),
        "DOCS_URL": _script_json(docs_url),
        "CONSOLE": _script_json(bool(console)),
        "DOCUMENT": _script_json(document),
    }
    # One pass over the template: a value (the app's title) is never read as a placeholder.
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], _template())


_PLACEHOLDER = re.compile(r"\{\{(TITLE|ASYNCAPI_URL|DOCS_URL|CONSOLE|DOCUMENT)\}\}")


def _script_json(value: Any) -> str:
    # "<" escaped so no string in the document can close the <script> element.
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
