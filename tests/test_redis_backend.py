"""The Redis backend against a real redis-server, with several nodes in one process.

A node here is a :class:`FakeNode` (the ``Node`` contract the manager implements, recording
what it is asked to deliver) with its own :class:`RedisBackend`; a crash is simulated by
stopping a backend's tasks and closing its connections without any clean-up, as ``kill -9``
would. Real processes are killed in tests/test_redis_crash.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from enum import StrEnum
from typing import Any

import anyio
import pytest

from fastapi_orcs_ws import BackendError, ConfigurationError, WebSocketManager
from fastapi_orcs_ws.backends import backend_from_url
from fastapi_orcs_ws.backends import redis as redis_backend
from fastapi_orcs_ws.backends.redis import RedisBackend
from tests.redis_helpers import RedisServer, eventually, redis_call

pytestmark = [pytest.mark.redis, pytest.mark.anyio, pytest.mark.timeout(60)]

FAST = "node_ttl=1.5&heartbeat=0.3"
CHAT = "/ws/chat"


class FakeNode:
    """A process holding clients: records frames, closes and vanished clients it is given."""

    max_payload_length = 65536

    def __init__(self, name: str, url: str, routes: Iterable[str] = (CHAT,)) -> None:
        self.name = name
        self.routes = list(routes)
        self.backend = RedisBackend(f"{url}&node_id={name}")
        self.local: set[str] = set()
        self.frames: dict[str, list[Any]] = defaultdict(list)
        self.closed: dict[str, tuple[int, str]] = {}
        self.gone: list[tuple[str, dict[str, Any]]] = []
        self.during_gone: list[tuple[set[str], set[str], int]] = []
        self.on_gone: Callable[[str], Awaitable[None]] | None = None

    # -- the Node contract ---------------------------------------------------------------

    def deliver_local(
        self, frame: str, client_ids: Iterable[str] | None, exclude: Collection[str]
    ) -> int:
        targets = list(self.local) if client_ids is None else list(client_ids)
        sent = 0
        for client_id in targets:
            if client_id in self.local and client_id not in exclude:
                self.frames[client_id].append(json.loads(frame))
                sent += 1
        return sent

    async def close_local(self, client_id: str, code: int, reason: str) -> bool:
        if client_id not in self.local:
            return False
        self.closed[client_id] = (code, reason)
        return True

    async def close_user_local(self, user_id: str, code: int, reason: str) -> int:
        return 0  # no client here is authenticated

    def served_routes(self) -> Collection[str]:
        return self.routes

    async def clients_gone(self, clients: Mapping[str, Mapping[str, Any]]) -> None:
        for client_id, info in sorted(clients.items()):
            # What a disconnect handler would query, while it runs.
            rooms = await self.backend.client_rooms(client_id)
            lobby = await self.backend.room_clients("lobby")
            connections = (await self.backend.stats()).connections
            self.during_gone.append((rooms, lobby, connections))
            self.gone.append((client_id, dict(info)))
            if self.on_gone is not None:
                await self.on_gone(client_id)

    # -- test helpers --------------------------------------------------------------------

    async def connect(self, client_id: str, route: str = CHAT, *rooms: str) -> str:
        self.local.add(client_id)
        await self.backend.add_client(client_id, {"route": route} if route else None)
        for room in rooms:
            assert await self.backend.join(client_id, room)
        return client_id

    async def disconnect(self, client_id: str) -> None:
        await self.backend.client_closing(client_id)
        self.local.discard(client_id)
        await self.backend.remove_client(client_id)

    def events(self, client_id: str, name: str) -> list[Any]:
        return [f["payload"] for f in self.frames[client_id] if f["event"] == name]

    def gone_ids(self) -> list[str]:
        return sorted(client_id for client_id, _ in self.gone)


class Cluster:
    def __init__(self, url: str) -> None:
        self.url = f"{url}?{FAST}"
        self.nodes: list[FakeNode] = []

    async def node(self, name: str, routes: Iterable[str] = (CHAT,)) -> FakeNode:
        node = FakeNode(name, self.url, routes)
        await node.backend.start(node)
        self.nodes.append(node)
        return node

    def gone_everywhere(self) -> list[str]:
        return sorted(cid for node in self.nodes for cid, _ in node.gone)


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    made = Cluster(redis_server.url)
    try:
        yield made
    finally:
        for node in made.nodes:
            with anyio.fail_after(10):
                await node.backend.stop()


async def crash(node: FakeNode) -> None:
    """``kill -9``: the node's tasks stop mid-way and nothing is cleaned up in Redis."""
    backend = node.backend
    backend._stopping = True
    tasks = [*backend._tasks, *backend._spawned]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5)
    assert backend._redis is not None
    await backend._redis.aclose()
    backend._redis = None
    backend._tasks.clear()


def reap_within(node: FakeNode) -> float:
    return node.backend.node_ttl + 4 * node.backend.heartbeat


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


# -- membership and delivery --------------------------------------------------------------


async def test_membership_and_stats_are_cluster_wide(cluster: Cluster) -> None:
    a, b, c = [await cluster.node(n) for n in "abc"]
    await a.connect("a1", CHAT, "general")
    await b.connect("b1", CHAT, "general")
    await b.connect("b2", CHAT, "other")
    for node in (a, b, c):
        assert await node.backend.room_clients("general") == {"a1", "b1"}
        assert await node.backend.client_rooms("b1") == {"general"}
        stats = await node.backend.stats()
        assert (stats.connections, stats.rooms, stats.memberships) == (3, 2, 3)
        assert stats.healthy
    assert await c.backend.has_client("a1") and not await c.backend.has_client("zz")

    assert await a.backend.leave("a1", "general")
    await b.disconnect("b1")
    assert await c.backend.room_clients("general") == set()
    stats = await c.backend.stats()
    assert (stats.connections, stats.rooms) == (2, 1)


async def test_join_and_leave_for_a_client_on_another_node(cluster: Cluster) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await b.connect("b1")
    assert await a.backend.join("b1", "blue")
    assert not await a.backend.join("nobody", "blue")
    assert await b.backend.client_rooms("b1") == {"blue"}
    # The owner learns of the join: a frame from the owner itself reaches b1.
    await eventually(lambda: "b1" in b.backend._index.rooms.get("blue", {}), what="owner view")
    await b.backend.publish_room("blue", '{"event":"hello","payload":null}', ())
    assert b.events("b1", "hello") == [None]
    assert await a.backend.leave("b1", "blue")
    assert not await a.backend.leave("b1", "blue")
    await eventually(lambda: "blue" not in b.backend._index.rooms, what="owner view after leave")
    assert await b.backend.client_rooms("b1") == set()


def frame(event: str, payload: Any = None) -> str:
    return json.dumps({"event": event, "payload": payload})


async def test_room_frames_reach_each_member_once_and_only_their_nodes(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = [await cluster.node(n) for n in "abc"]
    await a.connect("a1", CHAT, "room")
    await a.connect("a2", CHAT, "room")
    await b.connect("b1", CHAT, "room")
    await c.connect("c1", CHAT, "elsewhere")
    seen_by_c: list[str] = []
    original = c.backend._handle
    monkeypatch.setattr(c.backend, "_handle", lambda data: (seen_by_c.append(data), original(data)))

    assert await a.backend.publish_room("room", frame("m", 1), ("a2",)) == 2
    assert await c.backend.publish_room("room", frame("m", 2), ()) == 3
    await eventually(lambda: len(b.events("b1", "m")) == 2, what="b1 gets both")
    # A marker sent after them on every channel: once it is in, nothing else is on its way.
    await c.backend.publish_all(frame("marker"), ())
    await eventually(lambda: bool(a.events("a1", "marker") and b.events("b1", "marker")))
    assert a.events("a1", "m") == [1, 2]
    assert a.events("a2", "m") == [2]
    assert b.events("b1", "m") == [1, 2]
    assert c.events("c1", "m") == []
    assert [d for d in seen_by_c if '"k":"room"' in d] == [], "c got a room it has no member in"


async def test_broadcast_to_everyone_and_direct_sends(cluster: Cluster) -> None:
    a, b, c = [await cluster.node(n) for n in "abc"]
    for node in (a, b, c):
        await node.connect(node.name + "1")
    assert await b.backend.publish_all(frame("news", 1), ("a1",)) == 2
    await eventually(lambda: bool(c.events("c1", "news") and b.events("b1", "news")))
    assert await a.backend.publish_client("c1", frame("dm", 1))
    assert await c.backend.publish_client("c1", frame("dm", 2))
    assert not await a.backend.publish_client("nobody", frame("dm", 3))
    await eventually(lambda: sorted(c.events("c1", "dm")) == [1, 2], what="direct sends")
    await a.backend.publish_all(frame("marker"), ())
    await eventually(lambda: bool(a.events("a1", "marker")), what="marker")
    assert a.events("a1", "news") == [] and a.events("a1", "dm") == []


async def test_disconnect_a_client_on_another_node(cluster: Cluster) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await b.connect("b1")
    assert await a.backend.disconnect_client("b1", 4403, "kicked")
    assert not await a.backend.disconnect_client("nobody", 1000, "")
    await eventually(lambda: b.closed.get("b1") == (4403, "kicked"), what="remote close")


async def test_worker_without_sockets_publishes(
    redis_server: RedisServer, cluster: Cluster
) -> None:
    a = await cluster.node("a")
    await a.connect("a1", CHAT, "jobs")
    async with WebSocketManager(backend=redis_server.url) as worker:
        assert await worker.broadcast_to_room("jobs", "done", {"job": 7}) == 1
        assert await worker.send_to_client("a1", "dm", "for you")
        assert (await worker.get_stats()).connections == 1
        assert worker.served_routes() == []
    await eventually(lambda: a.events("a1", "done") == [{"job": 7}] and bool(a.events("a1", "dm")))


async def test_payload_limit_is_enforced_before_publishing(redis_server: RedisServer) -> None:
    async with WebSocketManager(backend=redis_server.url, max_payload_length=1000) as small:
        with pytest.raises(BackendError, match="exceeds 1000 bytes"):
            await small.broadcast_to_room("room", "big", "é" * 600)
        assert await small.broadcast_to_room("room", "fine", "x" * 900) == 0
    async with WebSocketManager(backend=f"{redis_server.url}?max_frame=50") as tiny:
        with pytest.raises(BackendError):
            await tiny.send_to_client("x", "big", "x" * 60)


async def test_a_message_of_an_unknown_version_is_dropped_counted_and_logged(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await b.connect("b1", CHAT, "r")
    redis = a.backend._redis
    assert redis is not None
    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws.redis"):
        await redis.publish("orcs:node:b", json.dumps({"v": 99, "k": "room", "r": "r"}) + "\n{}")
        good = '{"v":1,"k":"room","o":"t","r":"r","x":[]}\n' + frame("x")
        await redis.publish("orcs:node:b", good)
        await eventually(lambda: len(b.events("b1", "x")) == 1, what="v1 message")
    assert "version 99" in caplog.text
    stats = await b.backend.stats()
    assert stats.frames_lost == 1


# -- item 4: one rule for room ids --------------------------------------------------------


class Lobby(StrEnum):
    MAIN = "main"


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_room_and_client_ids_are_strings_on_every_backend(
    redis_server: RedisServer, backend: str
) -> None:
    url = redis_server.url if backend == "redis" else "memory://"
    async with WebSocketManager(backend=url) as manager:
        await manager.backend.add_client("c1")
        for call in (
            lambda: manager.join_room("c1", 42),  # type: ignore[arg-type]
            lambda: manager.leave_room("c1", 42),  # type: ignore[arg-type]
            lambda: manager.get_room_clients(42),  # type: ignore[arg-type]
            lambda: manager.broadcast_to_room(42, "x"),  # type: ignore[arg-type]
        ):
            with pytest.raises(TypeError, match=r"room ids are str, not int \(42\)"):
                await call()
        with pytest.raises(TypeError, match=r"client ids are str, not int \(7\)"):
            await manager.get_client_rooms(7)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="client ids are str"):
            await manager.join_room(b"c1", "main")  # type: ignore[arg-type]
        # A str subclass is its value: the same room as "main", read back as a plain str.
        assert await manager.join_room("c1", Lobby.MAIN)
        assert await manager.get_room_clients("main") == {"c1"}
        rooms = await manager.get_client_rooms("c1")
        assert rooms == {"main"} and all(type(r) is str for r in rooms)
        assert await manager.leave_room("c1", "main")


# -- items 1 and 2: who runs a vanished client's disconnect logic, and what it sees ----------


async def test_vanished_clients_go_only_to_a_node_that_serves_their_route(
    cluster: Cluster,
) -> None:
    a = await cluster.node("a")
    workers = [await cluster.node(f"w{i}", routes=()) for i in range(2)]
    b = await cluster.node("b", routes=(CHAT, "/ws/admin"))
    await b.connect("b1", CHAT, "lobby", "games")
    await b.connect("b2", CHAT, "lobby")
    await b.connect("b3", "/ws/admin", "staff")  # no live node serves it after b dies

    await crash(b)
    await eventually(
        lambda: len(cluster.gone_everywhere()) == 3, within=reap_within(b), what="claimed"
    )
    await eventually(lambda: all(not n.backend._claims for n in cluster.nodes), what="finished")
    chat = [cid for n in cluster.nodes for cid, info in n.gone if info["route"] == CHAT]
    assert sorted(chat) == a.gone_ids()[:2] == ["b1", "b2"], "only a serves /ws/chat"
    assert all(info["route"] != CHAT for w in workers for _, info in w.gone)
    # Nobody can run /ws/admin's handler: one node removes b3 anyway, and counts it.
    orphans = [n for n in cluster.nodes if "b3" in n.gone_ids()]
    assert len(orphans) == 1
    assert orphans[0].backend._orphaned == 1
    stats = await a.backend.stats()
    assert (stats.connections, stats.rooms, stats.memberships) == (0, 0, 0)
    assert stats.details["claimed_clients"] == 2 + (orphans[0] is a)
    assert sum(n.backend._reaped for n in cluster.nodes if n is not b) == 1
    assert cluster.gone_everywhere() == ["b1", "b2", "b3"], "each exactly once"


async def test_membership_stays_while_the_vanished_handler_runs_and_goes_after(
    cluster: Cluster,
) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await a.connect("a1", CHAT, "lobby")
    await b.connect("b1", CHAT, "lobby", "games")
    await b.connect("b2", CHAT, "lobby")

    async def failing_handler(client_id: str) -> None:
        if client_id == "b2":
            raise RuntimeError("a disconnect handler that fails")

    a.on_gone = failing_handler
    await crash(b)
    await eventually(lambda: len(a.gone) == 2, within=reap_within(b), what="claimed")
    await eventually(lambda: not a.backend._claims, what="finished")
    during = dict(zip([cid for cid, _ in a.gone], a.during_gone, strict=True))
    # As during a clean close: its rooms, its room's members (itself included), counted.
    # (The handlers run side by side: b2's, which fails at once, may be over and b2 gone.)
    rooms, lobby, connections = during["b1"]
    assert rooms == {"games", "lobby"} and {"a1", "b1"} <= lobby <= {"a1", "b1", "b2"}
    # a1 and b1 itself are counted; b2 may leave between the handler's queries.
    assert 2 <= connections <= 3
    assert during["b2"][0] == {"lobby"} and {"a1", "b2"} <= during["b2"][1]
    # After the handler (even one that failed): gone from every room and from the stats.
    assert await a.backend.room_clients("lobby") == {"a1"}
    assert await a.backend.client_rooms("b2") == set()
    stats = await a.backend.stats()
    assert (stats.connections, stats.rooms, stats.memberships) == (1, 1, 1)


async def test_a_claimer_that_dies_in_the_handler_is_not_replaced_by_a_second_run(
    cluster: Cluster,
) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await b.connect("b1", CHAT, "lobby")
    started = asyncio.Event()

    async def hang(client_id: str) -> None:
        started.set()
        await asyncio.Event().wait()

    a.on_gone = hang
    c = await cluster.node("c", routes=())  # the survivor that reaps a, serving nothing
    await crash(b)
    with anyio.fail_after(reap_within(b) + 2):
        await started.wait()  # only a serves the route: a claimed b1
    await crash(a)
    await eventually(
        lambda: c.backend._not_rerun == 1, within=reap_within(a), what="a's claim reaped"
    )
    await eventually(lambda: not c.backend._claims, what="finished")
    assert a.gone_ids() == ["b1"] and c.gone == []
    stats = await c.backend.stats()
    assert (stats.connections, stats.rooms) == (0, 0)


async def test_a_client_closing_on_a_node_that_dies_is_removed_without_a_second_run(
    cluster: Cluster,
) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await b.connect("b1", CHAT, "lobby")
    await b.connect("b2", CHAT, "lobby")
    await b.backend.client_closing("b1")  # its disconnect handler is running on b...
    await crash(b)  # ...when b dies
    await eventually(lambda: a.backend._not_rerun == 1, within=reap_within(b), what="reaped")
    await eventually(lambda: a.gone_ids() == ["b2"] and not a.backend._claims, what="done")
    assert await a.backend.room_clients("lobby") == set()


async def test_a_node_restarting_with_its_id_hands_its_previous_clients_over(
    cluster: Cluster,
) -> None:
    a = await cluster.node("a")
    b = await cluster.node("b")
    await b.connect("b1", CHAT, "lobby", "games")
    await b.connect("b2", CHAT, "lobby")
    await b.backend.client_closing("b2")
    await crash(b)
    again = await cluster.node("b")  # at once, before node_ttl: its heartbeat never lapses
    await again.connect("b3", CHAT, "lobby")
    await eventually(
        lambda: cluster.gone_everywhere() == ["b1"], within=reap_within(b), what="handed over"
    )
    await eventually(lambda: not (a.backend._claims or again.backend._claims), what="finished")
    assert await a.backend.room_clients("lobby") == {"b3"}
    stats = await a.backend.stats()
    assert (stats.connections, stats.rooms, stats.memberships) == (1, 1, 1)
    assert a.backend._not_rerun + again.backend._not_rerun == 1, "b2 had started closing"


async def test_a_node_id_in_use_by_a_live_process_is_refused_at_start(cluster: Cluster) -> None:
    # One URL with node_id for `uvicorn --workers 2`: the second process must not start.
    await cluster.node("web-1")
    twin = FakeNode("web-1", cluster.url)
    with pytest.raises(ConfigurationError, match=r"node_id='web-1' is in use by a live process"):
        await twin.backend.start(twin)


async def test_stop_hands_unclosed_clients_over_and_removes_closing_ones(
    cluster: Cluster,
) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await b.connect("b1", CHAT, "lobby")
    await b.connect("b2", CHAT, "lobby")
    await b.backend.client_closing("b2")
    cluster.nodes.remove(b)
    await b.backend.stop()
    await eventually(lambda: a.gone_ids() == ["b1"] and not a.backend._claims, what="handed")
    assert a.backend._not_rerun == 1
    assert await a.backend.room_clients("lobby") == set()
    assert a.backend._reaped == 0, "a clean stop is not a death"


async def test_stop_returns_at_once_even_when_a_cancellation_is_swallowed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py can turn a cancellation into a timeout; with a 20 s heartbeat a loop that
    # checked for it only after its next wait would hold stop() for its whole 5 s grace.
    node = FakeNode("n", f"{redis_server.url}?node_ttl=60&heartbeat=20")
    await node.backend.start(node)
    original = node.backend._beat
    entered = asyncio.Event()

    async def swallowing_beat() -> None:
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return  # swallowed, as redis-py may do
        await original()

    monkeypatch.setattr(node.backend, "_beat", swallowing_beat)
    node.backend._wake.set()
    await entered.wait()
    heartbeat = node.backend._tasks[1]
    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws.redis"):
        await node.backend.stop()
    assert heartbeat.done()
    assert "did not stop" not in caplog.text


# -- item 3: losses counted ----------------------------------------------------------------


async def test_frames_for_a_node_that_is_not_listening_are_counted(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await a.connect("a1", CHAT, "lobby")
    await b.connect("b1", CHAT, "lobby")
    await b.connect("b2", CHAT, "lobby")
    listener = b.backend._tasks[0]
    listener.cancel()  # b's subscription is down (it is alive: its heartbeat goes on)
    await asyncio.wait([listener], timeout=5)
    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws.redis"):
        assert await a.backend.publish_room("lobby", frame("m"), ()) == 3
        assert await a.backend.publish_all(frame("all"), ()) == 3
        assert not await a.backend.publish_client("b1", frame("dm"))
    stats = await a.backend.stats()
    assert (stats.frames_lost, stats.publish_failures) == (2 + 2 + 1, 0)
    assert a.events("a1", "m") == [None] and a.events("a1", "all") == [None]
    assert b.frames == {}
    assert "lost frames" in caplog.text


def hold_heartbeats(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's heartbeat script never completes: Redis does not hear from it again."""
    original = node.backend._run

    async def holding(script: str, *args: str) -> Any:
        if script == "heartbeat":
            await asyncio.Event().wait()  # cancelled when the backend stops
        return await original(script, *args)

    monkeypatch.setattr(node.backend, "_run", holding)


async def stop_listening(node: FakeNode) -> None:
    listener = node.backend._tasks[0]
    listener.cancel()  # its subscription is down (the node itself is alive)
    await asyncio.wait([listener], timeout=5)
    channel = node.backend.prefix + "node:" + node.name

    async def unsubscribed() -> bool:
        assert node.backend._redis is not None
        return int((await node.backend._redis.pubsub_numsub(channel))[0][1]) == 0

    await eventually(unsubscribed, what="the subscription gone")


async def test_after_redis_lost_its_data_frames_reach_peers_or_are_counted(
    redis_server: RedisServer, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis forgot every node (FLUSHALL: an empty restart without a connection drop) and no
    node has beaten since: room routing is empty, so the sender's own absence from the node
    set is what tells it that routing is incomplete. Frames go to every node; those for a
    peer the sender knew that is not listening are counted as lost."""
    a, b = await cluster.node("a"), await cluster.node("b")
    await a.connect("a1", CHAT, "lobby")
    await b.connect("b1", CHAT, "lobby")
    await b.connect("b2", CHAT, "lobby")
    await eventually(lambda: json.loads(a.backend._peers).get("b") == 2, what="a knows b")
    hold_heartbeats(a, monkeypatch)
    hold_heartbeats(b, monkeypatch)
    await redis_call(redis_server.port, "FLUSHALL")
    await a.backend.publish_room("lobby", frame("m"), ())
    await eventually(lambda: b.events("b1", "m") == [None] == b.events("b2", "m"), what="m at b")
    assert a.events("a1", "m") == [None]
    assert (await a.backend.stats()).frames_lost == 0
    await stop_listening(b)
    # Redis no longer knows which of b's clients are in the room: at least one is counted.
    await a.backend.publish_room("lobby", frame("n"), ())
    assert (await a.backend.stats()).frames_lost == 1
    await a.backend.publish_all(frame("all"), ())  # b's two clients, as a knew them
    assert (await a.backend.stats()).frames_lost == 1 + 2
    assert not await a.backend.publish_client("b1", frame("dm"))
    assert (await a.backend.stats()).frames_lost == 1 + 2 + 1  # its owner is unknown
    with pytest.raises(BackendError, match="call disconnect_user again"):
        await a.backend.disconnect_user("alice", 4401, "revoked")
    assert b.events("b1", "n") == []


async def test_peers_known_before_redis_lost_its_data_are_counted_until_they_return(
    redis_server: RedisServer, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a beats first after Redis lost its data; b has neither beaten nor resubscribed yet.
    Redis knows only a, yet a's frames for b's members are counted as lost, not dropped
    silently; once b is back, they reach it again and nothing is counted."""
    a, b = await cluster.node("a"), await cluster.node("b")
    await a.connect("a1", CHAT, "lobby")
    await b.connect("b1", CHAT, "lobby")
    await eventually(lambda: json.loads(a.backend._peers).get("b") == 1, what="a knows b")
    hold_heartbeats(b, monkeypatch)
    await stop_listening(b)
    beats = a.backend._beats
    await redis_call(redis_server.port, "FLUSHALL")
    # Two of a's beats: one re-registers a (and sweeps), the next sweeps again.
    await eventually(lambda: a.backend._beats >= beats + 2, within=10, what="a beats again")
    assert await redis_call(redis_server.port, "SMEMBERS", a.backend.prefix + "nodes") == {"a"}
    assert json.loads(a.backend._peers).get("b") == 1
    await a.backend.publish_room("lobby", frame("m"), ())
    assert (await a.backend.stats()).frames_lost == 1
    monkeypatch.undo()
    await b.backend.stop()
    b2 = await cluster.node("b")  # b comes back (a new run under the same id)
    await b2.connect("b9", CHAT, "lobby")
    await a.backend.publish_room("lobby", frame("back"), ())
    await eventually(lambda: b2.events("b9", "back") == [None], what="b is back")
    assert (await a.backend.stats()).frames_lost == 1


async def test_redis_outage_local_delivery_continues_failures_counted_state_restored(
    redis_server: RedisServer, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await a.connect("a1", CHAT, "general")
    await a.connect("a2", CHAT, "general")
    await b.connect("b1", CHAT, "general")

    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws.redis"):
        redis_server.stop()
        assert await a.backend.publish_room("general", frame("during"), ("a1",)) == 1
        assert a.events("a2", "during") == [None], "local delivery in the outage"
        assert await a.backend.join("a2", "side")  # written back after the outage
        stats = await a.backend.stats()
        assert not stats.healthy and stats.publish_failures == 1
        assert stats.details["scope"] == "local" and stats.details["last_error"]
        assert "failed publishes" in caplog.text

        redis_server.start()  # empty: every node writes its membership back
        back = time.monotonic()

        async def healthy() -> bool:
            return all([(await n.backend.stats()).healthy for n in (a, b)])

        await eventually(healthy, within=10, what="healthy again")
        print(f"healthy {time.monotonic() - back:.2f} s after redis came back")
    assert await b.backend.room_clients("general") == {"a1", "a2", "b1"}
    assert await b.backend.room_clients("side") == {"a2"}
    assert (await a.backend.stats()).details["reconnects"] >= 1
    await a.backend.publish_room("general", frame("after"), ())
    await eventually(lambda: b.events("b1", "after") == [None], what="cross-node delivery")
    assert b.events("b1", "during") == [], "at most once: the outage's frame is lost for b1"


async def test_a_manager_reports_the_loss_counters(redis_server: RedisServer) -> None:
    async with WebSocketManager(backend=redis_server.url) as manager:
        redis_server.stop()
        assert await manager.broadcast("x") == 0
        stats = await manager.get_stats()
        assert (stats.publish_failures, stats.frames_lost) == (1, 0)
        dumped = stats.model_dump()
        assert (dumped["publishFailures"], dumped["framesLost"]) == (1, 0)
        redis_server.start()


# -- item 5: bounded work per Redis call ---------------------------------------------------


async def test_resync_after_an_empty_restart_goes_in_bounded_chunks(
    redis_server: RedisServer, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "CHUNK", 50)
    a = await cluster.node("a")
    await a.connect("big", CHAT, *(f"r{i}" for i in range(333)))
    await a.connect("small", CHAT, "r1", "r2")
    calls: list[tuple[str, int]] = []
    original = a.backend._run

    async def recording(script: str, *args: str) -> Any:
        if script == "sync":
            calls.append((script, sum(len(e[3]) + 1 for e in json.loads(args[1]))))
        elif script in ("remove", "finish", "drop", "reap"):
            calls.append((script, int(args[-1] if script != "reap" else args[1])))
        return await original(script, *args)

    monkeypatch.setattr(a.backend, "_run", recording)
    redis_server.restart()  # empty
    await eventually(lambda: sum(n for s, n in calls if s == "sync") >= 337, within=10)
    assert max(n for s, n in calls if s == "sync") <= 50 + 1
    assert len(await a.backend.client_rooms("big")) == 333
    assert (await a.backend.stats()).memberships == 335
    # Rooms Redis has that this node left (while Redis was away) go too, in chunks.
    for i in range(120):
        await original("join", "small", f"x{i}", "a", "0", "")
    calls.clear()
    await a.backend._sync()
    assert await a.backend.client_rooms("small") == {"r1", "r2"}
    assert await a.backend.room_clients("x7") == set()
    assert max(n for s, n in calls if s == "sync") <= 50 + 1
    calls.clear()
    await a.disconnect("big")  # removal of 333 rooms: several calls, none over the chunk
    # 7 calls of 50; a heartbeat's resync running meanwhile may add a removal after it ends
    # (see test_a_client_removed_during_a_resync_is_not_written_back).
    removals = [n for s, n in calls if s == "remove"]
    assert removals[:7] == [50] * 7 and set(removals) == {50}
    await eventually(lambda: not a.backend._removed, within=10)
    assert (await a.backend.stats()).memberships == 2
    assert await a.backend.client_rooms("big") == set()


async def test_a_client_removed_during_a_resync_is_not_written_back(
    redis_server: RedisServer, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resync writes chunks from the view it took; a removal in between must stay removed.

    Otherwise the client is back in Redis under this node, which then hands it over as a
    stray of a previous run and its disconnect logic runs a second time.
    """
    monkeypatch.setattr(redis_backend, "CHUNK", 50)
    a = await cluster.node("a")
    b = await cluster.node("b")
    await a.connect("first", CHAT, *(f"f{i}" for i in range(120)))
    await a.connect("big", CHAT, *(f"r{i}" for i in range(120)))
    original = a.backend._run
    first_chunk_sent, go_on = asyncio.Event(), asyncio.Event()

    async def pausing(script: str, *args: str) -> Any:
        result = await original(script, *args)
        if script == "sync" and not first_chunk_sent.is_set():
            first_chunk_sent.set()
            await go_on.wait()
        return result

    monkeypatch.setattr(a.backend, "_run", pausing)
    resync = asyncio.create_task(a.backend._sync())
    with anyio.fail_after(10):
        await first_chunk_sent.wait()
    await a.disconnect("big")  # removed while the resync still holds "big" in its view
    monkeypatch.setattr(a.backend, "_run", original)
    go_on.set()
    with anyio.fail_after(10):
        await resync
    assert await a.backend.client_rooms("big") == set()
    assert await a.backend.room_clients("r7") == set()
    assert len(await a.backend.client_rooms("first")) == 120
    await a.backend._sync()  # the next beat finds nothing of "big" to hand over
    assert not await a.backend._redis.hexists(a.backend.prefix + "owner", "big")  # type: ignore[union-attr]
    assert cluster.gone_everywhere() == []
    assert "big" not in a.gone_ids() + b.gone_ids()


# -- the manager's side of the Node contract ------------------------------------------------


async def test_the_manager_runs_the_route_handler_of_each_vanished_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = WebSocketManager()
    ran: list[tuple[str, str, Any]] = []

    async def chat_gone(client_id: str, *, info: Mapping[str, Any]) -> None:
        ran.append(("chat", client_id, dict(info)))

    async def old_style_gone(client_id: str) -> None:
        ran.append(("old", client_id, None))
        raise RuntimeError("a failing handler does not stop the others")

    batches: list[dict[str, Any]] = []

    async def callback(clients: Mapping[str, Mapping[str, Any]]) -> None:
        batches.append(dict(clients))

    assert manager.served_routes() == []
    manager._on_route_gone(CHAT, chat_gone)
    manager._on_route_gone("/ws/old", old_style_gone)
    assert sorted(manager.served_routes()) == ["/ws/chat", "/ws/old"]
    manager.on_clients_gone(callback)
    assert sorted(manager.served_routes()) == ["", "/ws/chat", "/ws/old"]

    gone = {
        "c1": {"route": CHAT, "user_id": "u1"},
        "c2": {"route": "/ws/old"},
        "c3": {"route": "/ws/nowhere"},
        "c4": {},
    }
    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws"):
        await manager.clients_gone(gone)
    assert ran == [("chat", "c1", {"route": CHAT, "user_id": "u1"}), ("old", "c2", None)]
    assert batches == [gone]
    assert "no live process serves route '/ws/nowhere'" in caplog.text
    assert "disconnect logic for vanished client c2 failed" in caplog.text
