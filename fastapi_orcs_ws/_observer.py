"""The few points where a session and a manager report to metrics and tracing.

A manager's ``observer`` is ``None`` until [`PrometheusMetrics`][fastapi_orcs_ws.PrometheusMetrics]
or [`OpenTelemetryTracing`][fastapi_orcs_ws.OpenTelemetryTracing] instruments it, so an app without
them pays one ``is None`` test at each point. Two observers are chained by `attach`.

Label values are bounded here, once for every observer: an event is named only when the
route has a handler for it (anything else is ``"other"``), and a close code the *client* chose
is named only when RFC 6455 defines it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from .protocol import CloseCode

if TYPE_CHECKING:
    from .connection import Connection
    from .manager import WebSocketManager
    from .routing import EventRoute

__all__ = [
    "REFUSAL_REASONS",
    "Observer",
    "attach",
    "close_code_label",
    "event_label",
    "is_ack",
    "outcome_of",
    "route_path",
    "utf8_size",
]

REFUSAL_REASONS = (
    "auth",
    "caps",
    "draining",
    "handshake",
    "origin",
    "rate_limit",
    "subprotocol",
)
"""Why a WebSocket was refused before it was served (the ``reason`` label)."""

OTHER = "other"
T = TypeVar("T")

# Codes RFC 6455 section 7.4.1 (and the IANA registry up to 1015) defines: a client may pick
# any code 1000-4999, so only these are label values when the client chose the code.
_RFC_CODES = frozenset(range(1000, 1016)) | {int(code) for code in CloseCode}


class Observer:
    """No-op hooks; subclasses override what they need. Every hook must be cheap and must
    not raise (an error in one is a bug in the observer, not in the connection)."""

    def refused(self, route: str, reason: str) -> None:
        """A WebSocket of ``route`` was refused before it was served (``REFUSAL_REASONS``)."""

    def opened(self, conn: Connection, route: EventRoute) -> None:
        """A connection was accepted and registered (before its ``connect`` handler)."""

    def closed(self, conn: Connection, route: EventRoute) -> None:
        """A connection ended; ``conn.close_code`` says how. Runs after ``disconnect``."""

    def frame_received(self, route: str, size: int) -> None:
        """One inbound text frame of ``size`` bytes (UTF-8) for ``route``."""

    def frames_sent(self, count: int, size: int) -> None:
        """One fan-out call wrote (or queued) ``count`` copies of one ``size``-byte frame."""

    def protocol_error(self, route: str, code: str) -> None:
        """A frame was answered with an ``error`` event before any handler ran."""

    def slow_consumer(self, conn: Connection) -> None:
        """``conn`` was dropped with 4429."""

    def rate_limited(self, conn: Connection) -> None:
        """An event of ``conn`` was not handled: its client is over its rate limit."""

    async def handle(
        self, route: EventRoute, conn: Connection, event: str, call: Awaitable[T]
    ) -> T:
        """Run one handled event (``connect`` too): ``await call`` gives the reply frame
        (an ack, an error or None; ``connect`` gives whether it let the client in)."""
        return await call


class _Chain(Observer):
    """Two observers; ``handle`` nests the second inside the first."""

    __slots__ = ("first", "second")

    def __init__(self, first: Observer, second: Observer) -> None:
        self.first = first
        self.second = second

    def refused(self, route: str, reason: str) -> None:
        self.first.refused(route, reason)
        self.second.refused(route, reason)

    def opened(self, conn: Connection, route: EventRoute) -> None:
        self.first.opened(conn, route)
        self.second.opened(conn, route)

    def closed(self, conn: Connection, route: EventRoute) -> None:
        self.first.closed(conn, route)
        self.second.closed(conn, route)

    def frame_received(self, route: str, size: int) -> None:
        self.first.frame_received(route, size)
        self.second.frame_received(route, size)

    def frames_sent(self, count: int, size: int) -> None:
        self.first.frames_sent(count, size)
        self.second.frames_sent(count, size)

    def protocol_error(self, route: str, code: str) -> None:
        self.first.protocol_error(route, code)
        self.second.protocol_error(route, code)

    def slow_consumer(self, conn: Connection) -> None:
        self.first.slow_consumer(conn)
        self.second.slow_consumer(conn)

    def rate_limited(self, conn: Connection) -> None:
        self.first.rate_limited(conn)
        self.second.rate_limited(conn)

    async def handle(
        self, route: EventRoute, conn: Connection, event: str, call: Awaitable[T]
    ) -> T:
        inner = self.second.handle(route, conn, event, call)
        return await self.first.handle(route, conn, event, inner)


def attach(target: Any, observer: Observer) -> WebSocketManager:
    """Make ``observer`` see the connections of ``target`` (a ``WebSocketRouter`` or a
    ``WebSocketManager``), once; a second kind of observer is chained. Returns the manager.

    Raises:
        TypeError: ``target`` is neither.
    """
    from .manager import WebSocketManager

    manager = getattr(target, "manager", target)
    if not isinstance(manager, WebSocketManager):
        raise TypeError(
            f"instrument() takes a WebSocketRouter or a WebSocketManager, not "
            f"{type(target).__name__}"
        )
    _attach(manager, observer)
    return manager


def _attach(manager: WebSocketManager, observer: Observer) -> None:
    current = manager.observer
    if current is None:
        manager.observer = observer
        return
    seen: list[Observer] = []
    stack = [current]
    while stack:
        node = stack.pop()
        if isinstance(node, _Chain):
            stack += [node.first, node.second]
        else:
            seen.append(node)
    if observer in seen:
        return
    manager.observer = _Chain(current, observer)


def event_label(route: EventRoute, event: str) -> str:
    """``event`` when ``route`` handles it, else ``"other"`` (label values stay bounded)."""
    return event if event in route.handlers else OTHER


def close_code_label(conn: Connection) -> str:
    """The close code as a label: any code the server sent; a client's only if RFC 6455
    defines it (``"other"`` for the rest of 1000-4999)."""
    code = conn.close_code
    if code is None:
        return str(int(CloseCode.ABNORMAL))
    if conn.closed_by_server or code in _RFC_CODES:
        return str(code)
    return OTHER


def route_path(conn: Connection) -> str:
    """The path of the event route serving ``conn`` (``""`` for a detached connection)."""
    from ._context import SCOPE_ROUTE

    route = conn.websocket.scope.get(SCOPE_ROUTE)
    path = getattr(route, "path", "")
    return path if isinstance(path, str) else ""


def outcome_of(reply: Any, closed_before: bool, conn: Connection) -> tuple[str, str]:
    """``(outcome, error code)`` of a handled event from its reply frame.

    ``ok`` (an ack or nothing), ``error`` (an ``error`` event; the code it carries) or
    ``closed`` (the handler closed the connection).
    """
    if isinstance(reply, str) and reply.startswith('{"event":"error"'):
        try:
            code = json.loads(reply)["payload"]["code"]
        except (ValueError, KeyError, TypeError):
            code = OTHER
        return "error", str(code)
    if not isinstance(reply, str) and not closed_before and conn.closed_by_server:
        return "closed", ""
    return "ok", ""


def is_ack(reply: Any) -> bool:
    return isinstance(reply, str) and reply.startswith('{"event":"ack"')


def utf8_size(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes (no copy for ASCII text, the usual JSON frame)."""
    return len(text) if text.isascii() else len(text.encode())
