"""The backend contract: membership and delivery, as seen by one process."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Backend", "BackendStats", "Node"]


class Node(Protocol):
    """What a backend may ask of the process it runs in (the manager implements it)."""

    @property
    def max_payload_length(self) -> int:
        """The largest frame a client may be sent or send, in bytes."""
        ...

    def deliver_local(
        self, frame: str, client_ids: Iterable[str] | None, exclude: Collection[str]
    ) -> int:
        """Queue ``frame`` for local clients (``None``: all of them); return how many."""
        ...

    async def close_local(self, client_id: str, code: int, reason: str) -> bool:
        """Close a local client; False if it is not here."""
        ...

    async def clients_gone(self, clients: Mapping[str, Mapping[str, str]]) -> None:
        """Clients of another process vanished (it died): run their disconnect logic.

        ``clients`` maps each client id to the ``info`` given to :meth:`Backend.add_client`.
        """
        ...


@dataclass(frozen=True, slots=True)
class BackendStats:
    """Counts across every process the backend spans."""

    connections: int
    rooms: int
    memberships: int
    """Sum of all room sizes."""
    healthy: bool = True
    details: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """Room membership and delivery for a :class:`~fastapi_orcs_ws.WebSocketManager`.

    The manager owns the rules (an empty room disappears, a client that goes leaves
    every room, encode once); a backend stores membership and moves encoded frames to
    the process that holds each recipient. Publishing methods return how many clients
    the frame was addressed to.
    """

    name: str = "backend"
    _node: Node | None = None

    @property
    def node(self) -> Node:
        """The process this backend delivers to; set by :meth:`start`."""
        if self._node is None:
            raise RuntimeError("backend not started")
        return self._node

    @abstractmethod
    async def start(self, node: Node) -> None:
        """Connect; from now on deliver frames for local clients through ``node``."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect and forget this process's clients."""

    @abstractmethod
    async def add_client(self, client_id: str, info: Mapping[str, str] | None = None) -> None:
        """A client connected to this process.

        ``info`` (e.g. the route it connected to) is handed back by
        :meth:`Node.clients_gone` if this process dies without removing the client.
        """

    @abstractmethod
    async def remove_client(self, client_id: str) -> None:
        """A client of this process left: drop it from every room."""

    @abstractmethod
    async def join(self, client_id: str, room: str) -> bool:
        """Add a client (of any process) to a room; False if no such client."""

    @abstractmethod
    async def leave(self, client_id: str, room: str) -> bool:
        """Remove a client from a room; False if it was not in it."""

    @abstractmethod
    async def room_clients(self, room: str) -> set[str]:
        """Every client in ``room``."""

    @abstractmethod
    async def client_rooms(self, client_id: str) -> set[str]:
        """Every room ``client_id`` is in."""

    @abstractmethod
    async def has_client(self, client_id: str) -> bool:
        """Whether ``client_id`` is connected to any process."""

    @abstractmethod
    async def stats(self) -> BackendStats:
        """Connections, rooms and memberships across all processes."""

    @abstractmethod
    async def publish_all(self, frame: str, exclude: Collection[str]) -> int:
        """Deliver ``frame`` to every client except ``exclude``."""

    @abstractmethod
    async def publish_room(self, room: str, frame: str, exclude: Collection[str]) -> int:
        """Deliver ``frame`` to the members of ``room`` except ``exclude``."""

    @abstractmethod
    async def publish_client(self, client_id: str, frame: str) -> bool:
        """Deliver ``frame`` to one client; False if it is not connected."""

    @abstractmethod
    async def disconnect_client(self, client_id: str, code: int, reason: str) -> bool:
        """Close a client wherever it is connected; False if it is not connected."""
