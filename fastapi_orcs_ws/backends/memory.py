"""The in-memory backend: one process, membership in dictionaries."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from .base import Backend, BackendStats, Node

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """Membership held in this process; delivery is a direct call. The default."""

    name = "memory"

    def __init__(self) -> None:
        self._node: Node | None = None
        # Rooms are insertion-ordered dicts: a broadcast reaches members in join order.
        self._rooms: dict[str, dict[str, None]] = {}
        self._client_rooms: dict[str, set[str]] = {}

    async def start(self, node: Node) -> None:
        self._node = node

    async def stop(self) -> None:
        self._rooms.clear()
        self._client_rooms.clear()

    @property
    def node(self) -> Node:
        if self._node is None:
            raise RuntimeError("backend not started")
        return self._node

    async def add_client(self, client_id: str, info: Mapping[str, str] | None = None) -> None:
        self._client_rooms.setdefault(client_id, set())

    async def remove_client(self, client_id: str) -> None:
        for room in self._client_rooms.pop(client_id, ()):
            self._discard(room, client_id)

    async def join(self, client_id: str, room: str) -> bool:
        rooms = self._client_rooms.get(client_id)
        if rooms is None:
            return False
        rooms.add(room)
        self._rooms.setdefault(room, {})[client_id] = None
        return True

    async def leave(self, client_id: str, room: str) -> bool:
        rooms = self._client_rooms.get(client_id)
        if rooms is None or room not in rooms:
            return False
        rooms.discard(room)
        self._discard(room, client_id)
        return True

    def _discard(self, room: str, client_id: str) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.pop(client_id, None)
            if not members:
                del self._rooms[room]

    async def room_clients(self, room: str) -> set[str]:
        return set(self._rooms.get(room, ()))

    async def client_rooms(self, client_id: str) -> set[str]:
        return set(self._client_rooms.get(client_id, ()))

    async def has_client(self, client_id: str) -> bool:
        return client_id in self._client_rooms

    async def stats(self) -> BackendStats:
        return BackendStats(
            connections=len(self._client_rooms),
            rooms=len(self._rooms),
            memberships=sum(len(m) for m in self._rooms.values()),
        )

    async def publish_all(self, frame: str, exclude: Collection[str]) -> int:
        return self.node.deliver_local(frame, None, exclude)

    async def publish_room(self, room: str, frame: str, exclude: Collection[str]) -> int:
        members = self._rooms.get(room)
        if not members:
            return 0
        return self.node.deliver_local(frame, members, exclude)

    async def publish_client(self, client_id: str, frame: str) -> bool:
        return self.node.deliver_local(frame, (client_id,), ()) == 1

    async def disconnect_client(self, client_id: str, code: int, reason: str) -> bool:
        return await self.node.close_local(client_id, code, reason)
