"""WebSocketRouter and event routes: registration, route discovery, ``get_manager``.

A connection's life (handshake, reader, dispatch, clean-up) is in `session`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import fastapi.routing
from fastapi import APIRouter, params
from starlette.requests import HTTPConnection
from starlette.routing import Mount
from starlette.types import Lifespan, Scope
from starlette.websockets import WebSocket

from ._context import (
    SCOPE_AUTHENTICATOR,
    SCOPE_CONNECTION,
    SCOPE_ROUTE,
)
from ._context import SCOPE_MANAGER as SCOPE_MANAGER
from ._redact import install_log_redaction
from .auth import Authenticator, AuthOptions, current_user, optional_user
from .auth import _resolve as _resolve_user
from .dependencies import validate_handshake
from .errors import ConfigurationError
from .handlers import EventHandler, compile_handler
from .limits import RateLimit
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
    """The events of one WebSocket path; returned by
    [`WebSocketRouter.ws`][fastapi_orcs_ws.WebSocketRouter.ws].

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
        rate_limit: RateLimit | Literal[False] | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit is not False and not isinstance(
            rate_limit, RateLimit
        ):
            raise ConfigurationError(
                f"route {path!r}: rate_limit is a RateLimit(per_second, burst), False (no limit) "
                f"or None (the settings' WS_RATE_LIMIT_*), got {rate_limit!r}"
            )
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
        self.rate_limit = rate_limit
        """This route's [`RateLimit`][fastapi_orcs_ws.RateLimit]; None: the settings'; False:
        none."""
        """How many of one connection's events may be handled at once (1: in receive order)."""
        self.handlers: dict[str, EventHandler] = {}
        # The handlers whose parameters a handshake must satisfy, as of `_version` (bumped
        # whenever `handlers` changes): found once, not on every connection.
        self._version = 0
        self._checked: tuple[int, list[EventHandler]] | None = None
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
        self._version += 1

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
            self._version += 1
        return handler

    @property
    def effective_rate_limit(self) -> RateLimit | None:
        """The rate limit applied to each connection of this route, if any."""
        if self.rate_limit is False:
            return None
        if self.rate_limit is not None:
            return self.rate_limit
        settings = self.manager.settings
        if not settings.rate_limit_per_second:
            return None
        return RateLimit(settings.rate_limit_per_second, settings.rate_limit_burst)

    def select_subprotocol(self, offered: Sequence[str]) -> str | None:
        """The subprotocol to accept: the first of the route's that the client offered, else
        ``token`` when the client sent its JWT that way, else None."""
        for proto in offered:
            if proto in self.subprotocols:
                return proto
        return "token" if "token" in offered else None

    def _handshake_handlers(self) -> list[EventHandler]:
        """The handlers (the route's and the manager's) that declare request parameters."""
        handlers = self.handlers
        for event in self.manager.handlers:
            if event not in handlers:
                self.handler_for(event)  # compiled into `handlers` (a new version)
        checked = self._checked
        if checked is None or checked[0] != self._version:
            needed = [h for h in handlers.values() if h.dependencies is not None]
            checked = self._checked = (self._version, needed)
        return checked[1]

    async def handshake_problems(self, websocket: WebSocket) -> str:
        """Why the handshake's headers, query, cookies or path cannot serve this route's
        handlers ('' when they can): checked before the first event, not at it."""
        handlers = self._handshake_handlers()
        if not handlers:
            return ""
        errors = await validate_handshake(handlers, websocket)
        if not errors:
            return ""
        first = errors[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "request"
        return f"{where}: {first.get('msg', 'invalid')}"

    async def _vanished(self, client_id: str, *, info: Mapping[str, Any]) -> None:
        """Run the disconnect handler for a client whose process died (shared backends)."""
        await run_vanished(self, client_id, info=info)


_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class WebSocketRouter(APIRouter):
    """An ``APIRouter`` that also serves WebSocket event routes.

    It keeps everything an ``APIRouter`` does (HTTP routes, prefixes, dependencies,
    ``include_router``, every lifespan form: ``lifespan=``, ``on_startup``/``on_shutdown``
    where the installed FastAPI has them). A router without event routes is exactly an
    ``APIRouter``: same routes, same OpenAPI, same lifespan.

    Each router has its own state: its [`manager`][fastapi_orcs_ws.WebSocketRouter.manager] and its
    [`authenticator`][fastapi_orcs_ws.WebSocketRouter.authenticator]. The WebSocket side finds them
    from the route that is serving; HTTP endpoints ask the router
    for them with ``Depends(router.get_manager)``, ``Depends(router.current_user)`` and
    ``Depends(router.optional_user)``. Routers meant to share rooms share one manager,
    explicitly: ``WebSocketRouter(manager=shared)``.

    When an app holding event routes starts, its lifespan starts each router's manager (and
    stops it on shutdown), and the generated docs are mounted once for the whole app (see
    [`mount_docs`][fastapi_orcs_ws.asyncapi.mount_docs]: ``/asyncapi.json`` and ``/ws-docs`` at the
    app's root, after every route of the app). A router never adds routes to itself.

    Args:
        manager: the manager to use; a new one (from ``settings``) when ``None``.
        settings: defaults to the manager's settings, else ``WS_*`` variables.
        auth: the router's auth options (``{"required": True}``, an ``AuthOptions``...);
            each route's ``auth=`` overrides them.
        lifespan: the router's own lifespan, as for ``APIRouter``; it runs inside the
            manager's (the manager is started before it and stopped after it).
        **kwargs: everything ``APIRouter`` takes.

    Raises:
        ConfigurationError: ``asyncapi_url=``/``docs_url=`` given (the docs are configured
            once per app, with ``mount_docs(app, ...)``), or auth settings that cannot work.

    Example:
        ```python
        router = WebSocketRouter()

        async def message(ws: Connection, payload: dict) -> None:
            await ws.data.manager.broadcast("message", payload)

        router.ws("/ws/chat", {"message": message})
        app = FastAPI()
        app.include_router(router)

        @app.post("/announce")
        async def announce(manager: WebSocketManager = Depends(router.get_manager)) -> None:
            await manager.broadcast("announcement", {"text": "hi"})
        ```
    """

    def __init__(
        self,
        *,
        manager: WebSocketManager | None = None,
        settings: WebSocketSettings | None = None,
        auth: AuthOptions | Mapping[str, Any] | bool | None = None,
        lifespan: Lifespan[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        for gone in ("asyncapi_url", "docs_url"):
            if gone in kwargs:
                raise ConfigurationError(
                    f"WebSocketRouter({gone}=...): a router no longer serves docs itself; the "
                    f"app's docs are configured once, with mount_docs(app, {gone}=...) "
                    "(None turns that route off)"
                )
        if manager is None:
            manager = WebSocketManager(settings=settings)
        self.manager = manager
        """The router's manager: its rooms and connections."""
        self.settings = settings if settings is not None else manager.settings
        self.authenticator = Authenticator(self.settings, AuthOptions.coerce(auth))
        """The router's authenticator (its settings and ``auth=`` options)."""
        self.event_routes: list[EventRoute] = []
        install_log_redaction()  # uvicorn logs handshake query strings, tokens included
        super().__init__(lifespan=lifespan, **kwargs)
        # FastAPI has turned `lifespan` (or on_startup/on_shutdown) into a context factory;
        # wrapping that keeps every form an APIRouter accepts, in any FastAPI version.
        self.lifespan_context = self._serving(self.lifespan_context)

    def _serving(self, inner: Lifespan[Any]) -> Lifespan[Any]:
        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            serving = bool(self.event_routes)  # without event routes: an APIRouter
            if serving:
                _check_app(app)
                await self.manager.start()
            try:
                async with inner(app) as state:
                    yield state
            finally:
                if serving:
                    await self.manager.stop()

        return lifespan

    def get_manager(self) -> WebSocketManager:
        """FastAPI dependency: this router's manager, for HTTP endpoints and handlers.

        Example:
            ```python
            @app.post("/rooms/{room}/say")
            async def say(room: str, manager=Depends(chat_router.get_manager)) -> dict:
                return {"delivered": await manager.broadcast_to_room(room, "say", {})}
            ```
        """
        return self.manager

    async def current_user(self, conn: HTTPConnection) -> Any:
        """FastAPI dependency: the user authenticated by this router's settings, or refuse.

        Over HTTP it verifies ``Authorization: Bearer`` with
        [`authenticator`][fastapi_orcs_ws.WebSocketRouter.authenticator] and answers 401
        (``WWW-Authenticate: Bearer``) when that fails; in an event handler it returns the
        connection's user (``AuthenticationError`` when anonymous).
        """
        return await _resolve_user(conn, required=True, authenticator=self.authenticator)

    async def optional_user(self, conn: HTTPConnection) -> Any:
        """FastAPI dependency: like [`current_user`][fastapi_orcs_ws.WebSocketRouter.current_user],
        but ``None`` when anonymous.

        A presented but invalid token is still refused (401 / ``AuthenticationError``).
        """
        return await _resolve_user(conn, required=False, authenticator=self.authenticator)

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
        rate_limit: RateLimit | Literal[False] | None = None,
    ) -> EventRoute:
        """Register an event route at ``path``.

        Args:
            path: the URL path, e.g. ``"/ws/chat"``.
            handlers: event name to handler; ``connect`` and ``disconnect`` are lifecycle events.
            auth: ``{"required": True}`` or an [`AuthOptions`][fastapi_orcs_ws.AuthOptions],
                overriding the settings.
            emits: event name to payload type for what the server sends (documentation).
            name: the route name (for ``url_path_for``).
            dependencies: FastAPI dependencies run on the handshake.
            subprotocols: the subprotocols the route speaks (``["chat.v1"]``), in order of
                preference; the first one the client offers is selected (RFC 6455 section
                4.2.2). A client offering only others is refused. Default: none.
            concurrency: how many events of one connection are handled at once. Default 1:
                one at a time, in receive order (acks in order too).
            rate_limit: events per second per connection, as a
                [`RateLimit`][fastapi_orcs_ws.RateLimit]; ``None`` (default) takes
                ``WS_RATE_LIMIT_PER_SECOND``/``WS_RATE_LIMIT_BURST``, ``False`` turns it off for
                this route.

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
            rate_limit=rate_limit,
        )
        for event, handler in (handlers or {}).items():
            route.add(event, handler)
        self.manager.declare_emits(route.emits)

        async def endpoint(websocket: WebSocket) -> None:
            await run_session(route, websocket)

        setattr(endpoint, "__orcs_route__", route)  # noqa: B010 - found by event_routes_of
        endpoint.__name__ = name or f"ws_{path.strip('/').replace('/', '_') or 'root'}"
        self.add_api_websocket_route(path, endpoint, name=name, dependencies=dependencies)
        self.event_routes.append(route)
        return route




def _walk(routes: Sequence[Any], prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(full path, original route, effective route)`` for every route, through included
    routers (their prefixes applied) and Starlette ``Mount``s (their paths applied)."""
    # FastAPI >= 0.16x mounts included routers instead of copying their routes; its public
    # iter_route_contexts walks them with their effective (prefixed) paths and dependants.
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_contexts is not None:
        items = [(ctx.path, ctx.original_route, ctx) for ctx in iter_contexts(routes)]
    else:
        items = [(getattr(route, "path", None), route, route) for route in routes]
    for path, original, effective in items:
        if isinstance(original, Mount):
            mount_path = path if path is not None else original.path
            yield from _walk(original.routes, prefix + mount_path)
        elif isinstance(path, str):
            yield prefix + path, original, effective


def _mounted_routes(app: Any) -> list[tuple[str, Any]]:
    """Every route of ``app`` with its full path: included routers' prefixes and ``Mount``
    paths applied, the ASGI ``root_path`` not (it is the server's, see AsyncAPI ``servers``)."""
    return [(path, original) for path, original, _ in _walk(getattr(app, "routes", []))]


def event_routes_of(app: Any) -> list[tuple[str, EventRoute]]:
    """Every event route mounted in ``app``, with its full path (prefixes and mounts included)."""
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


def serving_route(scope: Scope) -> EventRoute | None:
    """The event route serving this WebSocket scope: set by the session, or (during the
    handshake's own dependencies, before the session starts) the matched endpoint's."""
    route = scope.get(SCOPE_ROUTE)
    if route is None:
        route = getattr(scope.get("endpoint"), "__orcs_route__", None)
    return route if isinstance(route, EventRoute) else None


# Each app's event routes as of its start-up: request-time lookups (plain get_manager,
# current_user) must not walk every route of a large app on every request.
_STARTED: weakref.WeakKeyDictionary[Any, list[tuple[str, EventRoute]]] = weakref.WeakKeyDictionary()


def app_event_routes(app: Any) -> list[tuple[str, EventRoute]]:
    """`event_routes_of` ``app``, as of its last start-up (walked now if it has not
    started: an app driven without its lifespan)."""
    try:
        return _STARTED[app]
    except (KeyError, TypeError):
        return event_routes_of(app)


def managers_of(app: Any) -> dict[WebSocketManager, list[str]]:
    """The distinct managers of ``app``'s event routes, each with the paths it serves."""
    found: dict[WebSocketManager, list[str]] = {}
    for path, route in app_event_routes(app):
        found.setdefault(route.manager, []).append(path)
    return found


def _listing(groups: Iterable[list[str]]) -> str:
    return "; ".join(", ".join(paths) for paths in groups)


def get_manager(conn: HTTPConnection) -> WebSocketManager:
    """FastAPI dependency: the manager of the router serving this request.

    In an event handler (or a WebSocket route's handshake dependencies) it is the serving
    route's router's manager. Over HTTP, where no route of this library is serving, it is the
    app's only manager: an app whose routers have several managers must name the router,
    ``Depends(router.get_manager)``; the app refuses to start when an HTTP route depends on
    plain ``get_manager`` and the answer would be ambiguous.

    Raises:
        ConfigurationError: over HTTP, the app's event routes have no manager or several
            (the message lists the routes and the fix).

    Example:
        ```python
        @app.post("/broadcast")
        async def send(manager: WebSocketManager = Depends(get_manager)):
            await manager.broadcast("announcement", {"text": "hi"})
        ```
    """
    manager = conn.scope.get(SCOPE_MANAGER)
    if isinstance(manager, WebSocketManager):
        return manager
    route = serving_route(conn.scope)
    if route is not None:
        return route.manager
    managers = managers_of(conn.scope.get("app"))
    if len(managers) == 1:
        return next(iter(managers))
    raise ConfigurationError(_ambiguous_manager(managers))


def _ambiguous_manager(managers: Mapping[WebSocketManager, list[str]]) -> str:
    if not managers:
        return (
            "get_manager: this app has no WebSocket event routes, so no manager to return; "
            "depend on a router's own manager: Depends(router.get_manager)"
        )
    return (
        f"get_manager: this app has {len(managers)} WebSocket managers (routes "
        f"{_listing(managers.values())}) and cannot tell which one is meant; depend on the "
        "router's own, Depends(router.get_manager), or give the routers one manager: "
        "WebSocketRouter(manager=shared)"
    )


def _dependency_calls(dependant: Any) -> Iterator[Any]:
    """Every callable in a FastAPI dependant's tree (its sub-dependencies, recursively)."""
    stack = [dependant]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield getattr(node, "call", None)
        stack.extend(getattr(node, "dependencies", None) or ())


def _check_app(app: Any) -> None:
    """At start-up: refuse a plain ``get_manager``/``current_user``/``optional_user`` that
    could not know which router is meant, then mount the app's docs."""
    if not hasattr(app, "routes"):
        return
    with contextlib.suppress(TypeError):  # an app that cannot be weakly referenced
        _STARTED[app] = event_routes_of(app)
    from .auth import ambiguous_authenticators

    problems: dict[Any, str] = {}
    managers = managers_of(app)
    if len(managers) > 1:
        problems[get_manager] = _ambiguous_manager(managers)
    auth_problem = ambiguous_authenticators(app)
    if auth_problem:
        problems.update({current_user: auth_problem, optional_user: auth_problem})
    overridden = getattr(app, "dependency_overrides", {}) or {}
    for path, original, effective in _walk(app.routes) if problems else ():
        if getattr(getattr(original, "endpoint", None), "__orcs_route__", None) is not None:
            continue  # an event route's handshake: the serving route answers
        dependant = getattr(effective, "dependant", None) or getattr(original, "dependant", None)
        for call in _dependency_calls(dependant):
            problem = next((text for fn, text in problems.items() if call is fn), None)
            if problem is not None and not any(call is fn for fn in overridden):
                raise ConfigurationError(f"route {path} depends on {problem}")
    from .asyncapi.site import prepare_docs  # asyncapi reads this module

    prepare_docs(app)
