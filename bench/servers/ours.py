"""fastapi-orcs-ws: one route, the bench events, rooms through the manager.

    uvicorn bench.servers.ours:app --ws websockets-sansio --ws-per-message-deflate false

``WebSocketManager()`` reads ``WS_*`` from the environment, so ``WS_BACKEND_URL=redis://...``
turns on the Redis backend for the two-process run.

The same file serves ``ours-before`` (the library as of an older commit, imported through
``PYTHONPATH``): it prints where ``fastapi_orcs_ws`` came from, and refuses to start when
``BENCH_EXPECT_ORCS`` is set and the package was imported from anywhere else.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fastapi import FastAPI

import fastapi_orcs_ws
from fastapi_orcs_ws import Connection, WebSocketManager, WebSocketRouter

if __package__:
    from ._common import flood_payloads
else:  # ours-before: imported as a top-level module (--app-dir bench/servers)
    from _common import flood_payloads  # type: ignore[no-redef]

ORCS_FILE = str(fastapi_orcs_ws.__file__)
_expected = os.environ.get("BENCH_EXPECT_ORCS")
if _expected and not ORCS_FILE.startswith(_expected):
    raise SystemExit(f"bench: fastapi_orcs_ws imported from {ORCS_FILE}, expected {_expected}")
print(f"bench-server: fastapi_orcs_ws imported from {ORCS_FILE}", file=sys.stderr, flush=True)

# The load client opens thousands of sockets from one address and sends as fast as it can:
# the abuse limits (connection caps, rate limit) would refuse it, and the peers have none.
for _name in ("MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_IP", "RATE_LIMIT_PER_SECOND"):
    os.environ.setdefault(f"WS_{_name}", "0")
manager = WebSocketManager()
router = WebSocketRouter(manager=manager)


async def join(ws: Connection, payload: Any) -> None:
    await ws.data.manager.join_room(ws.data.client_id, payload["room"])


async def publish(ws: Connection, payload: Any) -> None:
    await ws.data.manager.broadcast_to_room(payload["room"], "message", payload)


async def echo(ws: Connection, payload: Any) -> None:
    await ws.send("echo", payload)


async def flood(ws: Connection, payload: Any) -> None:
    """A tight loop of ``await ws.send`` to the sender (issue 9, item 4)."""
    for body in flood_payloads(payload):
        await ws.send("flood", body)


async def flood_room(ws: Connection, payload: Any) -> None:
    """A tight loop of ``broadcast_to_room`` (issue 9, item 4)."""
    broadcast = ws.data.manager.broadcast_to_room
    room = payload["room"]
    for body in flood_payloads(payload):
        await broadcast(room, "flood", body)


router.ws(
    "/ws",
    {"join": join, "publish": publish, "echo": echo, "flood": flood, "flood_room": flood_room},
)
app = FastAPI()
app.include_router(router)
