"""Rooms per client, room names and `disconnect_user` (issue 12, item 4 and "Also").

Attacks on a real uvicorn (bounded in count and time) assert the documented refusal
(a ``room_limit`` error event, the connection kept) and that a normal client is still
served; the Redis cases run two nodes on a real redis-server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from websockets.exceptions import ConnectionClosed

from fastapi_orcs_ws import (
    BackendError,
    Connection,
    ErrorCode,
    EventError,
    RoomLimitError,
    WebSocketManager,
    WebSocketRouter,
    WebSocketSettings,
)
from fastapi_orcs_ws.testing import mint_token, serve
from tests.fake_clients import FakeClient
from tests.redis_helpers import RedisServer, eventually

from .wsclient import client, expect, recv, send

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

SECRET = "room-limits-test-secret-0123456789abcdef"


def chat_app(settings: WebSocketSettings) -> tuple[FastAPI, WebSocketRouter]:
    """A chat whose ``join`` handler lets `RoomLimitError` propagate, as most apps will."""
    router = WebSocketRouter(settings=settings)
    route = router.ws("/ws", rate_limit=False)

    @route.on("join")
    async def join(ws: Connection, payload: str) -> bool:
        return await ws.data.manager.join_room(ws.data.client_id, payload)

    @route.on("say")
    async def say(ws: Connection, payload: dict[str, str]) -> int:
        return await ws.data.manager.broadcast_to_room(payload["room"], "said", payload["text"])

    app = FastAPI()
    app.include_router(router)

    @app.post("/logout/{user}")
    async def logout(user: str, manager: WebSocketManager = Depends(router.get_manager)) -> Any:
        return {"closed": await manager.disconnect_user(user, 4401, "logged out")}

    return app, router


async def replies(ws: Any, count: int, timeout: float = 30.0) -> dict[int, dict[str, Any]]:
    """The next ``count`` frames that carry an id, by id."""
    got: dict[int, dict[str, Any]] = {}
    with anyio.fail_after(timeout):
        while len(got) < count:
            frame = json.loads(await ws.recv())
            if "id" in frame:
                got[frame["id"]] = frame
    return got


# -- rooms per client and room names -------------------------------------------------------


async def test_one_socket_cannot_join_more_rooms_than_the_cap_and_others_are_served() -> None:
    settings = WebSocketSettings(max_rooms_per_client=20, max_room_name_length=64)
    app, router = chat_app(settings)
    with serve(app) as server:
        url = server.ws_url("/ws")
        async with client(url) as attacker, client(url) as normal:
            # The attack: one socket joins room after room (400,000 there; 2,000 here).
            for i in range(2_000):
                await send(attacker, "join", f"room-{i}", id=i)
            got = await replies(attacker, 2_000)
            acked = [i for i in range(2_000) if got[i]["event"] == "ack"]
            assert acked == list(range(20))
            refusal = got[20]["payload"]
            assert refusal["code"] == ErrorCode.ROOM_LIMIT.value == "room_limit"
            assert refusal["limit"] == 20
            assert "WS_MAX_ROOMS_PER_CLIENT" in refusal["message"]
            assert all(got[i]["payload"] == refusal for i in range(21, 2_000))

            # A room it is in already is not refused; a name past the bound is.
            await send(attacker, "join", "room-3", id="again")
            assert (await expect(attacker, "ack"))["payload"] is True
            await send(attacker, "join", "x" * 65, id="long")
            long = await expect(attacker, "error")
            assert (long["id"], long["payload"]["code"], long["payload"]["limit"]) == (
                "long",
                "room_limit",
                64,
            )
            assert len(json.dumps(long)) < 400  # the name is not echoed back

            # Everyone else is served, and the attacker's connection was never closed.
            await send(normal, "join", "room-3", id=1)
            assert (await expect(normal, "ack"))["payload"] is True
            await send(attacker, "say", {"room": "room-3", "text": "hi"}, id="say")
            assert (await expect(normal, "said"))["payload"] == "hi"
            stats = await router.manager.get_stats()
            assert (stats.connections, stats.rooms) == (2, 20)


async def test_room_caps_are_settings_with_safe_defaults() -> None:
    defaults = WebSocketSettings()
    assert (defaults.max_rooms_per_client, defaults.max_room_name_length) == (100, 256)
    manager = WebSocketManager(settings=WebSocketSettings(max_rooms_per_client=0))
    async with manager:
        fake = await FakeClient(manager, "c1").connect()
        for i in range(300):  # 0: no cap
            assert await manager.join_room("c1", f"r{i}")
        with pytest.raises(RoomLimitError) as refused:
            await manager.join_room("c1", "n" * 257)
        assert isinstance(refused.value, EventError) and refused.value.limit == 256
        assert await manager.get_client_rooms("c1") == {f"r{i}" for i in range(300)}
        await fake.disconnect()


@pytest.mark.redis
async def test_two_redis_nodes_joining_one_client_at_once_cannot_pass_the_cap(
    redis_server: RedisServer,
) -> None:
    settings = WebSocketSettings(max_rooms_per_client=10)
    a = WebSocketManager(settings=settings, backend=redis_server.url)
    b = WebSocketManager(settings=settings, backend=redis_server.url)
    async with a, b:
        fake = await FakeClient(a, "c1").connect()
        # 30 joins through the node that holds the client, 30 through the other, interleaved.
        calls = [m.join_room("c1", f"{m is a}-{i}") for i in range(30) for m in (a, b)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        joined = [r for r in results if r is True]
        refused = [r for r in results if isinstance(r, RoomLimitError)]
        assert (len(joined), len(refused)) == (10, 50)
        rooms = await b.get_client_rooms("c1")
        assert len(rooms) == 10
        # B's joins reach A's own view over A's channel; a frame B sends there afterwards
        # arrives after them. Then A's broadcasts reach the client in exactly those rooms.
        assert await b.send_to_client("c1", "barrier")
        await eventually(lambda: bool(fake.events("barrier")), what="the barrier")
        for m in (a, b):
            for i in range(30):
                room = f"{m is a}-{i}"
                assert await a.broadcast_to_room(room, "n", room) == int(room in rooms)
        await eventually(lambda: len(fake.events("n")) == 10, what="one frame per room")
        assert set(fake.events("n")) == rooms
        await fake.disconnect()


# -- disconnect_user -------------------------------------------------------------------


async def closed_with(ws: Any) -> tuple[int, str]:
    with anyio.fail_after(10):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason


async def test_disconnect_user_closes_every_socket_of_that_user_and_no_other() -> None:
    app, _ = chat_app(WebSocketSettings(jwt_secret=SECRET))
    alice = ["token", mint_token("alice", secret=SECRET)]
    bob = ["token", mint_token("bob", secret=SECRET)]
    with serve(app) as server:
        url = server.ws_url("/ws")
        async with (
            client(url, subprotocols=alice) as a1,
            client(url, subprotocols=alice) as a2,
            client(url, subprotocols=bob) as b1,
            client(url) as anonymous,
            httpx.AsyncClient(base_url=server.http_url) as http,
        ):
            for ws in (a1, a2, b1, anonymous):  # each is registered before the log-out
                await send(ws, "join", "lobby", id=0)
                await expect(ws, "ack")
            response = await http.post("/logout/alice")
            assert response.json() == {"closed": 2}
            assert await closed_with(a1) == (4401, "logged out")
            assert await closed_with(a2) == (4401, "logged out")
            for ws in (b1, anonymous):
                await send(ws, "say", {"room": "lobby", "text": "still here"})
                assert (await expect(ws, "said"))["payload"] == "still here"
            assert (await http.post("/logout/alice")).json() == {"closed": 0}
            assert (await http.post("/logout/nobody")).json() == {"closed": 0}


async def test_disconnect_user_refuses_bad_arguments() -> None:
    async with WebSocketManager() as manager:
        with pytest.raises(TypeError, match="user ids are str"):
            await manager.disconnect_user(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="1006"):
            await manager.disconnect_user("alice", 1006)


async def test_client_ids_are_str_in_every_call() -> None:
    """The rule join_room and leave_room follow holds for sends, closes and exclude lists."""
    async with WebSocketManager() as manager:
        with pytest.raises(TypeError, match="client ids are str, not int"):
            await manager.send_to_client(42, "x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="client ids are str, not int"):
            await manager.disconnect(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="client ids are str, not int"):
            await manager.broadcast("x", exclude=[42])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="client ids are str, not int"):
            await manager.broadcast_to_room("r", "x", exclude=["a", 42])  # type: ignore[list-item]
        assert await manager.broadcast("x", exclude=["a", "b"]) == 0
        assert await manager.send_to_client("nobody", "x") is False


@pytest.mark.redis
async def test_disconnect_user_reaches_the_users_sockets_on_every_redis_node(
    redis_server: RedisServer,
) -> None:
    settings = WebSocketSettings(jwt_secret=SECRET, backend_url=redis_server.url)
    app_a, _ = chat_app(settings)
    app_b, _ = chat_app(settings)
    alice = ["token", mint_token("alice", secret=SECRET)]
    bob = ["token", mint_token("bob", secret=SECRET)]
    with serve(app_a) as node_a, serve(app_b) as node_b:
        async with (
            client(node_a.ws_url("/ws"), subprotocols=alice) as on_a,
            client(node_b.ws_url("/ws"), subprotocols=alice) as on_b,
            client(node_b.ws_url("/ws"), subprotocols=bob) as bob_b,
            httpx.AsyncClient(base_url=node_a.http_url) as http,
        ):
            for ws in (on_a, on_b, bob_b):
                await send(ws, "join", "lobby", id=0)
                await expect(ws, "ack")
            # Node A closes its own and counts them; node B closes its own on A's message.
            assert (await http.post("/logout/alice")).json() == {"closed": 1}
            assert await closed_with(on_a) == (4401, "logged out")
            assert await closed_with(on_b) == (4401, "logged out")
            # The close frame goes out first; each node then removes its client from the
            # rooms in Redis: wait for that (bounded) before counting the room.
            async with WebSocketManager(backend=redis_server.url) as reader:  # a worker
                with anyio.fail_after(10):
                    while len(await reader.get_room_clients("lobby")) != 1:
                        await anyio.sleep(0.02)
            await send(bob_b, "say", {"room": "lobby", "text": "hi"}, id=1)
            frames = [await recv(bob_b), await recv(bob_b)]
            assert {f["event"] for f in frames} == {"said", "ack"}
            ack = next(f for f in frames if f["event"] == "ack")
            assert ack["payload"] == 1  # alice is gone from the room on both nodes


@pytest.mark.redis
async def test_disconnect_user_without_redis_closes_local_sockets_and_says_so(
    redis_server: RedisServer,
) -> None:
    manager = WebSocketManager(backend=redis_server.url)
    async with manager:
        fake = await FakeClient(manager, "c1", user="alice").connect()
        redis_server.stop()
        with pytest.raises(BackendError, match="closed 1 connections of user 'alice' here"):
            await manager.disconnect_user("alice", 4403, "revoked")
        await eventually(lambda: fake.closes == [(4403, "revoked")], what="the local close")
        await fake.disconnect(4403)
