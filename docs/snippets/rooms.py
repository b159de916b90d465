"""Rooms and broadcasting, from handlers and from plain HTTP endpoints."""

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from fastapi_orcs_ws import Connection, WebSocketManager, WebSocketRouter, get_manager


class RoomPayload(BaseModel):
    room: str


router = WebSocketRouter()
rooms = router.ws("/ws/rooms")


@rooms.on("join")
async def join(ws: Connection, payload: RoomPayload) -> None:
    manager = ws.data.manager
    await manager.join_room(ws.client_id, payload.room)
    # Everyone in the room but the newcomer hears about it.
    await manager.broadcast_to_room(
        payload.room, "user-joined", {"clientId": ws.client_id}, exclude=[ws.client_id]
    )


@rooms.on("leave")
async def leave(ws: Connection, payload: RoomPayload) -> None:
    await ws.data.manager.leave_room(ws.client_id, payload.room)


app = FastAPI()
app.include_router(router)


@app.post("/rooms/{room}/announce")
async def announce(
    room: str,
    text: str,
    manager: WebSocketManager = Depends(get_manager),
) -> dict[str, int]:
    """Notify a room from an HTTP endpoint (or a background job)."""
    delivered = await manager.broadcast_to_room(room, "announcement", {"text": text})
    return {"delivered": delivered}
