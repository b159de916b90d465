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
    EncodeError,
    EventError,
    ManagerStoppedError,
    RoomLimitError,
    WebSocketError,
)
from .handlers import get_connection
from .health import health_router
from .history import HistoryEntry, HistoryPage, JoinResult, Position, RoomHistory
from .limits import RateLimit
from .manager import Stats, WebSocketManager
from .metrics import PrometheusMetrics
from .presence import Presence, PresenceClient
from .protocol import CloseCode, ErrorCode
from .routing import EventRoute, WebSocketRouter, get_manager
from .server import run, uvicorn_settings
from .settings import WebSocketSettings
from .tracing import OpenTelemetryTracing
from .typescript import typescript_definitions

__version__ = "0.1.0"
"""This package's version (PEP 440), as in its metadata."""

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
    "EncodeError",
    "ErrorCode",
    "EventError",
    "EventRoute",
    "HistoryEntry",
    "HistoryPage",
    "JWTVerifier",
    "JoinResult",
    "ManagerStoppedError",
    "OpenTelemetryTracing",
    "Position",
    "Presence",
    "PresenceClient",
    "PrometheusMetrics",
    "RateLimit",
    "RoomHistory",
    "RoomLimitError",
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
    "health_router",
    "mount_docs",
    "optional_user",
    "run",
    "typescript_definitions",
    "uvicorn_settings",
]
