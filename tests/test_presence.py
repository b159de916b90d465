"""Presence and per-user delivery: in one process on a real uvicorn, and across three
uvicorn nodes sharing a real redis-server (including a node killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from fastapi_orcs_ws.testing import mint_token, serve

from .recovery_cluster_app import SECRET, build
from .redis_helpers import Node, Peer, RedisServer, eventually, start_nodes

pytestmark = pytest.mark.anyio


async def open_peer(url: str, stack: AsyncExitStack, node: Any = None) -> Peer:
    ws = await stack.enter_async_context(
        connect(url, compression=None, open_timeout=10, close_timeout=2)
    )
    peer = Peer(ws, node)
    task = asyncio.create_task(peer.read())
    stack.callback(task.cancel)
    await eventually(lambda: bool(peer.events("welcome")), within=10, what="welcome")
    peer.id = peer.events("welcome")[0]["clientId"]
    return peer


def http(base: str, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(base + path, method=method)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def token(user: str, name: str) -> str:
    return mint_token(user, secret=SECRET, name=name)


async def test_presence_lists_and_events_in_one_process() -> None:
    with serve(build()) as live:
        base = live.http_url
        async with AsyncExitStack() as stack:
            watcher = await open_peer(live.ws_url("/ws"), stack)
            await watcher.request("join", {"room": "r:p"}, 1)
            alice = await open_peer(live.ws_url("/ws?token=" + token("alice", "Alice")), stack)
            await alice.request("join", {"room": "r:p"}, 1)
            alice2 = await open_peer(live.ws_url("/ws?token=" + token("alice", "Alice")), stack)
            await alice2.request("join", {"room": "r:p"}, 1)
            await eventually(lambda: watcher.count("presence-join") == 2, what="2 joins")
            assert watcher.events("presence-join")[0] == {
                "room": "r:p",
                "clientId": alice.id,
                "user": {"id": "alice", "name": "Alice"},
            }
            presence = await anyio.to_thread.run_sync(http, base, "/rooms/r:p/presence")
            assert presence["users"] == 1 and presence["connections"] == 3
            assert sorted(c["clientId"] for c in presence["clients"]) == sorted(
                [watcher.id, alice.id, alice2.id]
            )
            users = {c["clientId"]: c["user"] for c in presence["clients"]}
            assert users[watcher.id] is None
            assert users[alice2.id] == {"id": "alice", "name": "Alice"}
            # Per-user delivery reaches both of alice's sockets, nobody else.
            sent = await anyio.to_thread.run_sync(http, base, "/users/alice/hi", "POST")
            assert sent == {"sent": 2, "clients": sorted([alice.id, alice2.id])}
            await eventually(
                lambda: alice.events("note") == alice2.events("note") == [{"text": "hi"}]
            )
            assert watcher.events("note") == []
            # A leave and a disconnect: one presence-leave each.
            await alice.request("leave", {"room": "r:p"}, 2)
            await alice2.ws.close()
            await eventually(lambda: watcher.count("presence-leave") == 2, what="2 leaves")
            left = [p["clientId"] for p in watcher.events("presence-leave")]
            assert left == [alice.id, alice2.id]
            presence = await anyio.to_thread.run_sync(http, base, "/rooms/r:p/presence")
            assert [c["clientId"] for c in presence["clients"]] == [watcher.id]
            assert presence["users"] == 0


async def test_user_presence_events_only_on_first_join_and_last_leave() -> None:
    with serve(build()) as live:
        async with AsyncExitStack() as stack:
            watcher = await open_peer(live.ws_url("/ws"), stack)
            await watcher.request("join", {"room": "u:1"}, 1)
            bob = await open_peer(live.ws_url("/ws?token=" + token("bob", "Bob")), stack)
            await bob.request("join", {"room": "u:1"}, 1)
            bob2 = await open_peer(live.ws_url("/ws?token=" + token("bob", "Bob")), stack)
            await bob2.request("join", {"room": "u:1"}, 1)
            await bob.request("leave", {"room": "u:1"}, 2)
            await bob2.request("leave", {"room": "u:1"}, 2)
            await eventually(lambda: watcher.count("presence-leave") == 1, what="bob's leave")
            # Acked in order on one socket each: had more been sent, they would be here now.
            await watcher.request("join", {"room": "u:1"}, 3)
            assert [p["clientId"] for p in watcher.events("presence-join")] == [bob.id]
            assert [p["clientId"] for p in watcher.events("presence-leave")] == [bob2.id]


@pytest.fixture
def nodes(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[Node]]:
    url = redis_server.url + "?node_ttl=3&heartbeat=0.5"
    started = [Node(name, "tests.recovery_cluster_app:app", url, tmp_path) for name in "abc"]
    try:
        start_nodes(started)
        yield started
    finally:
        for node in started:
            node.stop()


async def test_presence_across_nodes_and_after_kill_9(nodes: list[Node]) -> None:
    a, b, c = nodes
    async with AsyncExitStack() as stack:
        on_a = await open_peer(a.ws_url("/ws"), stack, a)
        await on_a.request("join", {"room": "r:q"}, 1)
        on_b = await open_peer(b.ws_url("/ws?token=" + token("carol", "Carol")), stack, b)
        await on_b.request("join", {"room": "r:q"}, 1)
        async with AsyncExitStack() as doomed:
            on_c = await open_peer(c.ws_url("/ws?token=" + token("carol", "Carol")), doomed, c)
            await on_c.request("join", {"room": "r:q"}, 1)
            await eventually(lambda: on_a.count("presence-join") == 2, what="joins on a")
            await eventually(lambda: on_b.count("presence-join") == 1, what="join on b")
            for node in nodes:
                presence = await anyio.to_thread.run_sync(node.get, "/rooms/r:q/presence")
                assert presence["connections"] == 3 and presence["users"] == 1
                assert sorted(x["clientId"] for x in presence["clients"]) == sorted(
                    [on_a.id, on_b.id, on_c.id]
                )
            sent = await anyio.to_thread.run_sync(a.post, "/users/carol/hey")
            assert sent["clients"] == sorted([on_b.id, on_c.id]) and sent["sent"] == 0
            await eventually(
                lambda: on_b.events("note") == on_c.events("note") == [{"text": "hey"}]
            )
            c.kill9()
        # The survivors hand node c's client over and announce its leave, once.
        await eventually(
            lambda: on_a.count("presence-leave", clientId=on_c.id) == 1, within=20, what="leave"
        )
        await eventually(lambda: on_b.count("presence-leave", clientId=on_c.id) == 1)
        presence = await anyio.to_thread.run_sync(a.get, "/rooms/r:q/presence")
        assert sorted(x["clientId"] for x in presence["clients"]) == sorted([on_a.id, on_b.id])
        # Still once after the survivors' next round trips.
        await on_a.request("join", {"room": "r:q"}, 5)
        await on_b.request("join", {"room": "r:q"}, 5)
        assert on_a.count("presence-leave", clientId=on_c.id) == 1
        assert on_b.count("presence-leave", clientId=on_c.id) == 1
