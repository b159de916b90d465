"""Per-route auth, a user_loader, and the user in event handlers and HTTP routes."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from fastapi_orcs_ws import (
    AuthOptions,
    Connection,
    WebSocketRouter,
    WebSocketSettings,
    current_user,
    optional_user,
)

settings = WebSocketSettings(
    jwt_secret="change-me-to-a-long-random-secret",  # in production: WS_JWT_SECRET
    jwt_audience="chat",  # tokens must carry "aud": "chat"
    allowed_origins=["https://chat.example.com"],  # browsers on other sites are refused
)


@dataclass
class Member:
    id: str
    name: str
    banned: bool = False


MEMBERS = {"alice": Member("alice", "Alice"), "mallory": Member("mallory", "Mallory", True)}


async def load_member(claims: Mapping[str, Any]) -> Member | None:
    """Claims to the app's user (a database look-up in real life); None refuses."""
    member = MEMBERS.get(claims["sub"])
    return None if member is None or member.banned else member


router = WebSocketRouter(settings=settings, auth=AuthOptions(user_loader=load_member))
lobby = router.ws("/ws/lobby")  # anonymous welcome; a presented bad token is still refused
room = router.ws("/ws/room", auth={"required": True})  # no valid token: 4401


@lobby.on("connect")
async def greet(ws: Connection) -> None:
    name = ws.data.user.name if ws.data.authenticated else "guest"
    await ws.send("welcome", {"name": name})


@room.on("say")
async def say(
    ws: Connection, payload: str, member: Annotated[Member, Depends(current_user)]
) -> None:
    await ws.data.manager.broadcast("said", {"from": member.name, "text": payload})


app = FastAPI()
app.include_router(router)


@app.get("/me")
async def me(member: Annotated[Member, Depends(current_user)]) -> dict[str, str]:
    """Bearer token required: 401 without one."""
    return {"id": member.id, "name": member.name}


@app.get("/greeting")
async def greeting(member: Annotated[Member | None, Depends(optional_user)]) -> str:
    return f"Hello, {member.name if member else 'guest'}!"
