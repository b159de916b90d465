"""Presence: who is in a room across every process, and the presence-join/leave events.

A client's presence entry is what it was registered with: its id and, when its connection
was authenticated, its user's id and public info (``WebSocketManager.public_user_info``).
Membership is the truth, so presence is exactly as correct as membership: a client of a
process that died stays present while its disconnect logic runs on a survivor, then leaves,
and its ``presence-leave`` events are sent once (docs/rooms.md, "Presence").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

if TYPE_CHECKING:
    from .connection import ConnectionData
    from .manager import WebSocketManager

__all__ = ["Presence", "PresenceClient"]

logger = logging.getLogger("fastapi_orcs_ws")

PRESENCE_JOIN = "presence-join"
PRESENCE_LEAVE = "presence-leave"


class PresenceClient(BaseModel):
    """One client in a room: ``{"clientId": "...", "user": {...} | null}``.

    ``user`` is the public info of the authenticated user (by default ``{"id": ...}`` plus
    ``"name"`` when the user or its token has one); ``None`` for an anonymous connection.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, frozen=True
    )

    client_id: str
    user: dict[str, Any] | None = None


class Presence(BaseModel):
    """Who is in a room, across every process: ``{"clients": [...], "connections": N,
    "users": N}`` (``users``: distinct authenticated users)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, frozen=True
    )

    room: str
    clients: list[PresenceClient] = Field(default_factory=list)
    connections: int = 0
    users: int = 0


def default_public_info(data: ConnectionData, user_id: str) -> dict[str, Any]:
    """``{"id": user_id}``, plus ``"name"`` from the user object or its token's claims."""
    info: dict[str, Any] = {"id": user_id}
    name = getattr(data.user, "name", None)
    if name is None and isinstance(data.claims, Mapping):
        name = data.claims.get("name")
    if isinstance(name, str):
        info["name"] = name[:200]
    return info


def presence_of(room: str, entries: Mapping[str, Mapping[str, Any]]) -> Presence:
    clients: list[PresenceClient] = []
    users: set[str] = set()
    for client_id in sorted(entries):
        info = entries[client_id]
        user = info.get("user")
        user_id = info.get("user_id")
        if isinstance(user_id, str):
            users.add(user_id)
        clients.append(
            PresenceClient(client_id=client_id, user=user if isinstance(user, dict) else None)
        )
    return Presence(room=room, clients=clients, connections=len(clients), users=len(users))


def event_payload(room: str, client_id: str, info: Mapping[str, Any]) -> dict[str, Any]:
    user = info.get("user")
    return {"room": room, "clientId": client_id, "user": user if isinstance(user, dict) else None}


async def announce(
    manager: WebSocketManager,
    event: str,
    client_id: str,
    rooms: Iterable[str],
    info: Mapping[str, Any],
) -> None:
    """Send ``presence-join``/``presence-leave`` for ``client_id`` to the rooms that want it.

    In a room set to ``"user"`` events, only the user's first client joining and its last
    client leaving are announced (read from the room's presence after the change: two
    devices of one user joining at the same instant on two processes may both be
    announced). Failures are logged at WARNING, never raised into a disconnect.
    """
    rules = manager._room_rules
    for room in rooms:
        rule = rules.for_room(room)
        if rule is None or rule.presence_events is None:
            continue
        try:
            if rule.presence_events == "user" and isinstance(info.get("user_id"), str):
                entries = await manager.backend.presence(room)
                same = [
                    cid
                    for cid, other in entries.items()
                    if cid != client_id and other.get("user_id") == info["user_id"]
                ]
                if same:
                    continue
            # Not kept in history: presence is read afresh (manager.presence) after a rejoin.
            await manager.broadcast_to_room(
                room, event, event_payload(room, client_id, info), exclude=client_id, history=False
            )
        except Exception:
            logger.warning(
                "could not send %s of client %s to room %r",
                event,
                client_id,
                room[:100],
                exc_info=True,
            )
