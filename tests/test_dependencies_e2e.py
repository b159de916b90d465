"""Handler dependencies on a real uvicorn with a real client: the handshake refusal and sync
``yield`` dependencies in the thread pool."""
# No `from __future__ import annotations`: FastAPI reads these annotations as objects.

import threading
from collections.abc import Iterator
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI, Header, Query
from websockets.exceptions import ConnectionClosed

from fastapi_orcs_ws import CloseCode, Connection, WebSocketRouter
from fastapi_orcs_ws.testing import serve

from .wsclient import client, expect, recv, send

pytestmark = pytest.mark.anyio


def make_app(log: list[Any]) -> FastAPI:
    def tenant(x_tenant: Annotated[str, Header()], key: str = Query("none")) -> str:
        log.append("tenant dependency")
        return f"{x_tenant}/{key}"

    router = WebSocketRouter()
    route = router.ws("/rooms/{room}")

    @route.on("connect")
    async def connect(ws: Connection) -> None:
        log.append("connect")

    @route.on("whoami")
    async def whoami(
        ws: Connection, payload: Any, room: int, who: Annotated[str, Depends(tenant)]
    ) -> dict[str, Any]:
        log.append("whoami")
        return {"room": room, "tenant": who}

    app = FastAPI()
    app.include_router(router)
    return app


async def refusal(url: str, **kwargs: Any) -> tuple[int, str]:
    """The close code and reason of a connection the server refuses after the handshake."""
    async with client(url, **kwargs) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


async def test_a_handshake_missing_what_a_handler_needs_is_refused_before_any_handler() -> None:
    log: list[Any] = []
    with serve(make_app(log)) as server:
        code, reason = await refusal(server.ws_url("/rooms/5?key=k"))
        assert code == CloseCode.POLICY_VIOLATION == 1008
        assert "x-tenant" in reason and len(reason.encode()) <= 123
        code, reason = await refusal(
            server.ws_url("/rooms/five"), additional_headers={"x-tenant": "acme"}
        )
        assert code == 1008 and "room" in reason
        assert log == []  # neither connect, nor the handler, nor the dependency ran

        headers = {"x-tenant": "acme"}
        async with client(server.ws_url("/rooms/5?key=k"), additional_headers=headers) as ws:
            await send(ws, "whoami", id=1)
            assert await expect(ws, "ack") == {
                "event": "ack",
                "id": 1,
                "payload": {"room": 5, "tenant": "acme/k"},
            }
    assert log == ["connect", "tenant dependency", "whoami"]


async def test_a_blocking_sync_yield_dependency_does_not_block_other_clients() -> None:
    """Client A's dependency blocks until client B's event releases it. On the event loop,
    B's event could never run: A's bounded wait would fail and A would get an error."""
    entered = threading.Event()
    released = threading.Event()
    closed: list[str] = []

    def gate() -> Iterator[str]:
        entered.set()
        yield "released" if released.wait(timeout=10) else "timed out"
        closed.append("gate")

    router = WebSocketRouter()

    async def wait(ws: Connection, payload: Any, state: Annotated[str, Depends(gate)]) -> str:
        return state

    async def release(ws: Connection, payload: Any) -> str:
        released.set()
        return "ok"

    router.ws("/ws", {"wait": wait, "release": release})
    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as a, client(server.ws_url("/ws")) as b:
            await send(a, "wait", id="a")
            assert await anyio.to_thread.run_sync(entered.wait, 10)
            await send(b, "release", id="b")
            assert await expect(b, "ack", timeout=10) == {
                "event": "ack",
                "id": "b",
                "payload": "ok",
            }
            assert await expect(a, "ack", timeout=10) == {
                "event": "ack",
                "id": "a",
                "payload": "released",
            }
    assert closed == ["gate"]
