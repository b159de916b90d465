"""One client connection: its data, its outbound queue and the writer task that drains it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .protocol import CloseCode, truncate_reason, validate_close_code

if TYPE_CHECKING:
    from .manager import WebSocketManager

__all__ = ["Connection", "ConnectionData"]

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


_PEER_GONE = (OSError, RuntimeError, WebSocketDisconnect)


class _Resume:
    """Awaitable finishing a send coroutine that was started synchronously and blocked.

    Equivalent to ``yield from`` on a coroutine that already took its first step.
    """

    __slots__ = ("_blocked_on", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, None], blocked_on: Any) -> None:
        self._coro = coro
        self._blocked_on = blocked_on

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self._coro, self._blocked_on
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation and errors go into the send
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                value = coro.send(sent)
            except StopIteration:
                return


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Connection:
    """A connected client, passed to every handler as ``ws``.

    Outbound frames go through a bounded queue drained by one writer task, so a
    client that stops reading never delays anyone else: when its queue is full it
    is disconnected with close code 4429 (:attr:`CloseCode.SLOW_CONSUMER`).

    Example:
        ```python
        async def message(ws: Connection, payload: dict) -> None:
            await ws.send("echo", payload)
        ```
    """

    __slots__ = (
        "_close_timeout",
        "_closed",
        "_closer",
        "_in_flight",
        "_max_queue",
        "_on_overflow",
        "_queue",
        "_receive_scope",
        "_writer",
        "close_code",
        "close_reason",
        "data",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        data: ConnectionData,
        *,
        max_queue: int,
        close_timeout: float,
    ) -> None:
        self.websocket = websocket
        self.data = data
        self._queue: deque[str | _Close] = deque()
        self._max_queue = max_queue
        self._close_timeout = close_timeout
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._in_flight: _Resume | None = None
        self._closed = False
        self._receive_scope: anyio.CancelScope | None = None
        self._on_overflow: Any = None
        self.close_code: int | None = None
        """How the connection ended (or is ending): the first close code, from either side."""
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
        conn = cls(WebSocket(scope, no_peer, no_peer), data, max_queue=1, close_timeout=0.1)
        conn._closed = True
        return conn

    @property
    def client_id(self) -> str:
        """Shortcut for ``ws.data.client_id``."""
        return self.data.client_id

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed; sends are then dropped."""
        return self._closed

    @property
    def queued(self) -> int:
        """Frames waiting to be written to this client."""
        return len(self._queue)

    async def send(self, event: str, payload: Any = None) -> bool:
        """Queue ``{"event": event, "payload": payload}`` for this client.

        Returns False if the connection is closing (the frame is dropped).
        """
        return self.send_frame(self.data.manager.encode_event(event, payload))

    def send_frame(self, frame: str) -> bool:
        """Send an already-encoded text frame, or queue it; never blocks."""
        return self.send_message({"type": "websocket.send", "text": frame})

    def send_message(self, message: dict[str, Any]) -> bool:
        """:meth:`send_frame` for a ready ``websocket.send`` ASGI message.

        A broadcast builds one message and hands it to every recipient; it is never mutated.
        """
        if self._closed:
            return False
        if self._writer is None:
            # Nothing queued, nothing in flight: write in the caller's task, which costs no
            # task switch. Only if the peer's socket is full does a writer task take over.
            send = self.websocket.send(message)
            try:
                blocked_on = send.send(None)
            except StopIteration:
                return True
            except _PEER_GONE as exc:
                self._peer_gone(exc)
                return False
            self._in_flight = _Resume(send, blocked_on)
            self._start_writer()
            return True
        queue = self._queue
        if len(queue) >= self._max_queue:
            self._overflow()
            return False
        queue.append(message["text"])
        return True

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close after the frames already queued have been written.

        ``code`` must be a code an application may send (1000-1003, 1007-1014,
        3000-4999); ``reason`` is cut to the 123 bytes a close frame allows.
        """
        self.close_nowait(code, reason)

    def close_nowait(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """:meth:`close` for synchronous code: queue the close frame and return."""
        validate_close_code(code)
        if self._closed:
            return
        self._closed = True
        reason = truncate_reason(reason)
        self._ended(code, reason)
        self._queue.append(_Close(code, reason))
        if self._writer is None:
            self._start_writer()

    def _ended(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason

    # -- lifecycle, driven by the route -------------------------------------------------

    def _start_writer(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _stop(self) -> None:
        """Stop writing: called once the receive loop has ended."""
        self._closed = True
        writer = self._writer
        if writer is None or writer.done():
            return
        if self.websocket.application_state == WebSocketState.CONNECTED:
            # Let a pending close (a kick, a 1009) go out, but never wait on a stalled peer.
            with anyio.move_on_after(self._close_timeout):
                await asyncio.shield(writer)
        writer.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait([writer])

    def _peer_gone(self, exc: BaseException) -> None:
        logger.debug("writing to %s failed: %r", self.data.client_id, exc)
        self._closed = True
        self._ended(CloseCode.ABNORMAL, "")
        self._queue.clear()
        self._end_receive()

    def _overflow(self) -> None:
        """The client stopped reading: drop its backlog and close it with 4429."""
        self._closed = True
        self._ended(CloseCode.SLOW_CONSUMER, "slow consumer")
        self._queue.clear()
        writer = self._writer
        if writer is not None:
            writer.cancel()
        if self._on_overflow is not None:
            self._on_overflow(self)
        # Held on the connection: the event loop keeps only weak references to tasks.
        self._closer = asyncio.get_running_loop().create_task(self._close_stalled(writer))

    async def _close_stalled(self, writer: asyncio.Task[None] | None) -> None:
        if writer is not None:
            await asyncio.wait([writer])
        with anyio.move_on_after(self._close_timeout):
            await self._send_close(CloseCode.SLOW_CONSUMER, "slow consumer")
        self._end_receive()

    async def _send_close(self, code: int, reason: str) -> None:
        if self.websocket.application_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(OSError, RuntimeError, WebSocketDisconnect):  # peer gone
            await self.websocket.send({"type": "websocket.close", "code": code, "reason": reason})

    def _end_receive(self) -> None:
        if self._receive_scope is not None:
            self._receive_scope.cancel()

    async def _write_loop(self) -> None:
        """Finish a blocked write, drain the queue, then exit: the connection is idle again."""
        queue = self._queue
        send = self.websocket.send
        try:
            if self._in_flight is not None:
                await self._in_flight
                self._in_flight = None
            while queue:
                item = queue.popleft()
                if isinstance(item, _Close):
                    queue.clear()
                    await self._send_close(item.code, item.reason)
                    self._end_receive()
                    return
                await send({"type": "websocket.send", "text": item})
        except _PEER_GONE as exc:
            self._peer_gone(exc)
        finally:
            # No await since the queue was last seen empty, so no frame can be stranded.
            self._writer = None
