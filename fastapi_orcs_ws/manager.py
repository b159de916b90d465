"""WebSocketManager: connections, rooms and delivery rules, on top of a backend."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from . import _drain
from ._observer import utf8_size
from ._outbox import PENDING, eager_fan_out, settle
from .backends import Backend, backend_from_url
from .errors import ConfigurationError, ManagerStoppedError, RoomLimitError
from .history import (
    HistoryPage,
    Hold,
    JoinResult,
    Position,
    PresenceEvents,
    RoomHistory,
    RoomRule,
    RoomRules,
    held_recipients,
    join_and_recover,
)
from .limits import Admission
from .presence import (
    PRESENCE_LEAVE,
    Presence,
    announce,
    default_public_info,
    presence_of,
)
from .protocol import (
    CloseCode,
    encode,
    encode_room_head,
    frame_position,
    truncate_reason,
    validate_close_code,
)
from .settings import WebSocketSettings

if TYPE_CHECKING:
    from ._observer import Observer
    from .connection import Connection, ConnectionData

__all__ = ["Stats", "WebSocketManager"]

logger = logging.getLogger("fastapi_orcs_ws")

F = TypeVar("F", bound=Callable[..., Any])
Exclude = str | Iterable[str] | None
GoneClients = Mapping[str, Mapping[str, Any]]
GoneCallback = Callable[[GoneClients], Awaitable[None]]
RouteGoneHandler = Callable[..., Awaitable[None]]
_NO_POSITION: Any = object()
"""join_room's ``since`` when not given: the plain join, answered with a bool."""


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
    connections_refused: int = 0
    """Handshakes this process refused because a connection cap was full (HTTP 429)."""
    events_rate_limited: int = 0
    """Events this process did not handle because their client was over its rate limit."""
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
        # Handed to every connection (bound once here, not once per connection).
        self._on_slow_consumer = self._count_slow_consumer
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
        self.observer: Observer | None = None
        """Metrics and tracing hooks (``PrometheusMetrics.instrument``...); None: none."""
        self._draining = False
        self._refused = 0
        self._rate_limited = 0
        self._last_limit_log = 0.0
        self._admission = Admission(
            self.settings.max_connections,
            self.settings.max_connections_per_ip,
            self.settings.max_connections_per_user,
        )
        self._emit_checks: dict[str, TypeAdapter[Any]] = {}
        self.checks_emits = False
        """Whether `encode_event` checks payloads against declared ``emits`` (debug mode,
        once a route declares some). Read it; `declare_emits` sets it."""
        self._room_rules = RoomRules()
        self._presence_rooms = False
        self._holds: dict[str, dict[str, Hold]] = {}
        self.public_user_info: Callable[[ConnectionData, str], dict[str, Any] | None] = (
            default_public_info
        )
        """``(data, user_id) -> dict`` (JSON values): what presence shows of an authenticated
        connection's user; default ``{"id": user_id}`` plus ``"name"`` when the user object
        or its token has one. Return only what every member of a room may see."""

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
                self._draining = False
                if self.settings.drain_seconds > 0:
                    _drain.install_sigterm(self)

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
        _drain.uninstall_sigterm(self)
        if self.settings.drain_seconds > 0 and self._connections and not self._draining:
            await self.drain()
        for conn in list(self._connections.values()):
            await conn.close(CloseCode.GOING_AWAY, "server shutting down")
        # Disconnect handlers may still publish (a chat's user-left): let them, for a while.
        with anyio.move_on_after(self.settings.close_timeout):
            await self._drained.wait()
        await self.backend.stop()
        self._started = False
        self._stopped = True

    @property
    def started(self) -> bool:
        """True between [`start`][fastapi_orcs_ws.WebSocketManager.start] and
        [`stop`][fastapi_orcs_ws.WebSocketManager.stop]."""
        return self._started

    @property
    def draining(self) -> bool:
        """True from [`drain`][fastapi_orcs_ws.WebSocketManager.drain] until the manager starts
        again: new WebSockets are refused."""
        return self._draining

    async def drain(
        self, seconds: float | None = None, *, reason: str = "server restarting"
    ) -> int:
        """Hand this process's clients over to the others, gently (a rolling deploy).

        New WebSockets are refused from now on (HTTP 503 with ``Retry-After`` before accept;
        1013 where the server lacks the ASGI denial-response extension), and readiness
        ([`health_router`][fastapi_orcs_ws.health_router]) reports not ready. Each open connection
        is closed with 1012 (service restart) and ``reason``, one at a random point of its own
        slot of ``seconds / connections``, so reconnects reach the other processes at a
        steady rate. Returns when every closed connection's ``disconnect`` handler has run
        (waiting at most ``WS_CLOSE_TIMEOUT + WS_SLOW_CONSUMER_TIMEOUT`` after the last
        close; a WARNING counts those still open then). The manager keeps refusing until it
        is started again.

        Args:
            seconds: the window; default ``WS_DRAIN_SECONDS`` (0: close all at once).
            reason: the close reason (cut to 123 bytes of UTF-8).

        Returns:
            How many connections it closed.

        Raises:
            ValueError: ``seconds`` is negative or not finite.

        Example:
            ```python
            @app.post("/admin/drain")
            async def drain(manager: WebSocketManager = Depends(get_manager)) -> dict:
                return {"closed": await manager.drain(10)}
            ```
        """
        window = self.settings.drain_seconds if seconds is None else seconds
        return await _drain.drain(self, window, reason)

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

    @overload
    async def join_room(self, client_id: str, room: str) -> bool: ...

    @overload
    async def join_room(
        self,
        client_id: str,
        room: str,
        *,
        since: Position | None,
        history: RoomHistory | None = None,
    ) -> JoinResult: ...

    async def join_room(
        self,
        client_id: str,
        room: str,
        *,
        since: Any = _NO_POSITION,
        history: RoomHistory | None = None,
    ) -> bool | JoinResult:
        """Put a client in a room; False if the client is not connected.

        Joining a room the client is already in succeeds and changes nothing.

        With ``since=`` (a [`Position`][fastapi_orcs_ws.Position], or ``None`` for a first
        join) it returns a [`JoinResult`][fastapi_orcs_ws.JoinResult] instead: in a room
        with history (``configure_rooms``, or ``history=`` for the bounds it was written
        with), every frame after ``since`` is written to the client, in order and once,
        before any live frame of the room; live frames that arrive meanwhile wait and
        follow, without duplicates. If the history no longer covers the gap or its epoch
        changed, nothing is replayed and ``recovered`` is False (the client should reload
        the room's state). The client must be connected to this process (the usual case:
        its own ``join`` handler); frames waiting for it beyond ``WS_SEND_QUEUE_SIZE``
        close it as a slow consumer (4429).

        In a room with ``presence_events``, the other members get ``presence-join``.

        Raises:
            RoomLimitError: ``room`` is longer than ``WS_MAX_ROOM_NAME_LENGTH`` characters
                (default 256), or the client is in ``WS_MAX_ROOMS_PER_CLIENT`` rooms already
                (default 100; on every backend, checked atomically with the join on Redis).
                An [`EventError`][fastapi_orcs_ws.EventError]: a handler that lets it
                propagate answers the client with a ``room_limit`` error event.
            TypeError: ``client_id`` or ``room`` is not a ``str`` (a ``str`` subclass, such
                as a ``StrEnum`` member, counts as its plain value); ``since`` is not a
                ``Position`` or ``None``.
            ValueError: ``since`` was given for a client of another process, in a room with
                history (the replay is written by the process that holds the socket).
        """
        client_id, room = _client_id(client_id), _room(room)
        longest = self.settings.max_room_name_length
        if len(room) > longest:
            raise RoomLimitError(
                f"room names are at most {longest} characters (WS_MAX_ROOM_NAME_LENGTH); "
                f"this one has {len(room)}",
                limit=longest,
            )
        await self._ready()
        if since is _NO_POSITION and history is None and not self._room_rules:
            return await self.backend.join(client_id, room, self.settings.max_rooms_per_client)
        rule = self._room_rules.for_room(room)
        result = await join_and_recover(
            self,
            client_id,
            room,
            None if since is _NO_POSITION else since,
            history if history is not None else rule.history if rule else None,
            rule.presence_events if rule else None,
        )
        return result if since is not _NO_POSITION else result.joined

    async def leave_room(self, client_id: str, room: str) -> bool:
        """Take a client out of a room (an empty room disappears); False if it was not in it.

        Raises TypeError if ``client_id`` or ``room`` is not a ``str``.
        """
        client_id, room = _client_id(client_id), _room(room)
        await self._ready()
        left = await self.backend.leave(client_id, room)
        if left and self._presence_rooms:
            rule = self._room_rules.for_room(room)
            if rule is not None and rule.presence_events is not None:
                info = await self._presence_info(client_id)
                await announce(self, PRESENCE_LEAVE, client_id, (room,), info)
        return left

    def configure_rooms(
        self,
        pattern: str,
        *,
        history: RoomHistory | None = None,
        presence_events: PresenceEvents = None,
    ) -> None:
        """Settings for the rooms whose name matches ``pattern`` (``fnmatch`` style, case
        sensitive: ``"chat:*"``, ``"general"``); the first pattern configured that matches
        wins, and configuring a pattern again replaces it. Off by default.

        Args:
            pattern: a room name or an ``fnmatch`` pattern (``*``, ``?``, ``[seq]``).
            history: keep the room's frames for recovery
                ([`RoomHistory`][fastapi_orcs_ws.RoomHistory]); each frame broadcast to it
                carries ``room``, ``offset`` and ``epoch`` at the envelope's top level.
            presence_events: ``"client"``: the room's members get ``presence-join`` /
                ``presence-leave`` (``{"room", "clientId", "user"}``) once per client that
                joins or leaves (disconnects and vanished clients included); ``"user"``:
                only for a user's first client in and last client out; ``None``: none.

        Raises:
            ConfigurationError: the backend keeps no history, or ``presence_events`` is not
                one of the values above.

        Example:
            ```python
            manager.configure_rooms("chat:*", history=RoomHistory(size=100, ttl=300),
                                    presence_events="client")
            ```
        """
        if not isinstance(pattern, str) or not pattern:
            raise ConfigurationError("configure_rooms: the pattern is a non-empty str")
        if presence_events not in (None, "client", "user"):
            raise ConfigurationError(
                f"configure_rooms: presence_events is 'client', 'user' or None, "
                f"not {presence_events!r:.40}"
            )
        if history is not None:
            if not isinstance(history, RoomHistory):
                raise ConfigurationError("configure_rooms: history is a RoomHistory or None")
            if not self.backend.history_support:
                raise ConfigurationError(
                    f"configure_rooms({pattern!r:.60}): the {self.backend.name} backend keeps "
                    "no room history; use memory:// or redis://"
                )
        self._room_rules.add(RoomRule(pattern, history, presence_events))
        self._presence_rooms = self._room_rules.presence()

    async def history(
        self,
        room: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        history: RoomHistory | None = None,
    ) -> HistoryPage:
        """Read the frames a room keeps, oldest first.

        Without ``since``: the last ``limit`` frames (all without ``limit``). With it: the
        frames after it (at most ``limit``, the oldest first) and ``complete`` telling
        whether the history still covers everything after it in the same epoch (if not,
        ``entries`` is empty).

        Args:
            room: the room.
            since: a [`Position`][fastapi_orcs_ws.Position].
            limit: most entries returned, >= 0.
            history: the bounds the frames were written with, for a room with no
                ``configure_rooms`` pattern.

        Raises:
            ValueError: the room keeps no history, or ``limit`` is negative.
            TypeError: ``room`` is not a ``str``, ``since`` not a ``Position``.
        """
        room = _room(room)
        if since is not None and not isinstance(since, Position):
            raise TypeError(f"since is a Position or None, not {type(since).__name__}")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"limit is an int >= 0 or None, not {limit!r:.40}")
        keep = history or self._history_of(room)
        if keep is None:
            raise ValueError(
                f"room {room[:100]!r} keeps no history: configure_rooms(pattern, "
                "history=RoomHistory(...)) first"
            )
        await self._ready()
        return await self.backend.read_history(room, keep, since, limit)

    async def presence(self, room: str) -> Presence:
        """Who is in ``room`` on every process: each client with its user's public info,
        the number of connections and of distinct users.

        Raises TypeError if ``room`` is not a ``str``.

        Example:
            ```python
            @app.get("/rooms/{room}/presence")
            async def who(room: str, manager: WebSocketManager = Depends(get_manager)):
                return await manager.presence(room)
            ```
        """
        room = _room(room)
        await self._ready()
        return presence_of(room, await self.backend.presence(room))

    async def get_user_clients(self, user_id: str) -> set[str]:
        """The ids of every connection of an authenticated user, on every process
        (``str(user.id)``, else the token's ``sub``, as ``disconnect_user``).

        Raises TypeError if ``user_id`` is not a ``str``.
        """
        user_id = _user_id(user_id)
        await self._ready()
        return await self.backend.user_clients(user_id)

    async def send_to_user(self, user_id: str, event: str, payload: Any = None) -> int:
        """Send to every connection of an authenticated user, on every process.

        Returns how many connections *this process* delivered to; the other processes
        deliver theirs when the message arrives (at most once, like every cross-process
        message; a failed publish is counted in ``Stats.publish_failures``).

        Raises TypeError if ``user_id`` is not a ``str``.
        """
        user_id = _user_id(user_id)
        await self._ready()
        frame = self.encode_event(event, payload)
        pending: list[Any] = []
        token = PENDING.set(pending)
        try:
            sent = await self.backend.publish_user(user_id, frame)
        finally:
            PENDING.reset(token)
        if pending:
            await settle(pending)
        return sent

    def _history_of(self, room: str) -> RoomHistory | None:
        rule = self._room_rules.for_room(room)
        return rule.history if rule is not None else None

    async def _presence_info(self, client_id: str) -> Mapping[str, Any]:
        conn = self._connections.get(client_id)
        if conn is not None:
            return self._client_info(conn.data, "")
        return await self.backend.client_info(client_id)

    def _client_info(self, data: ConnectionData, route: str) -> dict[str, Any]:
        """What a client is registered with: its route, and its user for presence."""
        info: dict[str, Any] = {"route": route} if route else {}
        user_id = user_key(data)
        if user_id is not None:
            info["user_id"] = user_id
            try:
                info["user"] = self.public_user_info(data, user_id)
            except Exception:
                logger.exception("public_user_info failed for user %r", user_id[:80])
                info["user"] = {"id": user_id}
        return info

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
            connections_refused=self._refused,
            events_rate_limited=self._rate_limited,
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
        self,
        room: str,
        event: str,
        payload: Any = None,
        *,
        exclude: Exclude = None,
        history: RoomHistory | bool = True,
    ) -> int:
        """Send to every client in ``room`` except ``exclude``; returns how many.

        In a room with history (``configure_rooms``) the frame gets the room's next
        position and is kept: ``{"event", "payload", "room", "offset", "epoch"}``. An
        excluded client's frames are kept too (a recovering client gets them).

        Args:
            history: ``True``: as the room is configured; ``False``: this frame is neither
                positioned nor kept (a typing indicator); a
                [`RoomHistory`][fastapi_orcs_ws.RoomHistory]: keep it with these bounds
                (pass the same to ``history()`` and ``join_room`` of a room that has no
                ``configure_rooms`` pattern).

        Raises TypeError if ``room`` is not a ``str``.
        """
        room = _room(room)
        await self._ready()
        keep = None
        if history is not True or self._room_rules:
            keep = history if isinstance(history, RoomHistory) else None
            if history is True:
                keep = self._history_of(room)
        pending: list[Any] = []
        token = PENDING.set(pending)
        try:
            if keep is None:
                frame = self.encode_event(event, payload)
                sent = await self.backend.publish_room(room, frame, _exclude(exclude))
            else:
                self._check_emit(event, payload)
                head = encode_room_head(event, payload, room)
                sent = await self.backend.publish_history(room, head, _exclude(exclude), keep)
        finally:
            PENDING.reset(token)
        await _finish_fan_out(pending)
        return sent

    async def send_to_client(self, client_id: str, event: str, payload: Any = None) -> bool:
        """Send to one client; False if it is not connected.

        Raises TypeError if ``client_id`` is not a ``str``.
        """
        client_id = _client_id(client_id)
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
        """Close a client's connection; False if it is not connected.

        Raises ValueError for a close code an application may not send, TypeError if
        ``client_id`` is not a ``str``.
        """
        client_id = _client_id(client_id)
        validate_close_code(code)
        await self._ready()
        return await self.backend.disconnect_client(client_id, code, truncate_reason(reason))

    async def disconnect_user(
        self, user_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> int:
        """Close every connection of an authenticated user, on every process (log-out,
        revocation of a token or an account).

        A connection belongs to user ``user_id`` when it was authenticated and
        ``str(ws.data.user.id)`` (else the token's ``sub`` claim) equals it: the identity the
        per-user connection cap counts. Each is closed as ``disconnect(client_id, code,
        reason)`` would (its ``disconnect`` handler runs). With a shared backend (Redis) the
        other processes are told at once and close theirs when the message arrives (at most
        once, like every cross-process message).

        Args:
            user_id: the user's id, a ``str``.
            code: the close code (an application may send 1000-1003, 1007-1014, 3000-4999;
                4401 or 4403 suit a revocation).
            reason: the close reason (cut to 123 bytes of UTF-8).

        Returns:
            How many connections *this process* closed (0 if it held none of that user's);
            the other processes' are not counted.

        Raises:
            ValueError: ``code`` is not a close code an application may send.
            TypeError: ``user_id`` is not a ``str``.
            BackendError: a shared backend could not tell the other processes (Redis is
                unreachable, or a process that may hold some of them was not listening);
                this process's connections are closed already: call again.

        Example:
            ```python
            @app.post("/logout")
            async def logout(user: User = Depends(current_user),
                             manager: WebSocketManager = Depends(get_manager)) -> dict:
                return {"closed": await manager.disconnect_user(user.id, 4401, "logged out")}
            ```
        """
        validate_close_code(code)
        if not isinstance(user_id, str):
            raise TypeError(
                f"user ids are str, not {type(user_id).__name__} ({_short_repr(user_id)}): "
                "pass str(user_id)"
            )
        await self._ready()
        return await self.backend.disconnect_user(
            str.__str__(user_id), code, truncate_reason(reason)
        )

    def encode_event(self, event: str, payload: Any = None) -> str:
        """Encode one outbound frame; with ``WS_DEBUG`` check it against declared ``emits``."""
        if self._emit_checks:  # `_check_emit`, without a call on every frame
            self._check_emit(event, payload)
        return encode(event, payload)

    def _check_emit(self, event: str, payload: Any) -> None:
        if self._emit_checks:
            adapter = self._emit_checks.get(event)
            if adapter is not None:
                # Raises pydantic.ValidationError into the sending handler: a bug to fix.
                adapter.validate_python(payload)

    def declare_emits(self, emits: dict[str, Any]) -> None:
        """Record what routes send; in debug mode outgoing payloads are checked against it."""
        if self.settings.debug:
            for event, model in emits.items():
                self._emit_checks[event] = TypeAdapter(model)
            self.checks_emits = bool(self._emit_checks)

    # -- local connections --------------------------------------------------------------

    def get_connection(self, client_id: str) -> Connection | None:
        """The [`Connection`][fastapi_orcs_ws.Connection] of a client held by this process, if
        any."""
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
        info = self._client_info(conn.data, route)
        await self.backend.add_client(conn.data.client_id, info or None)

    async def _unregister(self, conn: Connection) -> None:
        client_id = conn.data.client_id
        self._holds.pop(client_id, None)  # a recovery's floor ends with its connection
        if self._presence_rooms:
            # Membership is still in place: the leave events go to the others, once.
            try:
                rooms = await self.backend.client_rooms(client_id)
            except Exception:
                logger.warning(
                    "presence-leave of %s not sent: rooms unknown", client_id, exc_info=True
                )
            else:
                await announce(
                    self, PRESENCE_LEAVE, client_id, rooms, self._client_info(conn.data, "")
                )
        if self._connections.get(client_id) is conn:
            del self._connections[client_id]
        if not self._connections:
            self._drained.set()
        try:
            await self.backend.remove_client(client_id)
        except Exception:
            logger.exception("backend failed to remove client %s", client_id)

    def _count_refusal(self, cap: str, route: str) -> None:
        self._refused += 1
        if self.observer is not None:
            self.observer.refused(route, "caps")
        if self._limit_log_due():
            logger.warning(
                "refused a WebSocket handshake on %s: %s is full (WS_%s); %d refused so far",
                route,
                cap,
                cap.upper(),
                self._refused,
            )

    def _count_rate_limited(self, conn: Connection, overdraft: int) -> None:
        self._rate_limited += 1
        if self.observer is not None:
            self.observer.rate_limited(conn)
        if overdraft == 1 and self._limit_log_due():
            logger.warning(
                "client %s is over its rate limit; its events are not handled (%d so far)",
                conn.data.client_id,
                self._rate_limited,
            )

    def _limit_log_due(self) -> bool:
        # One WARNING per second at most: an attack must not flood the log.
        now = time.monotonic()
        if now - self._last_limit_log < 1.0:
            return False
        self._last_limit_log = now
        return True

    def _count_slow_consumer(self, conn: Connection, why: str) -> None:
        self._slow_consumers += 1
        if self.observer is not None:
            self.observer.slow_consumer(conn)
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
        eager = eager_fan_out()  # once per fan-out, not per recipient
        conns = self._connections
        sent = 0
        if self._holds:  # a recovering client's live frames wait for its replay
            exclude, sent = self._hold_back(frame, client_ids, exclude)
        if client_ids is None:
            if exclude:
                for client_id, conn in conns.items():
                    if client_id not in exclude and conn.deliver(message, pending, eager):
                        sent += 1
            else:
                for conn in conns.values():
                    if conn.deliver(message, pending, eager):
                        sent += 1
        else:
            get = conns.get
            for client_id in client_ids:
                if exclude and client_id in exclude:
                    continue
                target = get(client_id)
                if target is not None and target.deliver(message, pending, eager):
                    sent += 1
        if self.observer is not None:  # once per fan-out, never per recipient
            self.observer.frames_sent(sent, utf8_size(frame))
        return sent

    def _hold_back(
        self, frame: str, client_ids: Iterable[str] | None, exclude: Collection[str]
    ) -> tuple[Collection[str], int]:
        held = held_recipients(self._holds, client_ids, exclude)
        position = frame_position(frame) if held else None
        if position is None:
            return exclude, 0
        room, offset = position
        taken: list[str] = []
        limit = self.settings.send_queue_size
        for client_id in held:
            rooms = self._holds[client_id]
            hold = rooms.get(room)
            if hold is None:
                continue
            if hold.floor is not None:  # replay written: drop what it already had
                if offset <= hold.floor:
                    taken.append(client_id)
                    continue
                del rooms[room]  # past the floor: live delivery as usual from now on
                if not rooms:
                    del self._holds[client_id]
                continue
            taken.append(client_id)
            if len(hold.frames) >= limit:
                conn = self._connections.get(client_id)
                if conn is not None and not conn.closed:
                    self._count_slow_consumer(conn, "live frames piled up during its replay")
                    conn.close_nowait(CloseCode.SLOW_CONSUMER, "too far behind")
                continue
            hold.frames.append((offset, frame))
        if not taken:
            return exclude, 0
        return {*exclude, *taken}, len(taken)

    async def _vanished_presence(self, client_id: str, info: Mapping[str, Any]) -> None:
        try:
            rooms = await self.backend.client_rooms(client_id)
        except Exception:
            logger.warning(
                "presence-leave of vanished client %s not sent: rooms unknown",
                client_id,
                exc_info=True,
            )
            return
        await announce(self, PRESENCE_LEAVE, client_id, rooms, info)

    def deliver_user_local(self, user_id: str, frame: str) -> int:
        """Node: queue ``frame`` for every local connection of an authenticated user."""
        ids = [cid for cid, conn in self._connections.items() if user_key(conn.data) == user_id]
        return self.deliver_local(frame, ids, ()) if ids else 0

    async def close_local(self, client_id: str, code: int, reason: str) -> bool:
        conn = self._connections.get(client_id)
        if conn is None or conn.closed:
            return False
        await conn.close(code, reason)
        return True

    async def close_user_local(self, user_id: str, code: int, reason: str) -> int:
        # Queue every close first: one stalled socket must not delay the user's others.
        closed = 0
        for conn in list(self._connections.values()):
            if not conn.closed and user_key(conn.data) == user_id:
                conn.close_nowait(code, reason)
                closed += 1
        return closed

    def served_routes(self) -> Collection[str]:
        """Node: the routes whose vanished clients this process can run disconnect logic for.

        The paths of its routes, plus ``""`` (clients registered without a route) when an
        [`on_clients_gone`][fastapi_orcs_ws.WebSocketManager.on_clients_gone] callback is
        registered. A worker with neither claims none.
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
                if self._presence_rooms:
                    await self._vanished_presence(client_id, info)
                continue
            try:
                if route in self._route_gone_takes_info:
                    await handler(client_id, info=info)
                else:
                    await handler(client_id)
            except Exception:
                logger.exception("disconnect logic for vanished client %s failed", client_id)
            if self._presence_rooms:
                await self._vanished_presence(client_id, info)
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


def user_key(data: ConnectionData) -> str | None:
    """The user a connection belongs to (the per-user cap's key): ``str(user.id)``, else the
    verified token's ``sub``; None when the connection is not authenticated."""
    return user_key_of(data.user, data.claims) if data.authenticated else None


def user_key_of(user: Any, claims: Any) -> str | None:
    """`user_key` for a user and claims not yet in a connection (the handshake)."""
    user_id = getattr(user, "id", None)
    if user_id is None and isinstance(claims, dict):
        user_id = claims.get("sub")
    return None if user_id is None else str(user_id)


def _str_id(value: object, kind: str, hint: str = "") -> str:
    # One rule on every backend: ids are str (42 and "42" would be one room in Redis and two
    # in memory). A str subclass (an enum member) counts as its plain value.
    if isinstance(value, str):
        return str.__str__(value)
    raise TypeError(f"{kind} ids are str, not {type(value).__name__} ({_short_repr(value)}){hint}")


def _room(room: object) -> str:
    return _str_id(room, "room", ": convert it yourself, e.g. str(room)")


def _client_id(client_id: object) -> str:
    return _str_id(client_id, "client")


def _user_id(user_id: object) -> str:
    return _str_id(user_id, "user", ": pass str(user_id)")


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
        return (str.__str__(exclude),)
    # The str-id rule (`_str_id`): an int here would exclude nobody on one backend.
    return frozenset(_client_id(client_id) for client_id in exclude)
