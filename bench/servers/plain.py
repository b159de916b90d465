"""The FastAPI docs' ConnectionManager, with rooms: a list of sockets per room and a
sequential ``await ws.send_text`` broadcast loop. One encode per broadcast (the docs'
``broadcast(message: str)``). No slow-client isolation, no validation, no flow control
beyond what ``await send_text`` gives (it waits while the peer's socket is full).

    uvicorn bench.servers.plain:app --ws websockets-sansio --ws-per-message-deflate false

``make_app(loads, dumps)`` builds the same app with another JSON library
(``plain_orjson.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from ._common import flood_payloads


class ConnectionManager:
    def __init__(self) -> None:
        self.rooms: dict[str, list[WebSocket]] = {}

    def join(self, room: str, websocket: WebSocket) -> None:
        self.rooms.setdefault(room, []).append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        for members in self.rooms.values():
            if websocket in members:
                members.remove(websocket)

    async def broadcast(self, room: str, message: str) -> None:
        for connection in self.rooms.get(room, ()):
            # try/except, not contextlib.suppress: no context manager per send in the baseline
            try:  # noqa: SIM105
                await connection.send_text(message)
            except Exception:  # a member that left mid-broadcast
                pass


def make_app(loads: Callable[[str], Any], dumps: Callable[[Any], str]) -> FastAPI:
    manager = ConnectionManager()
    app = FastAPI()

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                data = loads(await websocket.receive_text())
                event = data.get("event")
                payload = data.get("payload")
                if event == "publish":
                    await manager.broadcast(
                        payload["room"], dumps({"event": "message", "payload": payload})
                    )
                elif event == "echo":
                    await websocket.send_text(dumps({"event": "echo", "payload": payload}))
                elif event == "join":
                    manager.join(payload["room"], websocket)
                elif event == "flood":
                    for body in flood_payloads(payload):
                        await websocket.send_text(dumps({"event": "flood", "payload": body}))
                elif event == "flood_room":
                    room = payload["room"]
                    for body in flood_payloads(payload):
                        await manager.broadcast(room, dumps({"event": "flood", "payload": body}))
        except WebSocketDisconnect:
            pass
        finally:
            manager.disconnect(websocket)

    return app


app = make_app(json.loads, json.dumps)
