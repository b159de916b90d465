"""A property-based state machine over the manager (issue 12), on the memory backend and on two
Redis nodes sharing a real redis-server.

Hypothesis drives random sequences of connects, joins, leaves, disconnects, broadcasts (to a
room and to all, with every form of ``exclude``), direct sends and ``disconnect_user``,
through any node, against a plain model of who is connected and in which room. After every
step it checks, through the public calls:

- no ghost members: ``get_room_clients``/``get_client_rooms`` equal the model on every node
  (a client that left or disconnected is in no room);
- stats equal membership: ``connections``, ``rooms`` and ``averageRoomSize`` follow from it;
- the room cap holds: a join past ``max_rooms_per_client`` raises ``RoomLimitError`` and
  changes nothing;
- exclude is honoured and every delivered frame was addressed: each client received exactly
  the frames whose recipients it was (each frame carries a sequence number), in order, and
  every call returned how many clients it addressed;
- ``disconnect_user`` closes exactly that user's connections, on every node.

Clients are `tests.fake_clients.FakeClient`: real `Connection` objects whose socket records
frames. On Redis a frame or a remote join reaches another node through pub/sub: each step
waits (bounded) for what it sent to arrive, and the end of each run sends a barrier from
every node so that a stray frame still in flight would be caught.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fastapi_orcs_ws import RoomLimitError, WebSocketManager, WebSocketSettings
from fastapi_orcs_ws.backends.redis import RedisBackend
from tests.fake_clients import FakeClient
from tests.redis_helpers import RedisServer

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")

ROOMS = ("r0", "r1", "r2", "r3")
USERS = ("ann", "bob")
MAX_ROOMS = 2
"""Small, so that random joins often meet the cap."""
WAIT = 5.0
"""Seconds a step waits for pub/sub to carry what it sent."""

nodes = st.integers(0, 1)
"""Which node a call goes through (modulo the machine's node count)."""


class ManagerMachine(RuleBasedStateMachine):
    """The rules and invariants; subclasses choose the backend."""

    redis_url: ClassVar[str | None] = None
    """None: one manager on the memory backend; else two managers (nodes) on this Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        config = WebSocketSettings(max_rooms_per_client=MAX_ROOMS)
        if self.redis_url is None:
            self.managers = [WebSocketManager(settings=config)]
        else:
            # A key prefix of its own per run: no run sees another's keys or channels.
            url = f"{self.redis_url}?prefix=sm{uuid.uuid4().hex[:10]}:&node_ttl=60&heartbeat=20"
            self.managers = [WebSocketManager(settings=config, backend=url) for _ in range(2)]
        for manager in self.managers:
            self.run(manager.start())
        self.clients: dict[str, FakeClient] = {}
        self.gone: dict[str, FakeClient] = {}
        self.node_of: dict[str, int] = {}
        self.rooms: dict[str, set[str]] = {}
        self.expected: dict[str, list[int]] = {}
        self.ids = iter(range(1_000_000))
        self.seqs = iter(range(1_000_000))

    # -- plumbing ------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def wait(self, check: Callable[[], bool], what: str) -> None:
        async def poll() -> None:
            deadline = time.monotonic() + WAIT
            while not check():
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what}: not within {WAIT} s")
                await asyncio.sleep(0.002)

        self.run(poll())

    def manager(self, via: int) -> WebSocketManager:
        return self.managers[via % len(self.managers)]

    def members(self, room: str) -> set[str]:
        return {cid for cid, rooms in self.rooms.items() if room in rooms}

    def received(self, cid: str) -> list[int]:
        client = self.clients.get(cid) or self.gone[cid]
        return [payload["seq"] for payload in client.events("frame")]

    def everyone(self) -> Iterator[str]:
        yield from self.clients
        yield from self.gone

    def delivered(self, what: str) -> None:
        """Wait until each client has as many frames as it was sent (pub/sub carries them)."""
        self.wait(
            lambda: all(len(self.received(c)) >= len(self.expected[c]) for c in self.everyone()),
            what,
        )

    def view_follows(self, cid: str) -> None:
        """A remote join or leave reaches the owning node's own view by pub/sub: the docs say
        a room frame that node sends in between may miss the client. Wait for it."""
        if self.redis_url is None or cid not in self.clients:
            return
        backend = self.managers[self.node_of[cid]].backend
        assert isinstance(backend, RedisBackend)
        self.wait(
            lambda: backend._index.rooms_of(cid) == self.rooms[cid],
            f"the owner's view of {cid}'s rooms",
        )

    def pick(self, data: st.DataObject, ids: Any) -> str:
        cid: str = data.draw(st.sampled_from(sorted(ids)), label="client")
        return cid

    def draw_exclude(self, data: st.DataObject) -> tuple[Any, set[str]]:
        """An ``exclude`` in one of the forms the API takes, and the ids it names."""
        pool = [*sorted(self.everyone()), "nobody"]
        ids = data.draw(st.lists(st.sampled_from(pool), max_size=3, unique=True), label="exclude")
        form = data.draw(st.sampled_from(["none", "str", "list", "set", "gen"]), label="form")
        if form == "none" or not ids:
            return None, set()
        if form == "str":
            return ids[0], {ids[0]}
        if form == "set":
            return set(ids), set(ids)
        if form == "gen":
            return (cid for cid in ids), set(ids)
        return list(ids), set(ids)

    # -- rules ---------------------------------------------------------------------------

    @initialize(
        clients=st.lists(st.tuples(nodes, st.sampled_from([*USERS, None])), min_size=2, max_size=5)
    )
    def start_with_clients(self, clients: list[tuple[int, str | None]]) -> None:
        for via, user in clients:
            self.connect(via, user)

    @rule(via=nodes, user=st.sampled_from([*USERS, None]))
    def connect(self, via: int, user: str | None) -> None:
        cid = f"c{next(self.ids)}"
        node = via % len(self.managers)
        client = FakeClient(self.managers[node], cid, user)
        self.run(client.connect())
        self.clients[cid] = client
        self.node_of[cid] = node
        self.rooms[cid] = set()
        self.expected[cid] = []

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), room=st.sampled_from(ROOMS), via=nodes)
    def join(self, data: st.DataObject, room: str, via: int) -> None:
        cid = self.pick(data, self.clients)
        rooms = self.rooms[cid]
        if room not in rooms and len(rooms) >= MAX_ROOMS:
            with pytest.raises(RoomLimitError) as refused:
                self.run(self.manager(via).join_room(cid, room))
            assert (refused.value.code, refused.value.limit) == ("room_limit", MAX_ROOMS)
        else:
            assert self.run(self.manager(via).join_room(cid, room)) is True
            rooms.add(room)
        self.view_follows(cid)

    @rule(room=st.sampled_from(ROOMS), via=nodes)
    def join_a_client_that_is_not_connected(self, room: str, via: int) -> None:
        cid = next(iter(self.gone), "never-connected")
        assert self.run(self.manager(via).join_room(cid, room)) is False

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), room=st.sampled_from(ROOMS), via=nodes)
    def leave(self, data: st.DataObject, room: str, via: int) -> None:
        cid = self.pick(data, self.clients)
        was_in = room in self.rooms[cid]
        assert self.run(self.manager(via).leave_room(cid, room)) is was_in
        self.rooms[cid].discard(room)
        self.view_follows(cid)

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        cid = self.pick(data, self.clients)
        self.run(self.clients[cid].disconnect())
        self.forget(cid)

    def forget(self, cid: str) -> None:
        self.gone[cid] = self.clients.pop(cid)
        del self.rooms[cid]

    @rule(data=st.data(), room=st.sampled_from(ROOMS), via=nodes)
    def broadcast_to_room(self, data: st.DataObject, room: str, via: int) -> None:
        exclude, excluded = self.draw_exclude(data)
        seq = next(self.seqs)
        targets = self.members(room) - excluded
        sent = self.run(
            self.manager(via).broadcast_to_room(room, "frame", {"seq": seq}, exclude=exclude)
        )
        assert sent == len(targets)
        for cid in targets:
            self.expected[cid].append(seq)
        self.delivered(f"frame {seq} to room {room}")

    @rule(data=st.data(), via=nodes)
    def broadcast(self, data: st.DataObject, via: int) -> None:
        exclude, excluded = self.draw_exclude(data)
        seq = next(self.seqs)
        targets = set(self.clients) - excluded
        sent = self.run(self.manager(via).broadcast("frame", {"seq": seq}, exclude=exclude))
        assert sent == len(targets)
        for cid in targets:
            self.expected[cid].append(seq)
        self.delivered(f"frame {seq} to all")

    @precondition(lambda self: self.clients or self.gone)
    @rule(data=st.data(), via=nodes)
    def send_to_client(self, data: st.DataObject, via: int) -> None:
        cid = self.pick(data, self.everyone())
        seq = next(self.seqs)
        connected = cid in self.clients
        assert self.run(self.manager(via).send_to_client(cid, "frame", {"seq": seq})) is connected
        if connected:
            self.expected[cid].append(seq)
        self.delivered(f"frame {seq} to {cid}")

    @rule(user=st.sampled_from(USERS), via=nodes, code=st.sampled_from([1000, 4401, 4403]))
    def disconnect_user(self, user: str, via: int, code: int) -> None:
        node = via % len(self.managers)
        theirs = [cid for cid, client in self.clients.items() if client.user == user]
        here = [cid for cid in theirs if self.node_of[cid] == node]
        assert self.run(self.managers[node].disconnect_user(user, code, "bye")) == len(here)
        self.wait(
            lambda: all(self.clients[cid].closes == [(code, "bye")] for cid in theirs),
            f"the close of {user}'s {len(theirs)} connections",
        )
        for cid in theirs:  # what each session does once its close frame is written
            self.run(self.clients[cid].disconnect(code))
            self.forget(cid)
        assert not any(client.closes for client in self.clients.values())

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def membership_and_stats_equal_the_model(self) -> None:
        nonempty = {room: self.members(room) for room in ROOMS if self.members(room)}
        memberships = sum(len(m) for m in nonempty.values())
        for manager in self.managers:
            for room in ROOMS:
                assert self.run(manager.get_room_clients(room)) == nonempty.get(room, set())
            for cid in self.everyone():
                assert self.run(manager.get_client_rooms(cid)) == self.rooms.get(cid, set())
            stats = self.run(manager.get_stats())
            assert (stats.connections, stats.rooms) == (len(self.clients), len(nonempty))
            average = round(memberships / len(nonempty), 2) if nonempty else 0.0
            assert stats.average_room_size == average
        for node, manager in enumerate(self.managers):
            mine = [cid for cid in self.clients if self.node_of[cid] == node]
            assert manager.local_connections == len(mine)

    @invariant()
    def every_client_got_exactly_its_frames(self) -> None:
        for cid in self.everyone():
            assert self.received(cid) == self.expected[cid], cid

    def teardown(self) -> None:
        try:
            if len(self.managers) > 1 and self.clients:
                # A barrier from each node, on the channel every node listens to, arrives
                # after everything that node published before: nothing is in flight after it.
                for node, manager in enumerate(self.managers):
                    self.run(manager.broadcast("barrier", node))
                count = len(self.managers)
                self.wait(
                    lambda: all(len(c.events("barrier")) == count for c in self.clients.values()),
                    "the barrier",
                )
                self.every_client_got_exactly_its_frames()
            for cid in list(self.clients):
                self.run(self.clients[cid].disconnect())
        finally:
            for manager in self.managers:
                self.run(manager.stop())
            self.loop.close()


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_manager_keeps_its_promises_on_the_memory_backend() -> None:
    class MemoryMachine(ManagerMachine):
        redis_url = None

    run_state_machine_as_test(MemoryMachine, settings=SETTINGS)


@pytest.mark.redis
def test_the_manager_keeps_its_promises_on_two_redis_nodes(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:

        class RedisMachine(ManagerMachine):
            redis_url = server.url

        run_state_machine_as_test(
            RedisMachine, settings=settings(SETTINGS, max_examples=15, stateful_step_count=20)
        )
