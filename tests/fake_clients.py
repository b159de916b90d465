"""Connections without a network, for tests that drive a `WebSocketManager` directly.

A `FakeClient` is a real [`Connection`][fastapi_orcs_ws.Connection] (its outbox, its states, its
close rules) whose ASGI ``send`` records what the server would have written: text frames as
decoded JSON, close frames as ``(code, reason)``. ``connect``/``disconnect`` do what a
session does with the manager at those moments (register; mark closing, then unregister).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.websockets import WebSocket

from fastapi_orcs_ws import Connection, ConnectionData, WebSocketManager
from fastapi_orcs_ws._outbox import SendPolicy

POLICY = SendPolicy(max_frames=100_000, max_bytes=1 << 26, stall_timeout=10.0, close_timeout=5.0)


class FakeClient:
    """One client of ``manager``, optionally authenticated as ``user`` (its token's ``sub``)."""

    def __init__(self, manager: WebSocketManager, client_id: str, user: str | None = None) -> None:
        self.manager = manager
        self.client_id = client_id
        self.user = user
        self.frames: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []
        scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}

        async def receive() -> Any:
            raise RuntimeError("a FakeClient never sends")

        async def send(message: Any) -> None:
            if message["type"] == "websocket.send":
                self.frames.append(json.loads(message["text"]))
            elif message["type"] == "websocket.close":
                self.closes.append((message["code"], message.get("reason", "")))

        data = ConnectionData(
            client_id,
            connected_at=datetime.now(UTC),
            manager=manager,
            authenticated=user is not None,
            claims={"sub": user} if user is not None else None,
        )
        self.conn = Connection(WebSocket(scope, receive, send), data, send=send, policy=POLICY)

    async def connect(self, route: str = "/ws") -> FakeClient:
        await self.manager._register(self.conn, route)
        return self

    async def disconnect(self, code: int = 1000) -> None:
        """The clean end of a session: closing is recorded, then membership goes."""
        await self.manager._client_closing(self.client_id)
        self.conn.ended(code)
        await self.manager._unregister(self.conn)

    def events(self, name: str) -> list[Any]:
        return [f.get("payload") for f in self.frames if f["event"] == name]
