"""python-socketio's AsyncServer as an ASGI app on uvicorn, websocket transport only.

Socket.IO's own framing replaces the JSON envelope: ``42["event", payload]`` is its
equivalent of ``{"event": ..., "payload": ...}``. ``emit`` queues frames per socket without a
bound (engine.io's queue): that is what it does in the tight-loop and relay cases.

    uvicorn bench.servers.socketio_server:app --ws websockets-sansio --ws-per-message-deflate false
"""

from __future__ import annotations

from typing import Any

import socketio

from ._common import flood_payloads

# max_http_buffer_size: engine.io's default (1 MB) would refuse the 8 MiB relay case; this is
# uvicorn's own frame limit (--ws-max-size), which bounds the other servers.
sio = socketio.AsyncServer(
    async_mode="asgi",
    transports=["websocket"],
    cors_allowed_origins=[],
    max_http_buffer_size=16 * 1024 * 1024,
)
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


@sio.on("flood")
async def flood(sid: str, data: dict[str, Any]) -> None:
    for body in flood_payloads(data):
        await sio.emit("flood", body, to=sid)


@sio.on("flood_room")
async def flood_room(sid: str, data: dict[str, Any]) -> None:
    room = data["room"]
    for body in flood_payloads(data):
        await sio.emit("flood", body, room=room)
