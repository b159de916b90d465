"""One client connection: its data, its state and the way frames reach it."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketState

from ._observer import utf8_size
from ._outbox import AsgiSend, Message, Outbox, SendPolicy, settle
from .protocol import CloseCode, encode, truncate_reason, validate_close_code

if TYPE_CHECKING:
    from .manager import WebSocketManager

__all__ = ["Connection", "ConnectionData", "ConnectionState"]

logger = logging.getLogger("fastapi_orcs_ws")


@dataclass(slots=True)
class ConnectionData:
    """What the spec calls ``ws.data``: identity and context of one connection."""

    client_id: str
    connected_at: datetime
    """When the handshake completed (aware, UTC)."""
    manager: WebSocketManager
    authenticated: bool = False
    user: Any = None
    """The authenticated user (``None`` when anonymous)."""
    claims: Any = None
    """The verified token claims, when a token was presented."""
    state: dict[str, Any] = field(default_factory=dict)
    """Free space for the application."""


class ConnectionState(Enum):
    """Where a connection is in its life. It only moves forward."""

    OPEN = "open"
    """Frames are delivered."""
    CLOSING = "closing"
    """A close was asked for (by either side); new frames are dropped."""
    CLOSED = "closed"
    """The connection ended; ``close_code`` says how."""


class Connection:
    """A connected client, passed to every handler as ``ws``.

    Frames are written in order. A client that keeps up is written to at once; one that
    falls behind makes ``await ws.send(...)`` (and broadcasts that reach it) wait, and one
    that stops reading is closed with 4429
    ([`CloseCode.SLOW_CONSUMER`][fastapi_orcs_ws.CloseCode]): see docs/lifecycle.md for the
    exact rule and its settings.

    Example:
        ```python
        async def message(ws: Connection, payload: dict) -> None:
            await ws.send("echo", payload)
        ```
    """

    __slots__ = (
        "_asgi_send",
        "_on_slow",
        "_on_stalled",
        "_outbox",
        "_state",
        "close_code",
        "close_reason",
        "closed_by_server",
        "data",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        data: ConnectionData,
        *,
        send: AsgiSend | None = None,
        policy: SendPolicy,
        context: contextvars.Context | None = None,
        on_slow: Callable[[Connection, str], None] | None = None,
        direct_send: AsgiSend | None = None,
    ) -> None:
        self.websocket = websocket
        self.data = data
        self._state = ConnectionState.OPEN
        self.closed_by_server = False
        """True once this side asked to close (a kick, an expiry, a refusal, a slow consumer).
        Read it; the connection sets it. (An attribute, not a property: the reader checks it
        on every frame.)"""
        self._on_slow = on_slow
        self._on_stalled: Callable[[], None] | None = None
        self._asgi_send = send if send is not None else websocket.send
        self._outbox = Outbox(
            self._send_message,
            policy,
            context=context if context is not None else contextvars.copy_context(),
            on_stalled=self._stalled,
            on_gone=self._peer_gone,
            direct=(websocket, direct_send) if direct_send is not None else None,
        )
        self.close_code: int | None = None
        """How the connection ended: the code of the first close frame either side sent,
        4429 when it was dropped as a slow consumer, 1006 when no close frame was seen."""
        self.close_reason = ""

    @classmethod
    def detached(cls, data: ConnectionData, *, path: str = "/") -> Connection:
        """A closed connection standing for a client held by a process that died.

        Its disconnect logic can run on a surviving process; sends to it are dropped and its
        ``websocket`` has a scope but no peer.
        """

        async def no_peer(*_: Any) -> Any:
            raise RuntimeError("this client's connection was held by a process that died")

        scope = {"type": "websocket", "path": path, "headers": [], "query_string": b""}
        policy = SendPolicy(max_frames=1, max_bytes=1, stall_timeout=0.1, close_timeout=0.1)
        conn = cls(WebSocket(scope, no_peer, no_peer), data, policy=policy)
        conn.ended(CloseCode.ABNORMAL, "node lost")
        return conn

    @property
    def client_id(self) -> str:
        """Shortcut for ``ws.data.client_id``."""
        return self.data.client_id

    @property
    def state(self) -> ConnectionState:
        """[`ConnectionState`][fastapi_orcs_ws.ConnectionState]: open, closing or closed."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed; sends are then dropped."""
        return self._state is not ConnectionState.OPEN

    @property
    def queued(self) -> int:
        """Frames waiting to be written to this client."""
        return self._outbox.queued

    @property
    def queued_bytes(self) -> int:
        """Bytes (of text, UTF-8 characters counted as one) waiting to be written."""
        return self._outbox.queued_bytes

    # -- sending -----------------------------------------------------------------------------

    async def send(self, event: str, payload: Any = None) -> bool:
        """Send ``{"event": event, "payload": payload}`` to this client.

        Waits while the client is behind (flow control, see docs/lifecycle.md). Returns
        False if the connection is closing or closed: the frame is dropped.

        Raises:
            EncodeError: ``payload`` cannot be encoded as strict JSON.
        """
        manager = self.data.manager
        # `manager.encode_event`, inlined unless it has payloads to check (debug mode).
        frame = (
            manager.encode_event(event, payload) if manager.checks_emits else encode(event, payload)
        )
        # `send_frame_async`, inlined: one coroutine less on every send.
        pending: list[Any] = []
        sent = self._outbox.offer({"type": "websocket.send", "text": frame}, pending)
        if pending:
            await settle(pending)
        obs = manager.observer
        if obs is not None and sent:
            obs.frames_sent(1, utf8_size(frame))
        return sent

    async def send_frame_async(self, frame: str) -> bool:
        """`send` for an already-encoded text frame."""
        pending: list[Any] = []
        sent = self._outbox.offer({"type": "websocket.send", "text": frame}, pending)
        if pending:
            await settle(pending)
        obs = self.data.manager.observer
        if obs is not None and sent:
            obs.frames_sent(1, utf8_size(frame))
        return sent

    def send_frame(self, frame: str) -> bool:
        """Queue an already-encoded text frame without waiting (no flow control)."""
        return self._outbox.offer({"type": "websocket.send", "text": frame}, None)

    def deliver(self, message: Message, pending: list[Any] | None, eager: bool = True) -> bool:
        """Hand a ready ``websocket.send`` ASGI message to this client (used by fan-out).

        With ``pending`` (a list the caller settles, see ``_outbox.settle``) the frame is
        written at once when the client is idle; the message is shared by every recipient
        and never mutated. False if the connection no longer takes frames.
        """
        return self._outbox.offer(message, pending, eager)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close after the frames already queued have been written.

        ``code`` must be a code an application may send (1000-1003, 1007-1014,
        3000-4999, RFC 6455 section 7.4); ``reason`` is cut to the 123 bytes of UTF-8 a
        close frame allows. Raises ``ValueError`` for any other code.
        """
        pending: list[Any] = []
        self._close(code, reason, pending)
        if pending:
            await settle(pending)

    def close_nowait(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """`close` for synchronous code: queue the close frame and return."""
        self._close(code, reason, None)

    def _close(self, code: int, reason: str, pending: list[Any] | None) -> None:
        validate_close_code(code)
        if self._state is not ConnectionState.OPEN:
            return
        self._state = ConnectionState.CLOSING
        self.closed_by_server = True
        message = {"type": "websocket.close", "code": code, "reason": truncate_reason(reason)}
        self._outbox.offer_close(message, pending)

    # -- driven by the session -----------------------------------------------------------------

    def ended(self, code: int, reason: str = "") -> None:
        """Record how the connection ended (the first report wins) and stop taking frames."""
        if self.close_code is None:
            self.close_code = int(code)  # a plain int for handlers, never an enum member
            self.close_reason = reason
        self._state = ConnectionState.CLOSED
        self._outbox.drop()

    async def _send_message(self, message: Message) -> None:
        """The outbox's way to Starlette's ``WebSocket.send`` (the close frame, and frames when
        the ASGI send itself is not at hand)."""
        await self._asgi_send(message)
        if message["type"] == "websocket.close" and self.close_code is None:
            # The server's close frame is written and nothing was heard from the client yet:
            # its code is how the connection ended, whatever the client answers (uvicorn
            # reports the server's code anyway; Starlette's TestClient answers 1000).
            self.close_code = int(message.get("code", CloseCode.NORMAL))
            self.close_reason = message.get("reason") or ""

    def on_stalled(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the client is dropped as a slow consumer (the session ends)."""
        self._on_stalled = callback

    def _peer_gone(self, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            # A write that went to `direct_send`, past Starlette's `WebSocket.send`: the
            # state Starlette would have recorded.
            self.websocket.application_state = WebSocketState.DISCONNECTED

    def _stalled(self, why: str) -> None:
        self.closed_by_server = True
        self.ended(CloseCode.SLOW_CONSUMER, "slow consumer")
        if self._on_slow is not None:
            self._on_slow(self, why)
        if self._on_stalled is not None:
            self._on_stalled()

    async def aclose(self) -> None:
        """Stop writing: bounded wait for the writer, then the 4429 close owed, if any."""
        owed = None
        if self.close_code == CloseCode.SLOW_CONSUMER:
            owed = {"type": "websocket.close", "code": self.close_code, "reason": self.close_reason}
        self._state = ConnectionState.CLOSED
        await self._outbox.aclose(owed)
