"""A chat room in thirty seconds: `uvicorn docs.snippets.quickstart:app`."""

from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_orcs_ws import Connection, WebSocketRouter

router = WebSocketRouter()
chat = router.ws("/ws/chat")


class ChatMessage(BaseModel):
    room: str = "general"
    text: str


@chat.on("connect")
async def connect(ws: Connection) -> None:
    await ws.data.manager.join_room(ws.data.client_id, "general")
    await ws.send("welcome", {"clientId": ws.data.client_id})


@chat.on("message")
async def message(ws: Connection, payload: ChatMessage) -> None:
    """Say something to everyone in a room."""
    await ws.data.manager.broadcast_to_room(
        payload.room, "message", {"from": ws.data.client_id, "text": payload.text}
    )


app = FastAPI()
app.include_router(router)  # also serves the event docs at /ws-docs and /asyncapi.json
