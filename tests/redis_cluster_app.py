"""The app and the worker of the Redis crash tests (tests/test_redis_crash.py).

    uvicorn tests.redis_cluster_app:app          a web node (WS_BACKEND_URL=redis://...)
    python -m tests.redis_cluster_app worker     a worker: a manager without routes that
                                                 publishes to the lobby now and then

The chat route's ``disconnect`` handler tells every room the client was in that it left,
as a chat application does: it asks the manager for the client's rooms, so it only works
if membership is still in place while it runs. Each handler run is logged
(``DISCONNECT-START`` / ``DISCONNECT-END``), so a test can count where and how often it ran.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import suppress
from typing import Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from fastapi_orcs_ws import Connection, WebSocketManager, WebSocketRouter, get_manager

log = logging.getLogger("crashapp")

LOBBY = "lobby"


class Room(BaseModel):
    room: str = Field(min_length=1, max_length=100)


router = WebSocketRouter()
chat = router.ws("/ws/chat")


@chat.on("connect")
async def connect(ws: Connection) -> None:
    manager = ws.data.manager
    await manager.join_room(ws.data.client_id, LOBBY)
    await ws.send("welcome", {"clientId": ws.data.client_id})


@chat.on("join")
async def join(ws: Connection, payload: Room) -> str:
    await ws.data.manager.join_room(ws.data.client_id, payload.room)
    return payload.room


@chat.on("linger")
async def linger(ws: Connection) -> bool:
    """From now on this client's disconnect handler takes a minute after telling its rooms."""
    ws.data.state["linger"] = True
    return True


@chat.on("disconnect")
async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
    manager = ws.data.manager
    client_id = ws.data.client_id
    rooms = sorted(await manager.get_client_rooms(client_id))
    in_lobby = client_id in await manager.get_room_clients(LOBBY)
    log.info(
        "DISCONNECT-START client=%s code=%s rooms=%s in_lobby=%s",
        client_id,
        payload.get("code"),
        ",".join(rooms),
        in_lobby,
    )
    for room in rooms:
        await manager.broadcast_to_room(
            room, "user-left", {"clientId": client_id, "room": room}, exclude=[client_id]
        )
    if ws.data.state.get("linger"):
        await asyncio.sleep(60)  # the tests kill the process in here
    log.info("DISCONNECT-END client=%s", client_id)


app = FastAPI()
app.include_router(router)


@app.get("/stats")
async def stats(manager: WebSocketManager = Depends(get_manager)) -> dict[str, Any]:
    return (await manager.get_stats()).model_dump()


@app.post("/pump")
async def pump(
    count: int,
    interval: float,
    start: int = 0,
    room: str = LOBBY,
    manager: WebSocketManager = Depends(get_manager),
) -> dict[str, int]:
    """Broadcast ``tick`` frames numbered from ``start`` to ``room``, one every ``interval`` s."""
    for n in range(start, start + count):
        await manager.broadcast_to_room(room, "tick", {"n": n})
        await asyncio.sleep(interval)
    return {"sent": count}


async def worker() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with WebSocketManager() as manager:  # WS_BACKEND_URL
        log.info("WORKER-READY node=%s", getattr(manager.backend, "node_id", "?"))
        while not stop.is_set():
            await manager.broadcast_to_room(LOBBY, "worker-tick", None)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(worker())
