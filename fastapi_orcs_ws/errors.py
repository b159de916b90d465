"""The exceptions this library raises.

::

    WebSocketError
    ├── EventError            a handler's chosen ``error`` event (connection stays open)
    ├── AuthenticationError   bad or missing credentials; closes with 4401
    ├── ConfigurationError    invalid settings or route definitions, at start-up
    ├── BackendError          the membership/delivery backend failed
    └── ManagerStoppedError   a stopped manager was asked to deliver or change membership
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BackendError",
    "ConfigurationError",
    "EventError",
    "ManagerStoppedError",
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


class AuthenticationError(WebSocketError):
    """Credentials were missing, invalid or expired."""


class ConfigurationError(WebSocketError):
    """A setting or a route definition is invalid."""


class BackendError(WebSocketError):
    """The backend could not complete an operation."""


class ManagerStoppedError(WebSocketError, RuntimeError):
    """A stopped :class:`~fastapi_orcs_ws.WebSocketManager` was asked to deliver or change
    membership; it restarts only through ``await manager.start()``."""
