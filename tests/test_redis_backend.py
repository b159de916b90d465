"""The Redis backend, with several WebSocketManagers in one process as the nodes."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.websockets import WebSocketState

from fastapi_orcs_ws import (
    BackendError,
    ConfigurationError,
    Connection,
    WebSocketManager,
    WebSocketSettings,
)
from fastapi_orcs_ws._outbox import SendPolicy
from fastapi_orcs_ws.backends import backend_from_url
from fastapi_orcs_ws.backends.redis import RedisBackend
from fastapi_orcs_ws.connection import ConnectionData
from tests.redis_helpers import RedisServer, eventually

pytestmark = [pytest.mark.redis, pytest.mark.anyio, pytest.mark.timeout(60)]

FAST = "node_ttl=1.5&heartbeat=0.3"


class FakeSocket:
    """Stands in for a Starlette WebSocket: records what the connection writes."""

    application_state = WebSocketState.CONNECTED

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed_with: tuple[int, str] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            self.frames.append(json.loads(message["text"]))
        else:
            self.closed_with = (message["code"], message["reason"])

    def events(self, name: str) -> list[Any]:
        return [f["payload"] for f in self.frames if f["event"] == name]


class Client:
    def __init__(self, manager: WebSocketManager, client_id: str) -> None:
        self.socket = FakeSocket()
        data = ConnectionData(client_id=client_id, connected_at=datetime.now(UTC), manager=manager)
        policy = SendPolicy(max_frames=100, max_bytes=1 << 20, stall_timeout=1, close_timeout=1)
        self.conn = Connection(self.socket, data, send=self.socket.send, policy=policy)  # type: ignore[arg-type]
        self.manager = manager
        self.id = client_id

    async def connect(self) -> Client:
        await self.manager._register(self.conn)
        return self

    async def disconnect(self) -> None:
        self.conn.ended(1000)
        await self.manager._unregister(self.conn)
        await self.conn.aclose()

    def events(self, name: str) -> list[Any]:
        return self.socket.events(name)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[list[WebSocketManager]]:
    # Fake sockets never finish their disconnect, so stop() should not wait long for them.
    quick = WebSocketSettings(close_timeout=0.2)
    managers = [
        WebSocketManager(settings=quick, backend=f"{redis_server.url}?{FAST}&node_id=n{i}")
        for i in range(3)
    ]
    for manager in managers:
        await manager.start()
    try:
        yield managers
    finally:
        for manager in managers:
            with anyio.fail_after(10):
                await manager.stop()


def backend(manager: WebSocketManager) -> RedisBackend:
    assert isinstance(manager.backend, RedisBackend)
    return manager.backend


# -- configuration ----------------------------------------------------------------------


def test_url_options_are_parsed_and_stripped() -> None:
    b = RedisBackend("redis://h:1/2?node_ttl=6&heartbeat=1.5&prefix=app:&max_frame=100&node_id=x")
    assert (b.node_ttl, b.heartbeat, b.prefix, b.max_frame, b.node_id) == (6, 1.5, "app:", 100, "x")
    assert b._url == "redis://h:1/2"
    defaults = backend_from_url("rediss://h/0?socket_timeout=3")
    assert isinstance(defaults, RedisBackend)
    assert (defaults.node_ttl, defaults.prefix, defaults._url) == (
        10,
        "orcs:",
        "rediss://h/0?socket_timeout=3",
    )
    assert defaults.node_ttl + defaults.heartbeat <= 15, "the issue's default reaping bound"


@pytest.mark.parametrize("query", ["node_ttl=abc", "node_ttl=3&heartbeat=3", "heartbeat=0"])
def test_bad_options_raise_configuration_error(query: str) -> None:
    with pytest.raises(ConfigurationError, match="WS_BACKEND_URL"):
        RedisBackend(f"redis://h/0?{query}")


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigurationError, match=r"pip install fastapi-orcs-ws\[redis\]"):
        RedisBackend("redis://localhost/0")


# -- membership -------------------------------------------------------------------------


async def test_membership_and_stats_are_cluster_wide(nodes: list[WebSocketManager]) -> None:
    a, b, c = nodes
    a1 = await Client(a, "a1").connect()
    b1 = await Client(b, "b1").connect()
    await Client(b, "b2").connect()
    assert await a.join_room("a1", "general")
    assert await b.join_room("b1", "general")
    assert await b.join_room("b2", "other")
    for manager in nodes:
        assert await manager.get_room_clients("general") == {"a1", "b1"}
        assert await manager.get_client_rooms("b1") == {"general"}
        stats = await manager.get_stats()
        assert (stats.connections, stats.rooms, stats.average_room_size) == (3, 2, 1.5)
        assert stats.backend == "redis" and stats.backend_healthy
    assert await backend(c).has_client("a1") and not await backend(c).has_client("zz")

    await a.leave_room("a1", "general")
    await b1.disconnect()
    assert await c.get_room_clients("general") == set()
    stats = await c.get_stats()
    assert (stats.connections, stats.rooms) == (2, 1)
    await a1.disconnect()
    assert (await c.get_stats()).connections == 1


async def test_join_and_leave_for_a_client_on_another_node(nodes: list[WebSocketManager]) -> None:
    a, b, _ = nodes
    b1 = await Client(b, "b1").connect()
    assert await a.join_room("b1", "blue")
    assert not await a.join_room("nobody", "blue")
    assert await b.get_client_rooms("b1") == {"blue"}
    # The owner learns of the join: a broadcast from the owner itself reaches b1.
    await eventually(lambda: "b1" in backend(b)._index.rooms.get("blue", {}), what="owner view")
    await b.broadcast_to_room("blue", "hello")
    await eventually(lambda: len(b1.events("hello")) == 1, what="frame after remote join")
    assert await a.leave_room("b1", "blue")
    assert not await a.leave_room("b1", "blue")
    await eventually(lambda: "blue" not in backend(b)._index.rooms, what="owner view after leave")
    assert await b.get_client_rooms("b1") == set()


# -- delivery ---------------------------------------------------------------------------


async def test_room_broadcast_reaches_each_member_once_and_only_their_nodes(
    nodes: list[WebSocketManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = nodes
    a1, a2 = await Client(a, "a1").connect(), await Client(a, "a2").connect()
    b1 = await Client(b, "b1").connect()
    c1 = await Client(c, "c1").connect()
    for client in (a1, a2, b1):
        await client.manager.join_room(client.id, "room")
    await c.join_room("c1", "elsewhere")
    seen_by_c: list[str] = []
    original = backend(c)._handle
    monkeypatch.setattr(
        backend(c), "_handle", lambda data: (seen_by_c.append(data), original(data))
    )

    assert await a.broadcast_to_room("room", "message", {"n": 1}, exclude="a2") == 2
    assert await c.broadcast_to_room("room", "message", {"n": 2}) == 3
    await eventually(lambda: len(b1.events("message")) == 2, what="b1 gets both")
    await anyio.sleep(0.3)  # anything extra would arrive by now
    assert a1.events("message") == [{"n": 1}, {"n": 2}]
    assert a2.events("message") == [{"n": 2}]
    assert b1.events("message") == [{"n": 1}, {"n": 2}]
    assert c1.events("message") == []
    assert seen_by_c == [], "a node without members of the room got its traffic"


async def test_broadcast_to_everyone_and_direct_sends(nodes: list[WebSocketManager]) -> None:
    a, b, c = nodes
    clients = [await Client(m, f"{m.backend.node_id}-x").connect() for m in nodes]  # type: ignore[attr-defined]
    assert await b.broadcast("news", {"v": 1}, exclude=clients[0].id) == 2
    await eventually(lambda: all(len(x.events("news")) == 1 for x in clients[1:]), what="broadcast")
    await anyio.sleep(0.2)
    assert clients[0].events("news") == []
    assert await a.send_to_client(clients[2].id, "dm", {"hi": 1})
    assert await c.send_to_client(clients[2].id, "dm", {"hi": 2})
    assert not await a.send_to_client("nobody", "dm")
    await eventually(lambda: len(clients[2].events("dm")) == 2, what="direct sends")
    assert [x.events("dm") for x in clients[:2]] == [[], []]


async def test_disconnect_a_client_on_another_node(nodes: list[WebSocketManager]) -> None:
    a, b, _ = nodes
    b1 = await Client(b, "b1").connect()
    assert await a.disconnect("b1", 4403, "kicked")
    assert not await a.disconnect("nobody")
    await eventually(lambda: b1.socket.closed_with == (4403, "kicked"), what="remote close")


async def test_worker_without_sockets_publishes(
    redis_server: RedisServer, nodes: list[WebSocketManager]
) -> None:
    a = nodes[0]
    a1 = await Client(a, "a1").connect()
    await a.join_room("a1", "jobs")
    async with WebSocketManager(backend=redis_server.url) as worker:
        assert await worker.broadcast_to_room("jobs", "done", {"job": 7}) == 1
        assert await worker.send_to_client("a1", "dm", "for you")
        assert (await worker.get_stats()).connections == 1
    await eventually(lambda: a1.events("done") == [{"job": 7}] and a1.events("dm") == ["for you"])


async def test_payload_limit_is_enforced_before_publishing(redis_server: RedisServer) -> None:
    async with WebSocketManager(backend=redis_server.url, max_payload_length=1000) as small:
        with pytest.raises(BackendError, match="exceeds 1000 bytes"):
            await small.broadcast_to_room("room", "big", "é" * 600)
        assert await small.broadcast_to_room("room", "fine", "x" * 900) == 0
    async with WebSocketManager(backend=f"{redis_server.url}?max_frame=50") as tiny:
        with pytest.raises(BackendError):
            await tiny.send_to_client("x", "big", "x" * 60)


async def test_unknown_envelope_version_is_dropped_with_a_warning(
    nodes: list[WebSocketManager], caplog: pytest.LogCaptureFixture
) -> None:
    b = nodes[1]
    b1 = await Client(b, "b1").connect()
    await b.join_room("b1", "r")
    redis = backend(nodes[0])._redis
    assert redis is not None
    frame = json.dumps({"event": "x", "payload": None})
    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws.redis"):
        await redis.publish(
            "orcs:node:n1", json.dumps({"v": 99, "k": "room", "r": "r"}) + "\n" + frame
        )
        await redis.publish("orcs:node:n1", '{"v":1,"k":"room","o":"t","r":"r","x":[]}\n' + frame)
        await eventually(lambda: len(b1.events("x")) == 1, what="v1 message")
    assert "version 99" in caplog.text


# -- failures ---------------------------------------------------------------------------


async def test_dead_node_is_reaped_once_and_disconnect_logic_runs_once(
    nodes: list[WebSocketManager], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = nodes
    gone: list[tuple[str, list[str]]] = []
    for manager in (a, c):

        async def record(ids: Any, name: str = manager.backend.node_id) -> None:  # type: ignore[attr-defined]
            gone.append((name, sorted(ids)))

        manager.on_clients_gone(record)
    await Client(a, "a1").connect()
    await Client(b, "b1").connect()
    await Client(b, "b2").connect()
    await b.join_room("b1", "general")
    await a.join_room("b2", "general")
    await a.join_room("a1", "general")

    # "kill -9" node b: its tasks stop and it never cleans up.
    dead = backend(b)
    for task in dead._tasks:
        task.cancel()
    await anyio.lowlevel.checkpoint()
    assert dead._redis is not None
    await dead._redis.aclose()
    dead._redis = None
    killed = time.monotonic()
    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws.redis"):
        await eventually(
            lambda: len(gone) >= 1, within=dead.node_ttl + 3 * dead.heartbeat, what="reap"
        )
    took = time.monotonic() - killed
    print(f"reaped after {took:.2f} s (node_ttl {dead.node_ttl}, heartbeat {dead.heartbeat})")
    await anyio.sleep(3 * dead.heartbeat)
    assert [ids for _, ids in gone] == [["b1", "b2"]], gone
    assert took <= dead.node_ttl + dead.heartbeat + 0.5
    assert await a.get_room_clients("general") == {"a1"}
    assert (await c.get_stats()).connections == 1
    assert "reaped its 2 clients" in caplog.text
    b._started = False  # its backend is gone; the fixture must not stop it again


async def test_redis_outage_local_delivery_continues_and_state_is_restored(
    redis_server: RedisServer, nodes: list[WebSocketManager], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, _ = nodes
    a1, a2 = await Client(a, "a1").connect(), await Client(a, "a2").connect()
    b1 = await Client(b, "b1").connect()
    for client in (a1, a2, b1):
        await client.manager.join_room(client.id, "general")

    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws.redis"):
        redis_server.stop()
        assert await a.broadcast_to_room("general", "during", exclude="a1") == 1  # local only
        await eventually(lambda: len(a2.events("during")) == 1, what="local delivery in outage")
        await a.join_room("a2", "side")  # written back after the outage
        stats = await a.get_stats()
        assert not stats.backend_healthy
        assert stats.backend_details["publish_failures"] >= 1
        assert stats.backend_details["scope"] == "local"
        assert stats.backend_details["last_error"]
        assert "redis publish failed" in caplog.text

        redis_server.start()  # empty: every node must write its membership back
        outage_end = time.monotonic()

        async def healthy() -> bool:
            return all([(await m.get_stats()).backend_healthy for m in (a, b)])

        await eventually(healthy, within=10, what="healthy again")
        resumed = time.monotonic() - outage_end
        print(f"healthy {resumed:.2f} s after redis came back")
    assert resumed < 5
    assert "resubscribed" in caplog.text
    assert await b.get_room_clients("general") == {"a1", "a2", "b1"}
    assert await b.get_room_clients("side") == {"a2"}
    assert (await a.get_stats()).backend_details["reconnects"] >= 1
    await a.broadcast_to_room("general", "after")
    await eventually(lambda: len(b1.events("after")) == 1, what="cross-node delivery resumed")
    assert b1.events("during") == [], "at most once: the outage's frame is lost for b1"


async def test_a_burst_of_joins_waits_for_the_connection_pool(
    nodes: list[WebSocketManager],
) -> None:
    # Far more concurrent commands than pooled connections: they wait, none fails.
    a = nodes[0]
    clients = [await Client(a, f"burst{i}").connect() for i in range(600)]
    await asyncio.gather(*(a.join_room(c.id, "big") for c in clients))
    assert len(await a.get_room_clients("big")) == 600
    stats = await a.get_stats()
    assert stats.backend_healthy
    assert stats.backend_details["publish_failures"] == 0
