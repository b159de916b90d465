"""The memory backend's compact per-client state: rooms kept as small tuples (a set past a
few), room names shared, route-only info shared between clients and never handed out."""

from __future__ import annotations

import pytest

from fastapi_orcs_ws.backends.memory import MemoryBackend
from fastapi_orcs_ws.backends.rooms import _SMALL, RoomIndex

pytestmark = pytest.mark.anyio


def test_rooms_of_a_client_through_joins_and_leaves_past_the_small_form() -> None:
    index = RoomIndex()
    assert not index.join("a", "r0")  # unknown client
    index.add_client("a")
    index.add_client("b")
    assert index.rooms_of("a") == set() and index.rooms_of("zz") is None
    names = [f"r{i}" for i in range(_SMALL + 3)]
    for name in names:
        assert index.join("a", name)
        assert index.join("a", name)  # again: no duplicate
    assert index.rooms_of("a") == set(names)
    assert len(index.client_rooms["a"]) == len(names)
    assert index.join("b", "r1")
    assert list(index.members("r1") or ()) == ["a", "b"]
    assert index.leave("a", "r1") and not index.leave("a", "r1")
    assert list(index.members("r1") or ()) == ["b"]
    assert index.rooms_of("a") == set(names) - {"r1"}
    assert index.remove_client("a") == set(names) - {"r1"}
    assert index.rooms == {"r1": {"b": None}}
    assert index.memberships() == 1
    # a client in a few rooms: leave them one by one, the room disappears with its last member
    index.add_client("c")
    for name in ("x", "y", "z"):
        index.join("c", name)
    assert index.leave("c", "y") and index.rooms_of("c") == {"x", "z"}
    assert "y" not in index.rooms and not index.leave("c", "y")
    assert index.remove_client("c") == {"x", "z"} and "x" not in index.rooms


def test_members_share_one_room_name() -> None:
    index = RoomIndex()
    for cid in ("a", "b"):
        index.add_client(cid)
        # each join decodes its own copy of the name
        index.join(cid, "".join(["lob", "by"]))
    (a_room,) = index.client_rooms["a"]
    (b_room,) = index.client_rooms["b"]
    assert a_room == b_room == "lobby" and a_room is b_room


async def test_route_only_info_is_shared_but_never_handed_out() -> None:
    backend = MemoryBackend()
    await backend.add_client("a", {"route": "/ws"})
    await backend.add_client("b", {"route": "/ws"})
    await backend.add_client("c", {"route": "/ws", "user_id": "u1"})
    for cid in ("a", "b", "c"):
        assert await backend.join(cid, "room")
    info = await backend.client_info("a")
    assert info == {"route": "/ws"}
    info["route"] = "changed"  # a copy
    presence = await backend.presence("room")
    assert presence == {
        "a": {"route": "/ws"},
        "b": {"route": "/ws"},
        "c": {"route": "/ws", "user_id": "u1"},
    }
    presence["a"]["route"] = "changed"  # copies too: b (sharing a's dict) is untouched
    assert await backend.client_info("b") == {"route": "/ws"}
    assert (await backend.presence("room"))["a"] == {"route": "/ws"}
    assert await backend.user_clients("u1") == {"c"}
    await backend.remove_client("a")
    assert await backend.client_info("a") == {}
    assert await backend.client_info("b") == {"route": "/ws"}
