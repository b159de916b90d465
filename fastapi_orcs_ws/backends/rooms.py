"""RoomIndex: who is in which room, for the clients one process holds."""

from __future__ import annotations

import sys
from collections.abc import Collection

from ..errors import RoomLimitError

__all__ = ["RoomIndex", "too_many_rooms"]

_SMALL = 8
"""Up to this many rooms a client's rooms are a tuple (48 bytes for one room, none for no
room: the empty tuple is shared), past it a set (216 bytes or more even for one room)."""


class RoomIndex:
    """Room membership of local clients: the memory backend's truth, a shared backend's view.

    Rooms keep their members in join order, so a broadcast reaches them in that order. An
    empty room disappears.

    ``client_rooms`` maps each known client to the rooms it is in: a read-only collection
    (``in``, ``len``, iteration), changed only through this class. Most clients are in no room
    or a few, so those are kept as small tuples; a room's name is interned, so that its
    members share one string rather than each keeping the one its own join decoded.
    """

    __slots__ = ("client_rooms", "rooms")

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, None]] = {}
        self.client_rooms: dict[str, Collection[str]] = {}

    def add_client(self, client_id: str) -> None:
        self.client_rooms.setdefault(client_id, ())

    def remove_client(self, client_id: str) -> set[str]:
        """Forget a client; returns the rooms it was in."""
        rooms = set(self.client_rooms.pop(client_id, ()))
        for room in rooms:
            self._discard(room, client_id)
        return rooms

    def rooms_of(self, client_id: str) -> set[str] | None:
        """A copy of the client's rooms, or None if the client is unknown here."""
        rooms = self.client_rooms.get(client_id)
        return None if rooms is None else set(rooms)

    def join(self, client_id: str, room: str) -> bool:
        """False if the client is unknown here."""
        rooms = self.client_rooms.get(client_id)
        if rooms is None:
            return False
        if room not in rooms:
            room = sys.intern(room)
            if type(rooms) is tuple:
                if len(rooms) < _SMALL:
                    self.client_rooms[client_id] = (*rooms, room)
                else:
                    self.client_rooms[client_id] = {*rooms, room}
            else:
                assert isinstance(rooms, set)
                rooms.add(room)
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = {}
        members[client_id] = None
        return True

    def leave(self, client_id: str, room: str) -> bool:
        """False if the client was not in the room."""
        rooms = self.client_rooms.get(client_id)
        if rooms is None or room not in rooms:
            return False
        if type(rooms) is tuple:
            self.client_rooms[client_id] = tuple(r for r in rooms if r != room)
        else:
            assert isinstance(rooms, set)
            rooms.discard(room)
        self._discard(room, client_id)
        return True

    def members(self, room: str) -> dict[str, None] | None:
        """The room's members (live view, do not mutate), or None for an empty room."""
        return self.rooms.get(room)

    def memberships(self) -> int:
        return sum(len(m) for m in self.rooms.values())

    def clear(self) -> None:
        self.rooms.clear()
        self.client_rooms.clear()

    def _discard(self, room: str, client_id: str) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.pop(client_id, None)
            if not members:
                del self.rooms[room]


def too_many_rooms(limit: int) -> RoomLimitError:
    """The error every backend raises when a join would pass ``WS_MAX_ROOMS_PER_CLIENT``."""
    return RoomLimitError(
        f"this client is in {limit} rooms, the most allowed (WS_MAX_ROOMS_PER_CLIENT): "
        "leave one first",
        limit=limit,
    )
