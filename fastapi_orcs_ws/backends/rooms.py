"""RoomIndex: who is in which room, for the clients one process holds."""

from __future__ import annotations

from ..errors import RoomLimitError

__all__ = ["RoomIndex", "too_many_rooms"]


class RoomIndex:
    """Room membership of local clients: the memory backend's truth, a shared backend's view.

    Rooms keep their members in join order, so a broadcast reaches them in that order. An
    empty room disappears.
    """

    __slots__ = ("client_rooms", "rooms")

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, None]] = {}
        self.client_rooms: dict[str, set[str]] = {}

    def add_client(self, client_id: str) -> None:
        self.client_rooms.setdefault(client_id, set())

    def remove_client(self, client_id: str) -> set[str]:
        """Forget a client; returns the rooms it was in."""
        rooms = self.client_rooms.pop(client_id, set())
        for room in rooms:
            self._discard(room, client_id)
        return rooms

    def join(self, client_id: str, room: str) -> bool:
        """False if the client is unknown here."""
        rooms = self.client_rooms.get(client_id)
        if rooms is None:
            return False
        rooms.add(room)
        self.rooms.setdefault(room, {})[client_id] = None
        return True

    def leave(self, client_id: str, room: str) -> bool:
        """False if the client was not in the room."""
        rooms = self.client_rooms.get(client_id)
        if rooms is None or room not in rooms:
            return False
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
