"""History and recovery across three real uvicorn nodes sharing a real redis-server.

A client leaves node A, misses 50 frames published from node C, and comes back on node B:
it gets the 50 in order, once, before live frames (which keep coming during its rejoin).
After the history window is exceeded, or after Redis restarted empty (a new epoch), it is
told ``recovered: false`` and nothing is replayed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from .redis_helpers import Node, Peer, RedisServer, eventually, start_nodes

pytestmark = pytest.mark.anyio

APP = "tests.recovery_cluster_app:app"


@pytest.fixture
def nodes(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[Node]]:
    url = redis_server.url + "?node_ttl=3&heartbeat=0.5"
    started = [Node(name, APP, url, tmp_path) for name in ("a", "b", "c")]
    try:
        start_nodes(started)
        yield started
    finally:
        for node in started:
            node.stop()


class Client:
    """A connected peer with a reader task."""

    def __init__(self, peer: Peer, task: asyncio.Task[None]) -> None:
        self.peer = peer
        self.task = task

    def numbered(self) -> list[dict[str, Any]]:
        return [f for f in self.peer.frames if f["event"] == "n"]


async def open_client(node: Node, stack: Any) -> Client:
    ws = await stack.enter_async_context(
        connect(node.ws_url("/ws"), compression=None, open_timeout=10, close_timeout=2)
    )
    peer = Peer(ws, node)
    task = asyncio.create_task(peer.read())
    await eventually(lambda: bool(peer.events("welcome")), within=10, what="welcome")
    peer.id = peer.events("welcome")[0]["clientId"]
    return Client(peer, task)


def before_ack(peer: Peer, msg_id: int) -> list[dict[str, Any]]:
    """The numbered frames the peer got before the ack of ``msg_id``."""
    out: list[dict[str, Any]] = []
    for frame in peer.frames:
        if frame["event"] == "ack" and frame.get("id") == msg_id:
            return out
        if frame["event"] == "n":
            out.append(frame)
    raise AssertionError(f"no ack {msg_id}")


async def test_recovery_across_nodes_with_live_frames_during_the_rejoin(
    nodes: list[Node],
) -> None:
    a, b, c = nodes
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        sender = await open_client(c, stack)
        await sender.peer.request("join", {"room": "r:x"}, 1)
        async with AsyncExitStack() as away_stack:
            away = await open_client(a, away_stack)
            joined = await away.peer.request("join", {"room": "r:x"}, 1)
            assert joined["recovered"] is False and joined["offset"] == 0
            await sender.peer.request("publish", {"room": "r:x", "count": 3}, 2)
            await eventually(lambda: len(away.numbered()) == 3, within=10, what="3 frames")
            last = away.numbered()[-1]
            assert [f["offset"] for f in away.numbered()] == [1, 2, 3]
            position = {"offset": last["offset"], "epoch": last["epoch"]}
            away.task.cancel()
        await sender.peer.request("publish", {"room": "r:x", "start": 3, "count": 50}, 3)

        # Live frames keep coming from node C while the client rejoins on node B.
        async def keep_publishing() -> None:
            for start in range(53, 93, 4):
                await sender.peer.request(
                    "publish", {"room": "r:x", "start": start, "count": 4}, 100 + start
                )

        back = await open_client(b, stack)
        publisher = asyncio.create_task(keep_publishing())
        ack = await back.peer.request("join", {"room": "r:x", "since": position}, 9)
        await publisher
        assert ack["recovered"] is True and ack["epoch"] == position["epoch"]
        replayed = before_ack(back.peer, 9)
        assert [f["payload"]["i"] for f in replayed[:50]] == list(range(3, 53))
        # Everything, once, in order: the 50 missed and the 40 live ones.
        await eventually(lambda: len(back.numbered()) >= 90, within=15, what="90 frames")
        frames = back.numbered()
        assert [f["payload"]["i"] for f in frames] == list(range(3, 93))
        assert [f["offset"] for f in frames] == list(range(4, 94))
        assert {f["epoch"] for f in frames} == {position["epoch"]}
        assert ack["offset"] >= 53


async def test_not_recovered_after_the_window_or_an_empty_redis_restart(
    nodes: list[Node], redis_server: RedisServer
) -> None:
    a, b, _ = nodes
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        one = await open_client(a, stack)
        await one.peer.request("join", {"room": "r:w"}, 1)
        await anyio.to_thread.run_sync(b.post, "/publish/r:w/0/2")
        await eventually(lambda: len(one.numbered()) == 2, within=10, what="2 frames")
        early = {"offset": 1, "epoch": one.numbered()[0]["epoch"]}
        # 150 more: the room keeps 100, so offset 1 is long gone.
        await anyio.to_thread.run_sync(b.post, "/publish/r:w/2/150")
        await eventually(lambda: len(one.numbered()) == 152, within=15, what="152 frames")
        newest = one.numbered()[-1]
        two = await open_client(b, stack)
        ack = await two.peer.request("join", {"room": "r:w", "since": early}, 2)
        assert ack == {"room": "r:w", "recovered": False, "offset": 152, "epoch": early["epoch"]}
        assert before_ack(two.peer, 2) == []

    # Redis restarts empty: the nodes write membership back, the history is gone.
    redis_server.restart()
    async with AsyncExitStack() as stack:
        three = await open_client(b, stack)
        position = {"offset": newest["offset"], "epoch": newest["epoch"]}

        async def rejoin() -> bool:
            try:
                ack = await three.peer.request("join", {"room": "r:w", "since": position}, 3)
            except AssertionError:
                return False
            assert ack["recovered"] is False
            assert ack["epoch"] != position["epoch"] and ack["offset"] == 0
            return True

        await eventually(rejoin, within=20, interval=0.5, what="a join after the restart")
        assert before_ack(three.peer, 3) == []


async def test_history_read_matches_what_clients_got(nodes: list[Node]) -> None:
    a, b, _ = nodes
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        one = await open_client(a, stack)
        await one.peer.request("join", {"room": "r:h"}, 1)
        await anyio.to_thread.run_sync(b.post, "/publish/r:h/0/5")
        await eventually(lambda: len(one.numbered()) == 5, within=10, what="5 frames")
        # A client that only missed the last two gets exactly those, as the others got them.
        two = await open_client(b, stack)
        got = one.numbered()
        since = {"offset": got[2]["offset"], "epoch": got[2]["epoch"]}
        ack = await two.peer.request("join", {"room": "r:h", "since": since}, 2)
        assert ack["recovered"] is True and ack["offset"] == 5
        assert before_ack(two.peer, 2) == got[3:]
        assert json.dumps(before_ack(two.peer, 2)) == json.dumps(got[3:])
