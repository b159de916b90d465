"""The FastAPI docs' ConnectionManager, with rooms: a list of sockets per room and a
sequential ``await ws.send_text`` broadcast loop. One encode per broadcast (the docs'
``broadcast(message: str)``). No slow-client isolation, no validation.

    uvicorn bench.servers.plain:app --ws websockets-sansio --ws-per-message-deflate false
"""

from __future__ import annotations

import json

from fastapi import FastAPI, WebSocket, WebSocketDisconnect


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


manager = ConnectionManager()
app = FastAPI()


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            data = json.loads(await websocket.receive_text())
            event = data.get("event")
            payload = data.get("payload")
            if event == "publish":
                await manager.broadcast(
                    payload["room"], json.dumps({"event": "message", "payload": payload})
                )
            elif event == "echo":
                await websocket.send_text(json.dumps({"event": "echo", "payload": payload}))
            elif event == "join":
                manager.join(payload["room"], websocket)
    except WebSocketDisconnect:
        pass
    finally:
        manager.disconnect(websocket)
