"""The in-memory backend: one process, membership in dictionaries."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ..history import HistoryPage, MemoryHistory, Position, RoomHistory
from .base import Backend, BackendStats, Node
from .rooms import RoomIndex, too_many_rooms

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """Membership held in this process; delivery is a direct call. The default."""

    name = "memory"
    history_support = True

    def __init__(self) -> None:
        self._node: Node | None = None
        self._index = RoomIndex()
        self._history = MemoryHistory()
        self._info: dict[str, dict[str, Any]] = {}
        # A client's info is mostly just its route: those clients share one dict per route
        # (never mutated, never handed out: every reader gets a copy).
        self._route_info: dict[str, dict[str, Any]] = {}
        self._users: dict[str, set[str]] = {}

    async def start(self, node: Node) -> None:
        self._node = node

    async def stop(self) -> None:
        self._index.clear()
        self._history.clear()  # a restarted process has lost its history: new epochs
        self._info.clear()
        self._route_info.clear()
        self._users.clear()

    async def add_client(self, client_id: str, info: Mapping[str, Any] | None = None) -> None:
        self._index.add_client(client_id)
        if info:
            route = info.get("route")
            if len(info) == 1 and type(route) is str:
                shared = self._route_info.get(route)
                if shared is None:
                    shared = self._route_info[route] = {"route": route}
                self._info[client_id] = shared
                return
            self._info[client_id] = dict(info)
            user_id = info.get("user_id")
            if isinstance(user_id, str):
                self._users.setdefault(user_id, set()).add(client_id)

    async def remove_client(self, client_id: str) -> None:
        self._index.remove_client(client_id)
        info = self._info.pop(client_id, None)
        user_id = info.get("user_id") if info else None
        if isinstance(user_id, str):
            clients = self._users.get(user_id)
            if clients is not None:
                clients.discard(client_id)
                if not clients:
                    del self._users[user_id]

    async def join(self, client_id: str, room: str, max_rooms: int = 0) -> bool:
        rooms = self._index.client_rooms.get(client_id)
        if rooms is None:
            return False
        if max_rooms and room not in rooms and len(rooms) >= max_rooms:
            raise too_many_rooms(max_rooms)
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

    async def publish_history(
        self, room: str, head: str, exclude: Collection[str], keep: RoomHistory
    ) -> int:
        frame, _, _ = self._history.append(room, head, keep)
        members = self._index.members(room)
        return self.node.deliver_local(frame, members, exclude) if members else 0

    async def read_history(
        self, room: str, keep: RoomHistory, since: Position | None, limit: int | None
    ) -> HistoryPage:
        return self._history.read(room, keep, since, limit)

    async def presence(self, room: str) -> dict[str, dict[str, Any]]:
        info = self._info
        return {cid: dict(info.get(cid) or {}) for cid in self._index.members(room) or ()}

    async def client_info(self, client_id: str) -> dict[str, Any]:
        return dict(self._info.get(client_id, {}))

    async def user_clients(self, user_id: str) -> set[str]:
        return set(self._users.get(user_id, ()))
