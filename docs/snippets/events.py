"""Event routes: typed payloads, acknowledgements, dependencies and errors."""

from typing import Annotated

from fastapi import Depends, FastAPI, Query
from pydantic import BaseModel, Field

from fastapi_orcs_ws import (
    Connection,
    EventError,
    WebSocketManager,
    WebSocketRouter,
    get_connection,
)


class Move(BaseModel):
    x: int = Field(ge=0, le=7)
    y: int = Field(ge=0, le=7)


class Moved(BaseModel):
    player: str
    x: int
    y: int


def game_id(
    ws: Annotated[Connection, Depends(get_connection)],
    game: Annotated[str | None, Query(max_length=40)] = None,
) -> str:
    """A FastAPI dependency, solved by FastAPI for every event: `?game=` of the handshake."""
    if game is not None:
        ws.data.state["game"] = game
    return str(ws.data.state.setdefault("game", "lobby"))


router = WebSocketRouter()
game = router.ws("/ws/game", emits={"moved": Moved}, summary="A board game")


@game.on("move")
async def move(
    ws: Connection,
    payload: Move,
    manager: WebSocketManager,
    game: Annotated[str, Depends(game_id)],
) -> dict[str, int]:
    """Place a piece. Returns the move, as the ack, to a client that sent an id."""
    if (payload.x, payload.y) == (0, 0):
        raise EventError("that square is taken", code="square_taken", x=0, y=0)
    await manager.broadcast("moved", Moved(player=ws.client_id, x=payload.x, y=payload.y))
    return {"x": payload.x, "y": payload.y}


@game.on("echo")
async def echo(ws: Connection, payload: list[str]) -> list[str]:
    """Any type a pydantic TypeAdapter accepts works as a payload."""
    return payload


app = FastAPI()
app.include_router(router)
