"""The in-memory backend: one process, membership in dictionaries."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from .base import Backend, BackendStats, Node
from .rooms import RoomIndex

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """Membership held in this process; delivery is a direct call. The default."""

    name = "memory"

    def __init__(self) -> None:
        self._node: Node | None = None
        self._index = RoomIndex()

    async def start(self, node: Node) -> None:
        self._node = node

    async def stop(self) -> None:
        self._index.clear()

    async def add_client(self, client_id: str, info: Mapping[str, Any] | None = None) -> None:
        self._index.add_client(client_id)

    async def remove_client(self, client_id: str) -> None:
        self._index.remove_client(client_id)

    async def join(self, client_id: str, room: str) -> bool:
        return self._index.join(client_id, room)

    async def leave(self, client_id: str, room: str) -> bool:
        return self._index.leave(client_id, room)

    async def room_clients(self, room: str) -> set[str]:
        return set(self._index.members(room) or ())

    async def client_rooms(self, client_id: str) -> set[str]:
        return set(self._index.client_rooms.get(client_id, ()))

    async def has_client(self, client_id: str) -> bool:
        return client_id in self._index.client_rooms

    async def stats(self) -> BackendStats:
        index = self._index
        return BackendStats(
            connections=len(index.client_rooms),
            rooms=len(index.rooms),
            memberships=index.memberships(),
        )

    async def publish_all(self, frame: str, exclude: Collection[str]) -> int:
        return self.node.deliver_local(frame, None, exclude)

    async def publish_room(self, room: str, frame: str, exclude: Collection[str]) -> int:
        members = self._index.members(room)
        if not members:
            return 0
        return self.node.deliver_local(frame, members, exclude)

    async def publish_client(self, client_id: str, frame: str) -> bool:
        return self.node.deliver_local(frame, (client_id,), ()) == 1

    async def disconnect_client(self, client_id: str, code: int, reason: str) -> bool:
        return await self.node.close_local(client_id, code, reason)
