"""The exceptions this library raises.

::

    WebSocketError
    ├── EventError            a handler's chosen ``error`` event (connection stays open)
    │   └── RoomLimitError    join_room refused: too many rooms, or a room name too long
    ├── AuthenticationError   bad or missing credentials; closes with 4401
    ├── ConfigurationError    invalid settings or route definitions, at start-up
    ├── BackendError          the membership/delivery backend failed
    ├── EncodeError           an outbound payload is not JSON (NaN, Infinity, unknown type)
    └── ManagerStoppedError   a stopped manager was asked to deliver or change membership
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BackendError",
    "ConfigurationError",
    "EncodeError",
    "EventError",
    "ManagerStoppedError",
    "RoomLimitError",
    "WebSocketError",
]


class WebSocketError(Exception):
    """Base class of every exception raised by fastapi-orcs-ws."""


class EventError(WebSocketError):
    """Raise in a handler to send the client a chosen ``error`` event.

    Example:
        ```python
        async def join(ws, payload: JoinRoom):
            if payload.room.startswith("admin") and not ws.data.user:
                raise EventError("admins only", code="forbidden")
        ```
    """

    def __init__(self, message: str, code: str = "bad_request", **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.extra = extra


class RoomLimitError(EventError):
    """``join_room`` refused: the client is in ``WS_MAX_ROOMS_PER_CLIENT`` rooms already, or
    the room name is longer than ``WS_MAX_ROOM_NAME_LENGTH`` characters.

    An [`EventError`][fastapi_orcs_ws.EventError] with ``code="room_limit"``
    (``ErrorCode.ROOM_LIMIT``): a handler that lets it propagate answers the client with
    ``{"event": "error", "payload": {"message": ..., "code": "room_limit", "limit": N}}`` and
    the connection stays open. ``limit`` is the bound that was reached. Joining a room the
    client is already in is never refused.
    """

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message, code="room_limit", limit=limit)
        self.limit = limit


class AuthenticationError(WebSocketError):
    """Credentials were missing, invalid or expired."""


class ConfigurationError(WebSocketError):
    """A setting or a route definition is invalid."""


class BackendError(WebSocketError):
    """The backend could not complete an operation."""


class EncodeError(WebSocketError, ValueError):
    """An outbound payload cannot be sent as JSON (RFC 8259): a float or ``Decimal`` that is
    NaN or infinite, or an object pydantic cannot serialise.

    Raised by ``send``, ``broadcast`` and the other sending calls, before anything is sent,
    to the code that sent the payload; the message names the event and the problem (with its
    place: ``payload.items[2].price is inf``). ``event`` holds the event's name.
    """

    def __init__(self, message: str, *, event: str | None = None) -> None:
        super().__init__(message)
        self.event = event


class ManagerStoppedError(WebSocketError, RuntimeError):
    """A stopped [`WebSocketManager`][fastapi_orcs_ws.WebSocketManager] was asked to deliver or
    change membership; it restarts only through ``await manager.start()``."""
