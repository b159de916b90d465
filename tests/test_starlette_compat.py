"""The one reach beneath Starlette's public WebSocket API (fastapi_orcs_ws/_starlette_compat.py).

Run on the newest Starlette and on the lowest pyproject.toml allows (scripts/test-lowest.sh):
if Starlette renames the attributes, the first two tests fail here rather than the library
quietly taking its slower path. The last one shows that slower path still serves events.
"""

from __future__ import annotations

import functools
from typing import Any

import anyio
import starlette
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.client import connect as ws_connect

from fastapi_orcs_ws import Connection, WebSocketRouter, WebSocketSettings
from fastapi_orcs_ws._starlette_compat import asgi_receive, asgi_send
from fastapi_orcs_ws.testing import serve


def _probe_app(found: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.websocket("/probe")
    async def probe(websocket: WebSocket) -> None:
        found["receive"] = asgi_receive(websocket)
        found["send"] = asgi_send(websocket)
        found["scope_receive"] = websocket.scope.get("probe.receive")
        await websocket.accept()
        await websocket.close()

    return app


def test_both_callables_are_found_under_the_testclient() -> None:
    found: dict[str, Any] = {}
    with TestClient(_probe_app(found)) as client, client.websocket_connect("/probe"):
        pass
    assert found["receive"] is not None, f"Starlette {starlette.__version__}: no _receive"
    assert found["send"] is not None, f"Starlette {starlette.__version__}: no _send"


def test_they_are_the_servers_own_callables_on_uvicorn() -> None:
    """What uvicorn passed in is what the fast path calls (nothing between them)."""
    found: dict[str, Any] = {}
    inner = _probe_app(found)

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        scope["probe.receive"] = receive
        await inner(scope, receive, send)

    async def connect(url: str) -> None:
        with anyio.fail_after(10):
            async with ws_connect(url) as ws:
                await ws.wait_closed()

    with serve(recording, settings=WebSocketSettings()) as live:
        anyio.run(connect, live.ws_url("/probe"))
    assert found["receive"] is found["scope_receive"]
    assert found["send"] is not None


def _partial_middleware(app: ASGIApp) -> ASGIApp:
    """Passes `send` on as a functools.partial: not a coroutine function, so not taken."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def forward(message: Any, *, via: Send) -> None:
            await via(message)

        await app(scope, receive, functools.partial(forward, via=send))

    return wrapped


def test_the_public_path_serves_events_when_the_send_is_not_a_coroutine_function() -> None:
    router = WebSocketRouter()

    async def echo(ws: Connection, payload: Any) -> Any:
        await ws.send("echoed", payload)
        return payload

    router.ws("/ws", {"echo": echo})
    app = FastAPI()
    app.include_router(router)
    with TestClient(_partial_middleware(app)) as client, client.websocket_connect("/ws") as ws:
        ws.send_json({"event": "echo", "payload": {"n": 1}, "id": 1})
        frames = [ws.receive_json() for _ in range(2)]
    assert {"event": "echoed", "payload": {"n": 1}} in frames
    assert any(f.get("id") == 1 and f.get("payload") == {"n": 1} for f in frames), frames
