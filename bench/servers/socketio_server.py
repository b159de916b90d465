"""python-socketio's AsyncServer as an ASGI app on uvicorn, websocket transport only.

Socket.IO's own framing replaces the JSON envelope: ``42["event", payload]`` is its
equivalent of ``{"event": ..., "payload": ...}``.

    uvicorn bench.servers.socketio_server:app --ws websockets-sansio --ws-per-message-deflate false
"""

from __future__ import annotations

from typing import Any

import socketio

sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], cors_allowed_origins=[])
app = socketio.ASGIApp(sio)


@sio.on("join")
async def join(sid: str, data: dict[str, Any]) -> None:
    await sio.enter_room(sid, data["room"])


@sio.on("publish")
async def publish(sid: str, data: dict[str, Any]) -> None:
    await sio.emit("message", data, room=data["room"])


@sio.on("echo")
async def echo(sid: str, data: dict[str, Any]) -> None:
    await sio.emit("echo", data, to=sid)
