"""WebSocketRouter and event routes: registration, route discovery, ``get_manager``.

A connection's life (handshake, reader, dispatch, clean-up) is in :mod:`.session`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import fastapi.routing
from fastapi import APIRouter, params
from starlette.requests import HTTPConnection
from starlette.types import Lifespan, Receive, Scope, Send
from starlette.websockets import WebSocket

from ._context import SCOPE_ASGI_RECEIVE, SCOPE_ASGI_SEND, SCOPE_AUTHENTICATOR, SCOPE_CONNECTION
from ._context import SCOPE_MANAGER as SCOPE_MANAGER
from ._redact import install_log_redaction
from .auth import Authenticator, AuthOptions
from .dependencies import validate_handshake
from .errors import ConfigurationError
from .handlers import EventHandler, compile_handler
from .manager import WebSocketManager
from .protocol import RESERVED_EVENTS
from .session import run_session, run_vanished
from .settings import WebSocketSettings

__all__ = ["EventRoute", "WebSocketRouter", "get_manager"]

logger = logging.getLogger("fastapi_orcs_ws")

F = TypeVar("F", bound=Callable[..., Any])
LIFECYCLE_EVENTS = ("connect", "disconnect")
_ = (SCOPE_AUTHENTICATOR, SCOPE_CONNECTION)  # re-exported: older imports name them here


class EventRoute:
    """The events of one WebSocket path; returned by :meth:`WebSocketRouter.ws`.

    Example:
        ```python
        chat = router.ws("/ws/chat")

        @chat.on("message")
        async def message(ws: Connection, payload: ChatMessage) -> None: ...
        ```
    """

    def __init__(
        self,
        router: WebSocketRouter,
        path: str,
        *,
        auth: AuthOptions,
        emits: Mapping[str, Any] | None,
        summary: str | None,
        description: str | None,
        subprotocols: Sequence[str] = (),
        concurrency: int = 1,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"route {path!r}: concurrency must be an integer >= 1, got {concurrency!r}"
            )
        if isinstance(subprotocols, str):
            raise ConfigurationError(
                f"route {path!r}: subprotocols is a list of names, e.g. [{subprotocols!r}]"
            )
        for proto in subprotocols:
            if not isinstance(proto, str) or not _TOKEN_CHARS.fullmatch(proto) or proto == "token":
                raise ConfigurationError(
                    f"route {path!r}: {proto!r} is not a usable subprotocol name (RFC 6455 "
                    "section 4.1: an HTTP token; 'token' is the JWT transport)"
                )
        self.router = router
        self.path = path
        self.auth = auth
        self.emits: dict[str, Any] = dict(emits or {})
        self.summary = summary
        self.description = description
        self.subprotocols: tuple[str, ...] = tuple(subprotocols)
        """Subprotocols this route speaks, in order of preference (RFC 6455 section 1.9)."""
        self.concurrency = concurrency
        """How many of one connection's events may be handled at once (1: in receive order)."""
        self.handlers: dict[str, EventHandler] = {}
        # Merged once here, so a route that requires auth without a key fails at start-up.
        self.authenticator = router.authenticator.for_route(auth)
        router.manager._on_route_gone(path, self._vanished)

    @property
    def manager(self) -> WebSocketManager:
        return self.router.manager

    def on(self, event: str) -> Callable[[F], F]:
        """Decorator registering ``func`` for ``event``."""

        def register(func: F) -> F:
            self.add(event, func)
            return func

        return register

    def add(self, event: str, handler: Callable[..., Any]) -> None:
        """Register ``handler`` for ``event`` (``connect``, ``disconnect`` or a custom name)."""
        if not isinstance(event, str) or not event:
            raise ValueError("event names are non-empty strings")
        if event in RESERVED_EVENTS and event not in LIFECYCLE_EVENTS:
            raise ValueError(f"{event!r} is reserved for the server's replies")
        self.handlers[event] = compile_handler(event, handler, path=self.path)

    def emit(self, event: str, model: Any) -> None:
        """Declare that this route sends ``event`` with payloads of type ``model``."""
        self.emits[event] = model
        self.manager.declare_emits({event: model})

    def handler_for(self, event: str) -> EventHandler | None:
        """The route's handler for ``event``, else the manager's (``manager.on``), else None."""
        handler = self.handlers.get(event)
        if handler is None and event in self.manager.handlers:
            handler = compile_handler(event, self.manager.handlers[event], path=self.path)
            self.handlers[event] = handler
        return handler

    def select_subprotocol(self, offered: Sequence[str]) -> str | None:
        """The subprotocol to accept: the first of the route's that the client offered, else
        ``token`` when the client sent its JWT that way, else None."""
        for proto in offered:
            if proto in self.subprotocols:
                return proto
        return "token" if "token" in offered else None

    async def handshake_problems(self, websocket: WebSocket) -> str:
        """Why the handshake's headers, query, cookies or path cannot serve this route's
        handlers ('' when they can): checked before the first event, not at it."""
        errors = await validate_handshake(self.handlers.values(), websocket)
        if not errors:
            return ""
        first = errors[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "request"
        return f"{where}: {first.get('msg', 'invalid')}"

    async def _vanished(self, client_id: str) -> None:
        """Run the disconnect handler for a client whose process died (shared backends)."""
        await run_vanished(self, client_id)


_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class WebSocketRouter(APIRouter):
    """An ``APIRouter`` that also serves WebSocket event routes.

    It keeps everything an ``APIRouter`` does (HTTP routes, prefixes, dependencies,
    ``include_router``), and its lifespan starts and stops the manager. It also serves
    the generated event docs: the AsyncAPI document at ``asyncapi_url`` and a browsable
    page at ``docs_url`` (``None`` turns either off), linked from FastAPI's ``/docs``.

    Example:
        ```python
        router = WebSocketRouter()

        async def message(ws: Connection, payload: dict) -> None:
            await ws.data.manager.broadcast("message", payload)

        router.ws("/ws/chat", {"message": message})
        app = FastAPI()
        app.include_router(router)
        ```
    """

    def __init__(
        self,
        *,
        manager: WebSocketManager | None = None,
        settings: WebSocketSettings | None = None,
        auth: AuthOptions | Mapping[str, Any] | bool | None = None,
        asyncapi_url: str | None = "/asyncapi.json",
        docs_url: str | None = "/ws-docs",
        lifespan: Lifespan[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if manager is None:
            manager = WebSocketManager(settings=settings)
        self.manager = manager
        self.settings = settings if settings is not None else manager.settings
        self.authenticator = Authenticator(self.settings, AuthOptions.coerce(auth))
        self.event_routes: list[EventRoute] = []
        install_log_redaction()  # uvicorn logs handshake query strings, tokens included
        user_lifespan = lifespan

        @asynccontextmanager
        async def run_manager(app: Any) -> AsyncIterator[Any]:
            app.state.fastapi_orcs_ws_manager = self.manager
            app.state.fastapi_orcs_ws_authenticator = self.authenticator
            if docs_endpoints:
                # Only the app knows the prefix it included this router under.
                add_openapi_link(
                    app,
                    path_of(app, docs_endpoints["docs"]) if "docs" in docs_endpoints else None,
                    path_of(app, docs_endpoints["asyncapi"])
                    if "asyncapi" in docs_endpoints
                    else None,
                )
            await self.manager.start()
            try:
                if user_lifespan is None:
                    yield None
                else:
                    async with user_lifespan(app) as state:
                        yield state
            finally:
                await self.manager.stop()

        super().__init__(lifespan=run_manager, **kwargs)
        # The event docs travel with the router (lazy import: asyncapi reads this module).
        from .asyncapi import add_docs_routes, add_openapi_link

        docs_endpoints = add_docs_routes(self, asyncapi_url=asyncapi_url, docs_url=docs_url)

    def ws(
        self,
        path: str,
        handlers: Mapping[str, Callable[..., Any]] | None = None,
        *,
        auth: AuthOptions | Mapping[str, Any] | bool | None = None,
        emits: Mapping[str, Any] | None = None,
        name: str | None = None,
        dependencies: Sequence[params.Depends] | None = None,
        summary: str | None = None,
        description: str | None = None,
        subprotocols: Sequence[str] = (),
        concurrency: int = 1,
    ) -> EventRoute:
        """Register an event route at ``path``.

        Args:
            path: the URL path, e.g. ``"/ws/chat"``.
            handlers: event name to handler; ``connect`` and ``disconnect`` are lifecycle events.
            auth: ``{"required": True}`` or an :class:`AuthOptions`, overriding the settings.
            emits: event name to payload type for what the server sends (documentation).
            name: the route name (for ``url_path_for``).
            dependencies: FastAPI dependencies run on the handshake.
            subprotocols: the subprotocols the route speaks (``["chat.v1"]``), in order of
                preference; the first one the client offers is selected (RFC 6455 section
                4.2.2). A client offering only others is refused. Default: none.
            concurrency: how many events of one connection are handled at once. Default 1:
                one at a time, in receive order (acks in order too).

        Raises:
            ConfigurationError: a bad ``subprotocols`` or ``concurrency``, a handler that
                cannot be compiled.
        """
        route = EventRoute(
            self,
            path,
            auth=AuthOptions.coerce(auth),
            emits=emits,
            summary=summary,
            description=description,
            subprotocols=subprotocols,
            concurrency=concurrency,
        )
        for event, handler in (handlers or {}).items():
            route.add(event, handler)
        self.manager.declare_emits(route.emits)

        async def endpoint(websocket: WebSocket) -> None:
            await run_session(route, websocket)

        setattr(endpoint, "__orcs_route__", route)  # noqa: B010 - found by event_routes_of
        endpoint.__name__ = name or f"ws_{path.strip('/').replace('/', '_') or 'root'}"
        self.add_api_websocket_route(path, endpoint, name=name, dependencies=dependencies)
        _capture_asgi_channels(self.routes[-1])
        self.event_routes.append(route)
        return route


def _capture_asgi_channels(api_route: Any) -> None:
    """Let the session write frames with the route's ASGI ``send`` itself.

    Starlette's ``WebSocket.send`` re-checks its state on every frame; the session keeps its
    own state, so it sends through the plain ASGI callables, found in the scope.
    """
    inner = api_route.app

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope[SCOPE_ASGI_SEND] = send
        scope[SCOPE_ASGI_RECEIVE] = receive
        await inner(scope, receive, send)

    api_route.app = app


def _mounted_routes(app: Any) -> list[tuple[str, Any]]:
    """Every route of ``app`` with its full path, included routers' prefixes applied."""
    routes = getattr(app, "routes", [])
    # FastAPI >= 0.16x mounts included routers instead of copying their routes; its public
    # iter_route_contexts walks them with their effective (prefixed) paths.
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_contexts is not None:
        pairs = [(ctx.path, ctx.original_route) for ctx in iter_contexts(routes)]
    else:
        pairs = [(getattr(route, "path", None), route) for route in routes]
    return [(path, route) for path, route in pairs if isinstance(path, str)]


def event_routes_of(app: Any) -> list[tuple[str, EventRoute]]:
    """Every event route mounted in ``app``, with its full path (prefixes included)."""
    found = []
    for path, route in _mounted_routes(app):
        event_route = getattr(getattr(route, "endpoint", None), "__orcs_route__", None)
        if isinstance(event_route, EventRoute):
            found.append((path, event_route))
    return found


def path_of(app: Any, endpoint: Callable[..., Any]) -> str | None:
    """The full path at which ``endpoint`` is mounted in ``app``, if it is."""
    for path, route in _mounted_routes(app):
        if getattr(route, "endpoint", None) is endpoint:
            return path
    return None


def get_manager(conn: HTTPConnection) -> WebSocketManager:
    """FastAPI dependency: the manager serving this app's event routes.

    Works in HTTP endpoints and in event handlers:

    ```python
    @app.post("/broadcast")
    async def send(manager: WebSocketManager = Depends(get_manager)):
        await manager.broadcast("announcement", {"text": "hi"})
    ```
    """
    manager = conn.scope.get(SCOPE_MANAGER)
    if isinstance(manager, WebSocketManager):
        return manager
    app = conn.scope.get("app")
    state = getattr(app, "state", None)
    manager = getattr(state, "fastapi_orcs_ws_manager", None)
    if isinstance(manager, WebSocketManager):
        return manager
    managers = {id(r.manager): r.manager for _, r in event_routes_of(app)}
    if len(managers) != 1:
        raise RuntimeError(
            f"get_manager found {len(managers)} WebSocket managers in this app; "
            "depend on your router's manager directly"
        )
    manager = next(iter(managers.values()))
    if state is not None:
        state.fastapi_orcs_ws_manager = manager
    return manager
