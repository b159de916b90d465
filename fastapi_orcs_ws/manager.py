"""WebSocketManager: connections, rooms and delivery rules, on top of a backend."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from ._outbox import PENDING, settle
from .backends import Backend, backend_from_url
from .errors import ManagerStoppedError
from .protocol import CloseCode, encode, truncate_reason, validate_close_code
from .settings import WebSocketSettings

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Stats", "WebSocketManager"]

logger = logging.getLogger("fastapi_orcs_ws")

F = TypeVar("F", bound=Callable[..., Any])
Exclude = str | Iterable[str] | None
GoneClients = Mapping[str, Mapping[str, Any]]
GoneCallback = Callable[[GoneClients], Awaitable[None]]
RouteGoneHandler = Callable[..., Awaitable[None]]


class Stats(BaseModel):
    """Connection statistics; serialised with the spec's camelCase keys.

    ``{"connections": 42, "rooms": 5, "averageRoomSize": 8.4, ...}``
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, frozen=True
    )

    connections: int
    rooms: int
    average_room_size: float
    slow_consumer_disconnects: int = 0
    """Clients this process disconnected because they stopped reading (4429)."""
    publish_failures: int = 0
    """Publishes of this process that never reached the other processes (Redis was
    unreachable): every other process's clients missed that frame. Always 0 in memory."""
    frames_lost: int = 0
    """Frames this process handed to Redis for a process that was not listening (its
    subscription was down, or it had died), one per recipient client there, plus inter-process
    messages it received and had to drop. Always 0 in memory."""
    backend: str = "memory"
    backend_healthy: bool = True
    backend_details: dict[str, Any] = Field(default_factory=dict)


class WebSocketManager:
    """Connections, rooms and broadcasting.

    In-memory by default; pass ``backend="redis://..."`` (or set ``WS_BACKEND_URL``)
    to share rooms and delivery across processes. Every method that delivers, changes
    membership or reads it is a coroutine, because a backend may do I/O there.

    Example:
        ```python
        manager = WebSocketManager(idle_timeout=60)
        router = WebSocketRouter(manager=manager)

        @app.post("/announce")
        async def announce(text: str, manager: WebSocketManager = Depends(get_manager)):
            return {"delivered": await manager.broadcast("announcement", {"text": text})}
        ```
    """

    def __init__(
        self,
        *,
        settings: WebSocketSettings | None = None,
        backend: Backend | str | None = None,
        idle_timeout: float | None = None,
        max_payload_length: int | None = None,
        send_queue_size: int | None = None,
    ) -> None:
        overrides: dict[str, Any] = {
            k: v
            for k, v in (
                ("idle_timeout", idle_timeout),
                ("max_payload_length", max_payload_length),
                ("send_queue_size", send_queue_size),
            )
            if v is not None
        }
        base = settings if settings is not None else WebSocketSettings()
        self.settings: WebSocketSettings = base.model_copy(update=overrides) if overrides else base
        if backend is None:
            backend = self.settings.backend_url
        self.backend: Backend = backend_from_url(backend) if isinstance(backend, str) else backend
        self.handlers: dict[str, Callable[..., Any]] = {}
        """Handlers shared by every route (``manager.on``); a route's own handlers win."""
        self._connections: dict[str, Connection] = {}
        self._gone_callbacks: list[GoneCallback] = []
        self._route_gone: dict[str, RouteGoneHandler] = {}
        self._route_gone_takes_info: set[str] = set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._started = False
        self._stopped = False
        self._start_lock = asyncio.Lock()
        self._slow_consumers = 0
        self._emit_checks: dict[str, TypeAdapter[Any]] = {}

    @property
    def idle_timeout(self) -> float:
        return self.settings.idle_timeout

    @property
    def max_payload_length(self) -> int:
        return self.settings.max_payload_length

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend. Called by the router's lifespan, or lazily on first use.

        A stopped manager starts again only through this call (an app's lifespan run twice,
        as a test client does); the delivery and membership methods never restart it.
        """
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self.backend.start(self)
                self._started = True
                self._stopped = False

    async def _ready(self) -> None:
        if self._started:
            return
        if self._stopped:
            raise ManagerStoppedError(
                "this WebSocketManager was stopped (its app shut down); start it again with "
                "`await manager.start()` or use it inside the app's lifespan"
            )
        await self.start()

    async def stop(self) -> None:
        """Close every local connection (1001), let their disconnect logic run, stop the backend."""
        if not self._started:
            return
        for conn in list(self._connections.values()):
            await conn.close(CloseCode.GOING_AWAY, "server shutting down")
        # Disconnect handlers may still publish (a chat's user-left): let them, for a while.
        with anyio.move_on_after(self.settings.close_timeout):
            await self._drained.wait()
        await self.backend.stop()
        self._started = False
        self._stopped = True

    async def __aenter__(self) -> WebSocketManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- handlers -----------------------------------------------------------------------

    def on(self, event: str, handler: F | None = None) -> Any:
        """Register a handler shared by every route: ``manager.on("ping", fn)`` or decorate."""

        def register(func: F) -> F:
            self.handlers[event] = func
            return func

        return register(handler) if handler is not None else register

    # -- membership ---------------------------------------------------------------------

    async def join_room(self, client_id: str, room: str) -> bool:
        """Put a client in a room; False if the client is not connected.

        Raises TypeError if ``client_id`` or ``room`` is not a ``str`` (a ``str`` subclass,
        such as a ``StrEnum`` member, counts as its plain value).
        """
        client_id, room = _client_id(client_id), _room(room)
        await self._ready()
        return await self.backend.join(client_id, room)

    async def leave_room(self, client_id: str, room: str) -> bool:
        """Take a client out of a room (an empty room disappears); False if it was not in it.

        Raises TypeError if ``client_id`` or ``room`` is not a ``str``.
        """
        client_id, room = _client_id(client_id), _room(room)
        await self._ready()
        return await self.backend.leave(client_id, room)

    async def get_room_clients(self, room: str) -> set[str]:
        """The ids of the clients in ``room``; TypeError if ``room`` is not a ``str``."""
        room = _room(room)
        await self._ready()
        return await self.backend.room_clients(room)

    async def get_client_rooms(self, client_id: str) -> set[str]:
        """The rooms ``client_id`` is in; TypeError if ``client_id`` is not a ``str``."""
        client_id = _client_id(client_id)
        await self._ready()
        return await self.backend.client_rooms(client_id)

    async def get_stats(self) -> Stats:
        """Connections, rooms and average room size (across all processes)."""
        await self._ready()
        counts = await self.backend.stats()
        return Stats(
            connections=counts.connections,
            rooms=counts.rooms,
            average_room_size=round(counts.memberships / counts.rooms, 2) if counts.rooms else 0.0,
            slow_consumer_disconnects=self._slow_consumers,
            publish_failures=counts.publish_failures,
            frames_lost=counts.frames_lost,
            backend=self.backend.name,
            backend_healthy=counts.healthy,
            backend_details=counts.details,
        )

    # -- delivery -----------------------------------------------------------------------

    async def broadcast(self, event: str, payload: Any = None, *, exclude: Exclude = None) -> int:
        """Send to every connected client; returns how many it was addressed to."""
        await self._ready()
        frame = self.encode_event(event, payload)
        pending: list[Any] = []
        token = PENDING.set(pending)
        try:
            sent = await self.backend.publish_all(frame, _exclude(exclude))
        finally:
            PENDING.reset(token)
        await _finish_fan_out(pending)
        return sent

    async def broadcast_to_room(
        self, room: str, event: str, payload: Any = None, *, exclude: Exclude = None
    ) -> int:
        """Send to every client in ``room`` except ``exclude``; returns how many.

        Raises TypeError if ``room`` is not a ``str``.
        """
        room = _room(room)
        await self._ready()
        frame = self.encode_event(event, payload)
        pending: list[Any] = []
        token = PENDING.set(pending)
        try:
            sent = await self.backend.publish_room(room, frame, _exclude(exclude))
        finally:
            PENDING.reset(token)
        await _finish_fan_out(pending)
        return sent

    async def send_to_client(self, client_id: str, event: str, payload: Any = None) -> bool:
        """Send to one client; False if it is not connected."""
        await self._ready()
        frame = self.encode_event(event, payload)
        pending: list[Any] = []
        token = PENDING.set(pending)
        try:
            sent = await self.backend.publish_client(client_id, frame)
        finally:
            PENDING.reset(token)
        if pending:
            await settle(pending)
        return sent

    async def send(self, ws: Connection, event: str, payload: Any = None) -> bool:
        """Send to a connection you hold (the spec's ``manager.send(ws, ...)``)."""
        return await ws.send(event, payload)

    async def disconnect(
        self, client_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> bool:
        """Close a client's connection; False if it is not connected."""
        validate_close_code(code)
        await self._ready()
        return await self.backend.disconnect_client(client_id, code, truncate_reason(reason))

    def encode_event(self, event: str, payload: Any = None) -> str:
        """Encode one outbound frame; with ``WS_DEBUG`` check it against declared ``emits``."""
        if self._emit_checks:
            adapter = self._emit_checks.get(event)
            if adapter is not None:
                # Raises pydantic.ValidationError into the sending handler: a bug to fix.
                adapter.validate_python(payload)
        return encode(event, payload)

    def declare_emits(self, emits: dict[str, Any]) -> None:
        """Record what routes send; in debug mode outgoing payloads are checked against it."""
        if self.settings.debug:
            for event, model in emits.items():
                self._emit_checks[event] = TypeAdapter(model)

    # -- local connections --------------------------------------------------------------

    def get_connection(self, client_id: str) -> Connection | None:
        """The :class:`Connection` of a client held by this process, if any."""
        return self._connections.get(client_id)

    @property
    def local_connections(self) -> int:
        """How many connections this process holds."""
        return len(self._connections)

    def on_clients_gone(self, callback: GoneCallback) -> None:
        """Run ``callback({client_id: info})`` when another process dies holding clients.

        Only a shared backend (Redis) reports this, once per vanished client, on the one
        surviving process that claimed it: a process serving the client's route (a process
        with no routes but such a callback takes clients registered without a route). Routes
        already run their ``disconnect`` handler for them; ``info`` is what the client was
        registered with (``{"route": "/ws/chat", ...}``).
        """
        self._gone_callbacks.append(callback)

    def _on_route_gone(self, route: str, handler: RouteGoneHandler) -> None:
        """Register ``await handler(client_id, info=info)`` (or ``handler(client_id)``), the
        disconnect logic of ``route`` for a client whose process died."""
        self._route_gone[route] = handler
        self._route_gone_takes_info.discard(route)
        if _takes_keyword(handler, "info"):
            self._route_gone_takes_info.add(route)

    async def _client_closing(self, client_id: str) -> None:
        """A local client's clean close starts: call before its ``disconnect`` handler.

        A shared backend records it, so that if this process dies before
        ``_unregister``, no survivor runs that handler a second time.
        """
        try:
            await self.backend.client_closing(client_id)
        except Exception:
            logger.exception("backend failed to record the close of client %s", client_id)

    async def _register(self, conn: Connection, route: str = "") -> None:
        await self._ready()
        self._connections[conn.data.client_id] = conn
        self._drained.clear()
        await self.backend.add_client(conn.data.client_id, {"route": route} if route else None)

    async def _unregister(self, conn: Connection) -> None:
        client_id = conn.data.client_id
        if self._connections.get(client_id) is conn:
            del self._connections[client_id]
        if not self._connections:
            self._drained.set()
        try:
            await self.backend.remove_client(client_id)
        except Exception:
            logger.exception("backend failed to remove client %s", client_id)

    def _count_slow_consumer(self, conn: Connection, why: str) -> None:
        self._slow_consumers += 1
        logger.warning(
            "client %s is not keeping up (%s); disconnecting with %d",
            conn.data.client_id,
            why,
            CloseCode.SLOW_CONSUMER,
        )

    # -- Node: called by the backend ----------------------------------------------------

    def deliver_local(
        self, frame: str, client_ids: Iterable[str] | None, exclude: Collection[str]
    ) -> int:
        # The hot path of every broadcast. One ASGI message for all recipients, and no
        # copies: sending never changes membership synchronously (a failing peer is
        # cleaned up by its own session, later). Inside a manager call, idle recipients are
        # written to at once; what is left is settled by the caller (see _outbox.PENDING).
        message = {"type": "websocket.send", "text": frame}
        pending = PENDING.get()
        conns = self._connections
        sent = 0
        if client_ids is None:
            if exclude:
                for client_id, conn in conns.items():
                    if client_id not in exclude and conn.deliver(message, pending):
                        sent += 1
            else:
                for conn in conns.values():
                    if conn.deliver(message, pending):
                        sent += 1
            return sent
        get = conns.get
        for client_id in client_ids:
            if exclude and client_id in exclude:
                continue
            target = get(client_id)
            if target is not None and target.deliver(message, pending):
                sent += 1
        return sent

    async def close_local(self, client_id: str, code: int, reason: str) -> bool:
        conn = self._connections.get(client_id)
        if conn is None or conn.closed:
            return False
        await conn.close(code, reason)
        return True

    def served_routes(self) -> Collection[str]:
        """Node: the routes whose vanished clients this process can run disconnect logic for.

        The paths of its routes, plus ``""`` (clients registered without a route) when an
        :meth:`on_clients_gone` callback is registered. A worker with neither claims none.
        """
        routes = list(self._route_gone)
        if self._gone_callbacks:
            routes.append("")
        return routes

    async def clients_gone(self, clients: GoneClients) -> None:
        """Node: run the disconnect logic of clients whose process died, once each.

        Their membership is still in place (as during a clean close); the backend removes it
        when this returns. A client whose route this process does not serve (no live
        process serves it) is logged at WARNING: its handler cannot run anywhere.
        """
        unserved: dict[str, int] = {}
        for client_id, info in clients.items():
            route = info.get("route", "")
            handler = self._route_gone.get(route) if isinstance(route, str) else None
            if handler is None:
                if route:
                    unserved[str(route)] = unserved.get(str(route), 0) + 1
                continue
            try:
                if route in self._route_gone_takes_info:
                    await handler(client_id, info=info)
                else:
                    await handler(client_id)
            except Exception:
                logger.exception("disconnect logic for vanished client %s failed", client_id)
        for route, count in unserved.items():
            logger.warning(
                "no live process serves route %r: the disconnect handler of %d vanished "
                "clients did not run (their membership is removed)",
                route[:200],
                count,
            )
        for callback in self._gone_callbacks:
            try:
                await callback(clients)
            except Exception:
                logger.exception("disconnect logic for vanished clients failed")


async def _finish_fan_out(pending: list[Any]) -> None:
    if pending:
        # Writes that could not finish at once, and recipients that are behind.
        await settle(pending)
    else:
        # Fairness: a tight loop of broadcasts still lets every other task run.
        await asyncio.sleep(0)


def _room(room: object) -> str:
    # One rule on every backend: a room id is a str (42 and "42" would be one room in
    # Redis and two in memory). A str subclass (an enum member) counts as its value.
    if isinstance(room, str):
        return str.__str__(room)
    raise TypeError(
        f"room ids are str, not {type(room).__name__} ({_short_repr(room)}): "
        "convert it yourself, e.g. str(room)"
    )


def _client_id(client_id: object) -> str:
    if isinstance(client_id, str):
        return str.__str__(client_id)
    raise TypeError(
        f"client ids are str, not {type(client_id).__name__} ({_short_repr(client_id)})"
    )


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _takes_keyword(func: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY)
        for p in params
    )


def _exclude(exclude: Exclude) -> Collection[str]:
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    return frozenset(exclude)
