"""The app of the history, recovery and presence tests across nodes (tests/test_recovery_redis.py,
tests/test_presence.py): ``uvicorn tests.recovery_cluster_app:app`` with
``WS_BACKEND_URL=redis://...``, or in-process with the memory backend.

Rooms ``r:*`` keep 100 frames for 5 minutes and announce presence per client; rooms ``u:*``
announce presence per user. Tokens (``?token=``) signed with ``SECRET`` are optional.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from fastapi_orcs_ws import (
    Connection,
    Position,
    Presence,
    RoomHistory,
    WebSocketManager,
    WebSocketRouter,
    WebSocketSettings,
    get_manager,
)

SECRET = "recovery-tests-secret-that-is-long-enough-0123456789"


class Since(BaseModel):
    offset: int = Field(ge=0)
    epoch: str = Field(min_length=1, max_length=64)


class JoinPayload(BaseModel):
    room: str = Field(min_length=1, max_length=100)
    since: Since | None = None


class PublishPayload(BaseModel):
    room: str
    start: int = 0
    count: int = Field(1, ge=1, le=1000)


class UserMessage(BaseModel):
    user: str
    text: str


def build(settings: WebSocketSettings | None = None) -> FastAPI:
    settings = settings or WebSocketSettings(jwt_secret=SECRET)
    manager = WebSocketManager(settings=settings)
    manager.configure_rooms("r:*", history=RoomHistory(size=100, ttl=300), presence_events="client")
    manager.configure_rooms("u:*", presence_events="user")
    router = WebSocketRouter(manager=manager)
    route = router.ws("/ws")

    @route.on("connect")
    async def connect(ws: Connection) -> None:
        await ws.send("welcome", {"clientId": ws.data.client_id})

    @route.on("join")
    async def join(ws: Connection, payload: JoinPayload) -> dict[str, Any]:
        since = Position(payload.since.offset, payload.since.epoch) if payload.since else None
        result = await ws.data.manager.join_room(ws.data.client_id, payload.room, since=since)
        return result.as_payload(payload.room)

    @route.on("leave")
    async def leave(ws: Connection, payload: JoinPayload) -> bool:
        return await ws.data.manager.leave_room(ws.data.client_id, payload.room)

    @route.on("publish")
    async def publish(ws: Connection, payload: PublishPayload) -> int:
        for i in range(payload.start, payload.start + payload.count):
            await ws.data.manager.broadcast_to_room(payload.room, "n", {"i": i})
        return payload.count

    app = FastAPI()
    app.include_router(router)

    @app.get("/rooms/{room}/presence")
    async def presence(room: str, manager: WebSocketManager = Depends(get_manager)) -> Presence:
        return await manager.presence(room)

    @app.post("/publish/{room}/{start}/{count}")
    async def publish_http(
        room: str, start: int, count: int, manager: WebSocketManager = Depends(get_manager)
    ) -> int:
        for i in range(start, start + count):
            await manager.broadcast_to_room(room, "n", {"i": i})
        return count

    @app.post("/users/{user}/{text}")
    async def to_user(
        user: str, text: str, manager: WebSocketManager = Depends(get_manager)
    ) -> dict[str, Any]:
        sent = await manager.send_to_user(user, "note", {"text": text})
        return {"sent": sent, "clients": sorted(await manager.get_user_clients(user))}

    return app


app = build()
