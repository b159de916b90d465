"""Breaking the Redis backend's crash semantics and loss counting, as a user would.

Each test here shows a fault found by trying (see each ``reason``); they are marked
``xfail(strict=True)`` until the fault is fixed, so the fix turns them into plain passes.
In-process nodes are tests/test_redis_backend.py's ``FakeNode`` (the ``Node`` contract, its own
``RedisBackend``); the handler test runs real uvicorn nodes, as tests/test_redis_crash.py does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import Depends, FastAPI

from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    WebSocketManager,
    WebSocketRouter,
    get_manager,
)
from tests.redis_helpers import Node, RedisServer, eventually, peers_on, redis_call, wait_port
from tests.test_redis_backend import CHAT, FakeNode, crash, hold_heartbeats, stop_listening

pytestmark = [pytest.mark.redis, pytest.mark.anyio, pytest.mark.timeout(90)]


def frame(event: str, n: int | None = None) -> str:
    return json.dumps({"event": event, "payload": n})


class Nodes:
    def __init__(self, redis_server: RedisServer) -> None:
        self.redis = redis_server
        self.started: list[FakeNode] = []

    async def start(self, name: str, query: str = "node_ttl=1.5&heartbeat=0.3") -> FakeNode:
        node = FakeNode(name, f"{self.redis.url}?{query}")
        await node.backend.start(node)
        self.started.append(node)
        return node


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[Nodes]:
    made = Nodes(redis_server)
    try:
        yield made
    finally:
        for node in made.started:
            if node.backend._redis is not None:
                with anyio.fail_after(10):
                    await node.backend.stop()


# -- losses that are not counted ----------------------------------------------------------


async def test_send_to_client_while_redis_is_refilled_is_delivered_or_counted(
    nodes: Nodes, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await nodes.start("a"), await nodes.start("b")
    await a.connect("a1", CHAT, "lobby")
    await b.connect("b1", CHAT, "lobby")
    await eventually(lambda: json.loads(a.backend._peers).get("b") == 1, what="a knows b")
    hold_heartbeats(b, monkeypatch)  # b listens, but has not written its clients back yet
    beats = a.backend._beats
    await redis_call(redis_server.port, "FLUSHALL")
    await eventually(lambda: a.backend._beats >= beats + 2, within=10, what="a beats again")
    assert await redis_call(redis_server.port, "SMEMBERS", "orcs:nodes") == {"a"}
    # b listens, so the frame goes to every node and b delivers it to its own client.
    assert await a.backend.publish_client("b1", frame("dm"))
    await eventually(lambda: b.events("b1", "dm") == [None], what="dm at b1")
    assert (await a.backend.stats()).frames_lost == 0
    assert await a.backend.disconnect_client("b1", 4000, "bye")
    await eventually(lambda: "b1" in b.closed, what="b1 closed")


async def test_losses_after_an_empty_restart_count_a_peer_newer_than_the_last_sweep(
    nodes: Nodes, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = "node_ttl=30&heartbeat=10"  # sweeps 10 s apart, as node_ttl=30 has by default
    a = await nodes.start("a", slow)
    # a's beats at start (the first, and the one its subscription wakes): no peers yet.
    await eventually(lambda: a.backend._beats >= 2, what="a's start-up beats")
    b = await nodes.start("b", slow)
    await a.connect("a1", CHAT, "lobby")
    await b.connect("b1", CHAT, "lobby")  # b's client, after a's last sweep
    assert a.backend._beats == 2  # no sweep since: only b's own word tells a about b1
    await eventually(lambda: json.loads(a.backend._peers).get("b") == 1, what="a hears of b1")
    # Redis restarts empty: b has neither resubscribed nor written back yet.
    hold_heartbeats(b, monkeypatch)
    await stop_listening(b)
    await redis_call(redis_server.port, "FLUSHALL")
    await a.backend.publish_room("lobby", frame("m"), ())
    await a.backend.publish_all(frame("all"), ())
    stats = await a.backend.stats()
    assert b.frames == {}
    assert stats.frames_lost + stats.publish_failures >= 2, stats


async def test_a_killed_idle_connection_does_not_stop_cross_node_delivery(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    slow = "node_ttl=60&heartbeat=20"
    a, b = await nodes.start("a", slow), await nodes.start("b", slow)
    await eventually(lambda: a.backend._beats >= 2, what="a's start-up beats")
    await a.connect("a1", CHAT, "lobby")
    await b.connect("b1", CHAT, "lobby")
    await a.backend.publish_room("lobby", frame("warm"), ())  # a pooled connection exists
    await eventually(lambda: b.events("b1", "warm") == [None], what="warm-up frame")
    await redis_call(redis_server.port, "CLIENT", "KILL", "TYPE", "normal")
    killed = time.monotonic()
    late = []
    for n in range(30):  # 1.5 s, one frame every 50 ms
        await a.backend.publish_room("lobby", frame("t", n), ())
        if time.monotonic() - killed > 0.6:
            late.append(n)
        await anyio.sleep(0.05)
    # Redis answered all along: what a sent 0.6 s after one connection broke reaches b.
    await eventually(
        lambda: set(late) <= set(b.events("b1", "t")), what="the late frames reach b"
    )
    stats = await a.backend.stats()
    assert stats.healthy and stats.publish_failures <= 1  # at most the one on the dead socket


# -- crash semantics ----------------------------------------------------------------------


async def test_a_vanished_client_leaves_its_rooms_when_its_own_handler_returns(
    nodes: Nodes,
) -> None:
    a, b = await nodes.start("a"), await nodes.start("b")
    await a.connect("a1", CHAT, "lobby")
    await b.connect("x1", CHAT, "lobby")
    await b.connect("x2", CHAT, "lobby")
    release = asyncio.Event()

    async def on_gone(client_id: str) -> None:
        if client_id == "x2":  # x1's handler returns at once, x2's takes a while
            await asyncio.wait_for(release.wait(), 20)

    a.on_gone = on_gone
    await crash(b)
    await eventually(lambda: a.gone_ids() == ["x1", "x2"], within=10, what="both claimed")
    try:
        # x1's handler has returned: it must leave the lobby while x2's still runs.
        await eventually(
            lambda: _lobby_lacks(a, "x1"), within=3, what="x1 gone while x2's handler runs"
        )
    finally:
        release.set()


async def _lobby_lacks(node: FakeNode, client_id: str) -> bool:
    return client_id not in await node.backend.room_clients("lobby")


async def test_two_processes_starting_together_with_one_node_id_are_not_both_accepted(
    nodes: Nodes,
) -> None:
    query = "node_ttl=1.5&heartbeat=0.3"
    observer = await nodes.start("obs", query)
    await observer.connect("o1", CHAT, "lobby")
    twins = [FakeNode("x", f"{nodes.redis.url}?{query}") for _ in range(2)]
    results = await asyncio.gather(*(t.backend.start(t) for t in twins), return_exceptions=True)
    nodes.started += [t for t, r in zip(twins, results, strict=True) if r is None]
    refused = [r for r in results if isinstance(r, ConfigurationError)]
    # Exactly one is refused at start, with a message that says what to do.
    assert len(refused) == 1, results
    assert "in use by a live process" in str(refused[0])
    (running,) = [t for t, r in zip(twins, results, strict=True) if r is None]
    await running.connect("c1", CHAT, "lobby")
    await crash(running)
    await eventually(lambda: observer.gone_ids() == ["c1"], within=10, what="c1 reaped")


# -- real processes: when each vanished client's handler starts ---------------------------

router = WebSocketRouter()
slow_route = router.ws("/ws/slow")


@slow_route.on("connect")
async def _connect(ws: Connection) -> None:
    await ws.data.manager.join_room(ws.data.client_id, "lobby")
    await ws.send("welcome", {"clientId": ws.data.client_id})


@slow_route.on("disconnect")
async def _disconnect(ws: Connection, payload: dict[str, Any]) -> None:
    # A handler that takes 2 s (a database write, a webhook) for a vanished client.
    client_id = ws.data.client_id
    await ws.data.manager.broadcast_to_room(
        "lobby", "user-left", {"clientId": client_id}, exclude=[client_id]
    )
    if payload.get("code") == 1006:
        await asyncio.sleep(2)


app = FastAPI()
app.include_router(router)


@app.get("/stats")
async def _stats(manager: WebSocketManager = Depends(get_manager)) -> dict[str, Any]:
    return (await manager.get_stats()).model_dump()


NODE_TTL, HEARTBEAT = 3.0, 0.5


@pytest.fixture
def slow_nodes(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[Node]]:
    url = f"{redis_server.url}?node_ttl={NODE_TTL}&heartbeat={HEARTBEAT}"
    made = [Node(name, "tests.test_redis_breakers:app", url, tmp_path) for name in "ab"]
    try:
        for node in made:
            wait_port(node.port, 30)
        yield made
    finally:
        for node in made:
            node.stop()


async def test_every_vanished_handler_starts_within_the_bound(slow_nodes: list[Node]) -> None:
    a, b = slow_nodes
    async with peers_on([a, b, b, b, b], "/ws/slow", "clientId") as (pa, *vanished):
        b.kill9()
        killed = time.monotonic()
        started: dict[str, float] = {}

        def all_started() -> bool:
            for peer in vanished:
                if peer.id not in started and pa.count("user-left", clientId=peer.id):
                    started[peer.id] = round(time.monotonic() - killed, 2)
            return len(started) == len(vanished)

        await eventually(all_started, within=20, what="every handler started")
        print(f"vanished handlers started {sorted(started.values())} s after kill -9")
        assert max(started.values()) <= NODE_TTL + HEARTBEAT + 1.0, sorted(started.values())
