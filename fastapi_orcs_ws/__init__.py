"""Real-time WebSocket event routes for FastAPI: named events, rooms, broadcasting, JWT auth."""

from .asyncapi import asyncapi_document, mount_docs
from .auth import (
    Authenticator,
    AuthOptions,
    AuthResult,
    JWTVerifier,
    TokenVerifier,
    User,
    current_user,
    optional_user,
)
from .connection import Connection, ConnectionData, ConnectionState
from .errors import (
    AuthenticationError,
    BackendError,
    ConfigurationError,
    EventError,
    ManagerStoppedError,
    WebSocketError,
)
from .handlers import get_connection
from .manager import Stats, WebSocketManager
from .protocol import CloseCode, ErrorCode
from .routing import EventRoute, WebSocketRouter, get_manager
from .server import run, uvicorn_settings
from .settings import WebSocketSettings
from .typescript import typescript_definitions

__version__ = "0.1.0"

__all__ = [
    "AuthOptions",
    "AuthResult",
    "AuthenticationError",
    "Authenticator",
    "BackendError",
    "CloseCode",
    "ConfigurationError",
    "Connection",
    "ConnectionData",
    "ConnectionState",
    "ErrorCode",
    "EventError",
    "EventRoute",
    "JWTVerifier",
    "ManagerStoppedError",
    "Stats",
    "TokenVerifier",
    "User",
    "WebSocketError",
    "WebSocketManager",
    "WebSocketRouter",
    "WebSocketSettings",
    "__version__",
    "asyncapi_document",
    "current_user",
    "get_connection",
    "get_manager",
    "mount_docs",
    "optional_user",
    "run",
    "typescript_definitions",
    "uvicorn_settings",
]
