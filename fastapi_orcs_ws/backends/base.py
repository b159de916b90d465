"""The backend contract: membership and delivery, as seen by one process."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..history import HistoryPage, Position, RoomHistory

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

    async def close_user_local(self, user_id: str, code: int, reason: str) -> int:
        """Close every local connection of an authenticated user; return how many."""
        ...

    def deliver_user_local(self, user_id: str, frame: str) -> int:
        """Queue ``frame`` for every local connection of an authenticated user; how many."""
        ...

    def served_routes(self) -> Collection[str]:
        """The routes whose vanished clients this process can run disconnect logic for.

        A shared backend hands a vanished client only to a process that serves the client's
        route (the ``route`` of its ``info``; ``""`` for a client registered without one);
        a process that serves no route (a worker) never takes one, unless no live process
        serves that route at all.
        """
        ...

    async def clients_gone(self, clients: Mapping[str, Mapping[str, Any]]) -> None:
        """Clients of another process vanished (it died): run their disconnect logic.

        ``clients`` maps each client id to the ``info`` given to
        [`Backend.add_client`][fastapi_orcs_ws.backends.Backend.add_client]. Their membership is
        still in place while this runs (as during a clean close), and is removed when it returns or
        raises.
        """
        ...


@dataclass(frozen=True, slots=True)
class BackendStats:
    """Counts across every process the backend spans; loss counters of this process."""

    connections: int
    rooms: int
    memberships: int
    """Sum of all room sizes."""
    healthy: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    publish_failures: int = 0
    """Publishes of this process that never reached the other processes (the broker was
    unreachable or refused): every other process missed that frame."""
    frames_lost: int = 0
    """Frames this process handed to the broker for another process that was not listening
    (its subscription was down, or it had died), one per recipient client there; plus
    inter-process messages this process received and had to drop."""


class Backend(ABC):
    """Room membership and delivery for a [`WebSocketManager`][fastapi_orcs_ws.WebSocketManager].

    The manager owns the rules (an empty room disappears, a client that goes leaves
    every room, encode once); a backend stores membership and moves encoded frames to
    the process that holds each recipient. Publishing methods return how many clients
    the frame was addressed to.
    """

    name: str = "backend"
    _node: Node | None = None

    @property
    def node(self) -> Node:
        """The process this backend delivers to; set by
        [`start`][fastapi_orcs_ws.backends.Backend.start]."""
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
    async def add_client(self, client_id: str, info: Mapping[str, Any] | None = None) -> None:
        """A client connected to this process.

        ``info`` (JSON-serialisable: the ``route`` it connected to, and what its disconnect
        logic needs) is handed back by
        [`Node.clients_gone`][fastapi_orcs_ws.backends.Node.clients_gone] if this process dies
        without removing the client.
        """

    async def client_closing(self, client_id: str) -> None:  # noqa: B027 - optional hook
        """A client of this process is closing cleanly: its disconnect logic starts here.

        A shared backend records it, so that if this process dies before
        [`remove_client`][fastapi_orcs_ws.backends.Backend.remove_client], no other process runs
        that logic a second time. The default does nothing (one process: nobody else could run it).
        """

    @abstractmethod
    async def remove_client(self, client_id: str) -> None:
        """A client of this process left: drop it from every room."""

    @abstractmethod
    async def join(self, client_id: str, room: str, max_rooms: int = 0) -> bool:
        """Add a client (of any process) to a room; False if no such client.

        Raises:
            RoomLimitError: the client is in ``max_rooms`` rooms already and ``room`` is not
                one of them (``0``: no cap). A shared backend checks and joins atomically,
                so that two processes joining one client cannot both pass the cap.
        """

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

    async def disconnect_user(self, user_id: str, code: int, reason: str) -> int:
        """Close every connection of a user on every process; return how many this one closed.

        The default closes this process's only (right for a single-process backend); a
        shared backend also tells every other process to close its own, and raises
        [`BackendError`][fastapi_orcs_ws.BackendError] when it cannot.
        """
        return await self.node.close_user_local(user_id, code, reason)

    # -- history, presence and users (docs/rooms.md) ---------------------------------------

    history_support: bool = False
    """True when the backend implements
    [`publish_history`][fastapi_orcs_ws.backends.Backend.publish_history] and
    [`read_history`][fastapi_orcs_ws.backends.Backend.read_history]; rooms with history are
    refused at configuration on a backend without it."""

    async def publish_history(
        self, room: str, head: str, exclude: Collection[str], keep: RoomHistory
    ) -> int:
        """Give the frame the room's next position, keep it, deliver it; return how many.

        The frame is ``head + str(offset) + protocol.position_tail(epoch)``. Positioning,
        keeping and publishing are one atomic step: every member of every process gets the
        room's frames in offset order. If the history cannot be written (the broker is
        away), local members get the frame without a position and the loss is counted.
        """
        raise NotImplementedError(f"the {self.name} backend keeps no room history")

    async def read_history(
        self, room: str, keep: RoomHistory, since: Position | None, limit: int | None
    ) -> HistoryPage:
        """The room's kept frames (see
        [`WebSocketManager.history`][fastapi_orcs_ws.WebSocketManager.history])."""
        raise NotImplementedError(f"the {self.name} backend keeps no room history")

    async def presence(self, room: str) -> dict[str, dict[str, Any]]:
        """Every client in ``room`` with the ``info`` it was added with."""
        return {client_id: {} for client_id in await self.room_clients(room)}

    async def client_info(self, client_id: str) -> dict[str, Any]:
        """The ``info`` a client (of any process) was added with; ``{}`` if none."""
        return {}

    async def user_clients(self, user_id: str) -> set[str]:
        """Every client of an authenticated user (``info["user_id"]``), on every process."""
        raise NotImplementedError(f"the {self.name} backend keeps no user index")

    async def publish_user(self, user_id: str, frame: str) -> int:
        """Deliver ``frame`` to every connection of a user on every process; return how many
        this process delivered. The default delivers this process's only."""
        return self.node.deliver_user_local(user_id, frame)
