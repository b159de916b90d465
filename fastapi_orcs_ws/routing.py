"""WebSocketRouter and event routes: handshake, receive loop and dispatch."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import fastapi.routing
from fastapi import APIRouter, params
from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.types import Lifespan
from starlette.websockets import WebSocket

from ._redact import install_log_redaction
from .auth import Authenticator, AuthOptions
from .connection import Connection, ConnectionData
from .errors import AuthenticationError, EventError
from .handlers import EventHandler, InvalidPayload, compile_handler
from .manager import WebSocketManager
from .protocol import (
    RESERVED_EVENTS,
    CloseCode,
    ErrorCode,
    ProtocolError,
    decode_envelope,
    encode,
    encode_error,
)
from .settings import WebSocketSettings

__all__ = ["EventRoute", "WebSocketRouter", "get_manager"]

logger = logging.getLogger("fastapi_orcs_ws")

F = TypeVar("F", bound=Callable[..., Any])
SCOPE_CONNECTION = "fastapi_orcs_ws.connection"
SCOPE_MANAGER = "fastapi_orcs_ws.manager"
SCOPE_AUTHENTICATOR = "fastapi_orcs_ws.authenticator"
LIFECYCLE_EVENTS = ("connect", "disconnect")


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
    ) -> None:
        self.router = router
        self.path = path
        self.auth = auth
        self.emits: dict[str, Any] = dict(emits or {})
        self.summary = summary
        self.description = description
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
        self.handlers[event] = compile_handler(event, handler)

    def emit(self, event: str, model: Any) -> None:
        """Declare that this route sends ``event`` with payloads of type ``model``."""
        self.emits[event] = model
        self.manager.declare_emits({event: model})

    def handler_for(self, event: str) -> EventHandler | None:
        handler = self.handlers.get(event)
        if handler is None and event in self.manager.handlers:
            handler = compile_handler(event, self.manager.handlers[event])
            self.handlers[event] = handler
        return handler

    # -- the connection's life ----------------------------------------------------------

    async def serve(self, websocket: WebSocket) -> None:
        """Run one connection from handshake to clean-up."""
        authenticator = self.authenticator
        websocket.scope[SCOPE_AUTHENTICATOR] = authenticator
        if not authenticator.origin_allowed(websocket):
            # Refused before accept: the browser sees an HTTP 403.
            logger.info("refused WebSocket handshake from a disallowed origin")
            await websocket.close(CloseCode.POLICY_VIOLATION)
            return
        try:
            auth = await authenticator.authenticate(websocket)
        except AuthenticationError as exc:
            logger.info("refused WebSocket connection: %s", exc)
            # Accept first so the client gets 4401, not an HTTP 403 it cannot read.
            offered = websocket.scope.get("subprotocols") or []
            await websocket.accept(subprotocol="token" if "token" in offered else None)
            await websocket.close(CloseCode.UNAUTHORIZED, "Unauthorized")
            return
        await websocket.accept(subprotocol=auth.subprotocol)
        manager = self.manager
        data = ConnectionData(
            client_id=uuid.uuid4().hex,
            connected_at=datetime.now(UTC),
            manager=manager,
            authenticated=auth.authenticated,
            user=auth.user,
            claims=auth.claims,
        )
        conn = Connection(
            websocket,
            data,
            max_queue=manager.settings.send_queue_size,
            close_timeout=manager.settings.close_timeout,
        )
        websocket.scope[SCOPE_CONNECTION] = conn
        websocket.scope[SCOPE_MANAGER] = manager
        await manager._register(conn, self.path)
        expiry: asyncio.TimerHandle | None = None
        try:
            with anyio.CancelScope() as scope:
                conn._receive_scope = scope
                if auth.expires_at is not None:
                    expiry = _close_at(conn, auth.expires_at)
                if "connect" in self.handlers:
                    await self._run(conn, self.handlers["connect"], None, None)
                await self._receive_loop(conn)
        finally:
            if expiry is not None:
                expiry.cancel()
            with anyio.CancelScope(shield=True):
                conn._closed = True
                handler = self.handlers.get("disconnect")
                if handler is not None:
                    code = conn.close_code if conn.close_code is not None else 1006
                    ended = {"code": code, "reason": conn.close_reason}
                    await self._run(conn, handler, ended, None, reply=False)
                await manager._unregister(conn)
                await conn._stop()

    async def _vanished(self, client_id: str) -> None:
        """Run the disconnect handler for a client whose process died (shared backends)."""
        handler = self.handlers.get("disconnect")
        if handler is None:
            return
        data = ConnectionData(client_id, connected_at=datetime.now(UTC), manager=self.manager)
        conn = Connection.detached(data, path=self.path)
        conn._ended(CloseCode.ABNORMAL, "node lost")
        ended = {"code": CloseCode.ABNORMAL, "reason": "node lost"}
        await self._run(conn, handler, ended, None, reply=False)

    async def _receive_loop(self, conn: Connection) -> None:
        websocket = conn.websocket
        limit = self.manager.settings.max_payload_length
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                conn._ended(message.get("code", CloseCode.NORMAL), message.get("reason") or "")
                return
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                if len(data) > limit:
                    await self._too_big(conn)
                    continue
                conn.send_frame(
                    encode_error(
                        "binary frames are not supported; send JSON text frames",
                        ErrorCode.UNSUPPORTED_FRAME,
                    )
                )
                continue
            # Characters never outnumber bytes, so only long frames pay for encoding.
            if len(text) > limit // 4 and len(text.encode()) > limit:
                await self._too_big(conn)
                continue
            await self._dispatch(conn, text)

    async def _too_big(self, conn: Connection) -> None:
        await conn.close(CloseCode.MESSAGE_TOO_BIG, "message too big")

    async def _dispatch(self, conn: Connection, text: str) -> None:
        try:
            envelope = decode_envelope(text)
        except ProtocolError as exc:
            conn.send_frame(encode_error(exc.message, exc.code))
            return
        event = envelope.event
        if event in RESERVED_EVENTS:
            conn.send_frame(
                encode_error(
                    f"{event!r} is a reserved event and cannot be sent by clients",
                    ErrorCode.RESERVED_EVENT,
                    id=envelope.id,
                    event=event,
                )
            )
            return
        handler = self.handler_for(event)
        if handler is None:
            conn.send_frame(
                encode_error(
                    f"unknown event {event!r}", ErrorCode.UNKNOWN_EVENT, id=envelope.id, event=event
                )
            )
            return
        await self._run(conn, handler, envelope.payload, envelope.id)

    async def _run(
        self,
        conn: Connection,
        handler: EventHandler,
        payload: Any,
        msg_id: str | int | None,
        *,
        reply: bool = True,
    ) -> None:
        event = handler.event
        try:
            result = await handler(conn, payload)
        except InvalidPayload as exc:
            if reply:
                conn.send_frame(_validation_error(exc.error, event, msg_id))
            return
        except EventError as exc:
            if reply:
                conn.send_frame(
                    encode_error(exc.message, exc.code, id=msg_id, event=event, **exc.extra)
                )
            return
        except AuthenticationError:
            await conn.close(CloseCode.UNAUTHORIZED, "Unauthorized")
            return
        except Exception:
            logger.exception("handler for event %r raised (client %s)", event, conn.client_id)
            if reply:
                conn.send_frame(
                    encode_error(
                        "internal server error", ErrorCode.INTERNAL_ERROR, id=msg_id, event=event
                    )
                )
            return
        if msg_id is not None and reply:
            conn.send_frame(encode("ack", result, id=msg_id))


def _validation_error(exc: ValidationError, event: str, msg_id: str | int | None) -> str:
    errors = [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid"}
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    return encode_error(
        f"invalid payload for {event!r}: {where}: {first['msg']}",
        ErrorCode.VALIDATION_ERROR,
        id=msg_id,
        errors=errors,
        event=event,
    )


def _close_at(conn: Connection, expires_at: datetime) -> asyncio.TimerHandle:
    """Close with 4401 when the connection's token expires."""
    loop = asyncio.get_running_loop()
    delay = max(0.0, expires_at.timestamp() - time.time())

    def expire() -> None:
        logger.info("token of client %s expired; closing", conn.client_id)
        # close() only queues the close frame; it completes without suspending.
        conn.close_nowait(CloseCode.UNAUTHORIZED, "Unauthorized")

    return loop.call_later(delay, expire)


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
    ) -> EventRoute:
        """Register an event route at ``path``.

        Args:
            path: the URL path, e.g. ``"/ws/chat"``.
            handlers: event name to handler; ``connect`` and ``disconnect`` are lifecycle events.
            auth: ``{"required": True}`` or an :class:`AuthOptions`, overriding the settings.
            emits: event name to payload type for what the server sends (documentation).
            name: the route name (for ``url_path_for``).
            dependencies: FastAPI dependencies run on the handshake.
        """
        route = EventRoute(
            self,
            path,
            auth=AuthOptions.coerce(auth),
            emits=emits,
            summary=summary,
            description=description,
        )
        for event, handler in (handlers or {}).items():
            route.add(event, handler)
        self.manager.declare_emits(route.emits)

        async def endpoint(websocket: WebSocket) -> None:
            await route.serve(websocket)

        setattr(endpoint, "__orcs_route__", route)  # noqa: B010 - found by event_routes_of
        endpoint.__name__ = name or f"ws_{path.strip('/').replace('/', '_') or 'root'}"
        self.add_api_websocket_route(path, endpoint, name=name, dependencies=dependencies)
        self.event_routes.append(route)
        return route


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


