"""The application under attack: one fastapi-orcs-ws echo route and one HTTP route.

Settings come from ``WS_*`` environment variables, as in a deployment.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fastapi_orcs_ws import Connection, WebSocketRouter

router = WebSocketRouter(auth=False)  # the attacks are below auth; no key warning


async def echo(ws: Connection, payload: Any) -> None:
    await ws.send("echo", payload)


router.ws("/ws", {"echo": echo})
app = FastAPI()
app.include_router(router)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
