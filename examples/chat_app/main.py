"""The spec's chat application, on fastapi-orcs-ws.

Run from the repository root::

    uvicorn examples.chat_app.main:app --port 42069

then open http://127.0.0.1:42069 in two browser tabs.
"""

from __future__ import annotations

import importlib.util
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from fastapi_orcs_ws import (
    Connection,
    Position,
    Presence,
    PrometheusMetrics,
    RoomHistory,
    Stats,
    WebSocketManager,
    WebSocketRouter,
    get_manager,
    health_router,
)

GENERAL = "general"


class RoomPayload(BaseModel):
    room: str = Field(min_length=1, max_length=100)


class Since(BaseModel):
    offset: int = Field(ge=0)
    epoch: str = Field(min_length=1, max_length=64)


class JoinPayload(RoomPayload):
    since: Since | None = None
    """The last position the client saw in the room (``room``/``offset``/``epoch`` of its
    last frame): what it missed since then is replayed before anything new."""


class ChatMessage(BaseModel):
    room: str = Field(GENERAL, min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=4000)


class TypingPayload(BaseModel):
    room: str = Field(GENERAL, min_length=1, max_length=100)


class Welcome(BaseModel):
    message: str
    clientId: str


class ClientRef(BaseModel):
    clientId: str
    room: str = GENERAL
    """The room concerned (an addition to the spec's payload; older clients ignore it)."""


class JoinAnswer(BaseModel):
    """The answer to ``join``: with ``since``, whether everything missed was replayed."""

    room: str
    recovered: bool
    offset: int | None = None
    """The room's last position (rooms here keep history, so always set)."""
    epoch: str | None = None


class PresenceEvent(BaseModel):
    """``presence-join`` / ``presence-leave``: who came or went (``user``: null when
    anonymous)."""

    room: str
    clientId: str
    user: dict[str, Any] | None = None


class ChatBroadcast(BaseModel):
    model_config = {"populate_by_name": True}

    from_: str = Field(alias="from")
    text: str
    timestamp: datetime
    room: str = GENERAL


router = WebSocketRouter()
# Every room keeps its last 100 messages for 5 minutes, and announces who comes and goes.
router.manager.configure_rooms(
    "*", history=RoomHistory(size=100, ttl=300), presence_events="client"
)
chat = router.ws(
    "/ws/chat",
    emits={
        "welcome": Welcome,
        "user-joined": ClientRef,
        "user-left": ClientRef,
        "user-typing": ClientRef,
        "message": ChatBroadcast,
        "presence-join": PresenceEvent,
        "presence-leave": PresenceEvent,
    },
    summary="Chat rooms",
    description="Everyone starts in `general` (unless connecting with `?autojoin=false` to "
    "join it with `since`); join and leave other rooms at will. Rooms keep their last 100 "
    "messages for 5 minutes: a `join` with `since` replays what was missed.",
)


AutoJoin = Annotated[
    bool,
    Query(
        description="Put the client in `general` on connect (the spec's behaviour). A client "
        "that joins `general` itself, to recover it after a reconnect with `since`, connects "
        "with `?autojoin=false` (the chat page does)."
    ),
]


@chat.on("connect")
async def connect(ws: Connection, autojoin: AutoJoin = True) -> None:
    manager = ws.data.manager
    client_id = ws.data.client_id
    if autojoin:
        await manager.join_room(client_id, GENERAL)
    await manager.send(ws, "welcome", {"message": "Welcome to chat!", "clientId": client_id})
    if autojoin:
        await manager.broadcast_to_room(
            GENERAL, "user-joined", {"clientId": client_id, "room": GENERAL}, exclude=[client_id]
        )


@chat.on("join")
async def join(ws: Connection, payload: JoinPayload) -> JoinAnswer:
    """Answers ``{"room", "recovered", "offset", "epoch"}``; with ``since``, what the client
    missed comes first (``recovered: false``: more was missed than the room keeps)."""
    client_id = ws.data.client_id
    since = Position(payload.since.offset, payload.since.epoch) if payload.since else None
    result = await ws.data.manager.join_room(client_id, payload.room, since=since)
    await ws.data.manager.broadcast_to_room(
        payload.room,
        "user-joined",
        {"clientId": client_id, "room": payload.room},
        exclude=[client_id],
    )
    return JoinAnswer.model_validate(result.as_payload(payload.room))


@chat.on("leave")
async def leave(ws: Connection, payload: RoomPayload) -> dict[str, str]:
    client_id = ws.data.client_id
    if await ws.data.manager.leave_room(client_id, payload.room):
        await ws.data.manager.broadcast_to_room(
            payload.room, "user-left", {"clientId": client_id, "room": payload.room}
        )
    return {"room": payload.room}


@chat.on("message")
async def message(ws: Connection, payload: ChatMessage) -> None:
    await ws.data.manager.broadcast_to_room(
        payload.room,
        "message",
        {
            "from": ws.data.client_id,
            "text": payload.text,
            "timestamp": datetime.now(UTC).isoformat(),
            "room": payload.room,
        },
    )


@chat.on("typing")
async def typing(ws: Connection, payload: TypingPayload) -> None:
    client_id = ws.data.client_id
    await ws.data.manager.broadcast_to_room(
        payload.room,
        "user-typing",
        {"clientId": client_id, "room": payload.room},
        exclude=[client_id],
        history=False,  # not worth replaying
    )


@chat.on("disconnect")
async def disconnect(ws: Connection) -> None:
    await ws.data.manager.broadcast_to_room(
        GENERAL, "user-left", {"clientId": ws.data.client_id, "room": GENERAL}
    )


app = FastAPI(title="fastapi-orcs-ws chat")
app.include_router(router)
app.include_router(health_router())  # GET /health/live, /health/ready

# Prometheus metrics at /metrics, with the `metrics` extra (docs/operations.md).
if importlib.util.find_spec("prometheus_client") is not None:
    metrics = PrometheusMetrics().instrument(router)
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False)
else:
    logging.getLogger(__name__).warning(
        "no /metrics: install prometheus-client (pip install 'fastapi-orcs-ws[metrics]')"
    )

_PAGE = Path(__file__).with_name("static") / "index.html"


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> str:
    return _PAGE.read_text(encoding="utf-8")


@app.get("/rooms/{room}/presence")
async def presence(room: str, manager: WebSocketManager = Depends(get_manager)) -> Presence:
    """Who is in ``room`` on every node: ``{"clients": [{"clientId", "user"}], "users": N}``."""
    return await manager.presence(room)


@app.get("/stats")
async def stats(manager: WebSocketManager = Depends(get_manager)) -> Stats:
    """Connections, rooms and average room size (the spec's ``getStats()``)."""
    return await manager.get_stats()
