"""Three uvicorn processes of examples/chat_app sharing one private redis-server.

``ORCS_TEST_CLUSTER_APP=module:app`` runs the same scenarios against another app.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.redis_helpers import Node, Peer, RedisServer, eventually, start_nodes
from tests.redis_helpers import peers_on as _peers_on

pytestmark = [pytest.mark.redis, pytest.mark.anyio, pytest.mark.timeout(120)]

APP = os.environ.get("ORCS_TEST_CLUSTER_APP", "examples.chat_app.main:app")
NODE_TTL = 3.0
HEARTBEAT = 0.5


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[Node]]:
    url = f"{redis_server.url}?node_ttl={NODE_TTL}&heartbeat={HEARTBEAT}"
    nodes = [Node(f"node{i}", APP, url, tmp_path) for i in range(3)]
    try:
        start_nodes(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@asynccontextmanager
async def peers_on(nodes: list[Node]) -> AsyncIterator[list[Peer]]:
    """One chat client per entry of ``nodes``, each welcomed, in that order."""
    async with _peers_on(nodes, "/ws/chat", "clientId") as peers:
        yield peers


async def stats(node: Node) -> dict[str, Any]:
    return await node.stats()


# -- 1. the chat scenarios across three processes -----------------------------------------


async def test_chat_scenarios_across_three_nodes(cluster: list[Node]) -> None:
    async with peers_on(cluster) as peers:
        a, b, c = peers
        # user-joined reaches the earlier clients on the other nodes.
        await eventually(lambda: a.count("user-joined", clientId=b.id) == 1, what="a sees b")
        await eventually(lambda: a.count("user-joined", clientId=c.id) == 1, what="a sees c")
        await eventually(lambda: b.count("user-joined", clientId=c.id) == 1, what="b sees c")

        await b.send("message", {"text": "hello from node 1"})
        for peer in peers:  # the sender too
            await eventually(lambda p=peer: len(p.events("message")) == 1, what="message")  # type: ignore[misc]
            assert peer.events("message")[0]["from"] == b.id
            assert peer.events("message")[0]["text"] == "hello from node 1"

        await c.send("typing", {})
        await eventually(lambda: a.count("user-typing", clientId=c.id) == 1, what="a typing")
        await eventually(lambda: b.count("user-typing", clientId=c.id) == 1, what="b typing")

        # A room of two, on nodes 0 and 2: node 1's client gets none of it.
        await a.send("join", {"room": "blue"}, id=1)
        await eventually(lambda: bool(a.events("ack")), what="a joined blue")
        await c.send("join", {"room": "blue"})
        await eventually(
            lambda: a.count("user-joined", clientId=c.id) == 2, what="a sees c in blue"
        )
        await a.send("message", {"room": "blue", "text": "blue only"})
        await eventually(lambda: len(c.events("message")) == 2, what="c gets the blue message")
        await eventually(lambda: len(a.events("message")) == 2, what="a gets its own message")

        for node in cluster:  # cluster-wide counts, from every node
            s = await stats(node)
            assert (s["connections"], s["rooms"], s["averageRoomSize"]) == (3, 2, 2.5), s
            assert s["backend"] == "redis" and s["backendHealthy"] is True

        await b.ws.close()
        for peer in (a, c):
            await eventually(lambda p=peer: p.count("user-left", clientId=b.id) == 1, what="left")  # type: ignore[misc]
        await anyio.sleep(0.5)
        assert c.events("user-typing") == [], "typing must exclude the sender"
        assert b.events("message")[1:] == [], "node 1 got a room it has no member in"
        assert [p.count("user-left", clientId=b.id) for p in (a, c)] == [1, 1]
        for node in cluster:
            assert (await stats(node))["connections"] == 2


# -- 2. Redis restarted mid-run (kill -9 of a node: tests/test_redis_crash.py) ------------


async def test_redis_restart_is_survived(cluster: list[Node], redis_server: RedisServer) -> None:
    async with peers_on(cluster) as peers:
        a, b, c = peers
        await a.send("message", {"text": "before"})
        await eventually(lambda: all(len(p.events("message")) == 1 for p in peers), what="before")

        redis_server.stop()
        await a.send("message", {"text": "during"})
        await eventually(lambda: len(a.events("message")) == 2, what="local delivery in outage")

        async def outage_visible() -> bool:
            s = await stats(cluster[0])
            return s["backendHealthy"] is False and s["backendDetails"]["publish_failures"] >= 1

        await eventually(outage_visible, within=5, what="outage in /stats")
        s = await stats(cluster[0])
        assert s["backendDetails"]["last_error"], s
        warning = "WARNING fastapi_orcs_ws.redis: redis: other nodes' clients missed frames"
        assert warning in cluster[0].log()

        redis_server.start()
        back = time.monotonic()
        probes = 0

        async def crossed() -> bool:
            nonlocal probes
            probes += 1
            await a.send("message", {"text": f"probe {probes}"})
            await anyio.sleep(0.2)
            return all(
                any(m["text"].startswith("probe") for m in p.events("message")) for p in (b, c)
            )

        await eventually(crossed, within=15, interval=0.1, what="cross-node delivery resumed")
        resumed = time.monotonic() - back
        print(f"redis restart: cross-node broadcasts resumed {resumed:.2f} s after it came back")
        assert resumed < 10

        async def healthy_everywhere() -> bool:
            counts = [await stats(n) for n in cluster]
            return all(s["backendHealthy"] and s["connections"] == 3 for s in counts)

        await eventually(healthy_everywhere, within=10, what="membership rewritten")
        assert not any(m["text"] == "during" for p in (b, c) for m in p.events("message"))
        assert "resubscribed" in cluster[1].log()
