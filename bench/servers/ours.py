"""fastapi-orcs-ws: one route, three events, rooms through the manager.

    uvicorn bench.servers.ours:app --ws websockets-sansio --ws-per-message-deflate false

``WebSocketManager()`` reads ``WS_*`` from the environment, so ``WS_BACKEND_URL=redis://...``
turns on the Redis backend for the two-process run.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fastapi_orcs_ws import Connection, WebSocketManager, WebSocketRouter

manager = WebSocketManager()
router = WebSocketRouter(manager=manager)


async def join(ws: Connection, payload: Any) -> None:
    await ws.data.manager.join_room(ws.data.client_id, payload["room"])


async def publish(ws: Connection, payload: Any) -> None:
    await ws.data.manager.broadcast_to_room(payload["room"], "message", payload)


async def echo(ws: Connection, payload: Any) -> None:
    await ws.send("echo", payload)


router.ws("/ws", {"join": join, "publish": publish, "echo": echo})
app = FastAPI()
app.include_router(router)
