"""OpenTelemetry traces for event routes (the ``otel`` extra: ``opentelemetry-api``).

::

    OpenTelemetryTracing().instrument(router)   # the global TracerProvider, or pass one

- The **connection's span** is the handshake's: the span an ASGI middleware opened for the
  WebSocket (OpenTelemetry's ``OpenTelemetryMiddleware``, ``FastAPIInstrumentor``) when there
  is one, else a span ``WS {route}`` this module starts at accept, whose parent is the
  context the handshake's headers carry (``traceparent``, through the global propagator),
  and which ends when the connection does (attribute ``orcs_ws.close_code``).
- **One span per handled event** (``connect`` included), ``WS {route} {event}``, current
  while the handler runs (spans the handler starts are its children), with the attributes
  ``orcs_ws.route``, ``orcs_ws.event``, ``orcs_ws.client_id``, ``orcs_ws.outcome`` (``ok``,
  ``error``, ``closed``) and ``orcs_ws.error_code``, and a **link** to the connection's span.
  Each event span starts its own trace: a connection may live for hours, and one trace per
  event keeps traces small; the link leads to the connection.

Nothing is imported or run unless an app instruments a router: without it, the session pays
one ``is None`` test per event.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ._observer import Observer, T, attach, event_label, outcome_of
from .errors import ConfigurationError
from .protocol import ErrorCode

if TYPE_CHECKING:
    from .connection import Connection
    from .manager import WebSocketManager
    from .routing import EventRoute, WebSocketRouter

__all__ = ["OpenTelemetryTracing"]


class OpenTelemetryTracing(Observer):
    """Spans for connections and handled events.

    Args:
        tracer_provider: the ``TracerProvider`` to use; default the global one
            (``opentelemetry.trace.set_tracer_provider``).

    Raises:
        ConfigurationError: ``opentelemetry-api`` is not installed.

    Example:
        ```python
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        OpenTelemetryTracing().instrument(router)
        FastAPIInstrumentor.instrument_app(app)  # optional: HTTP spans, and the handshake's
        ```
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:  # pragma: no cover - exercised without the extra
            raise ConfigurationError(
                "OpenTelemetryTracing needs opentelemetry-api: pip install 'fastapi-orcs-ws[otel]'"
            ) from None
        from . import __version__

        self._trace = trace
        self._propagate = propagate
        self._root = context.Context()  # an empty context: an event span starts a trace
        self._tracer = trace.get_tracer(
            "fastapi_orcs_ws", __version__, tracer_provider=tracer_provider
        )
        self._links: dict[str, Any] = {}  # client id -> the connection span's SpanContext
        self._spans: dict[str, Any] = {}  # client id -> the span this module started

    def instrument(self, target: WebSocketManager | WebSocketRouter) -> OpenTelemetryTracing:
        """Trace ``target`` (a ``WebSocketRouter`` or its ``WebSocketManager``); returns self.

        Raises:
            TypeError: ``target`` is neither.
        """
        attach(target, self)
        return self

    # -- hooks ----------------------------------------------------------------------------

    def opened(self, conn: Connection, route: EventRoute) -> None:
        attributes = {"orcs_ws.route": route.path, "orcs_ws.client_id": conn.client_id}
        current = self._trace.get_current_span()
        context = current.get_span_context()
        if context.is_valid:  # a middleware's span for this WebSocket: the handshake's
            if current.is_recording():
                current.set_attributes(attributes)
            self._links[conn.client_id] = context
            return
        parent = self._propagate.extract(conn.websocket.headers)
        span = self._tracer.start_span(
            f"WS {route.path}",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes=attributes,
        )
        self._spans[conn.client_id] = span
        self._links[conn.client_id] = span.get_span_context()

    def closed(self, conn: Connection, route: EventRoute) -> None:
        client_id = conn.client_id
        link = self._links.pop(client_id, None)
        own = self._spans.pop(client_id, None)
        code = conn.close_code
        if own is not None:
            if code is not None:
                own.set_attribute("orcs_ws.close_code", code)
            own.end()
            return
        current = self._trace.get_current_span()  # the middleware's span: it ends it itself
        if (
            link is not None
            and code is not None
            and current.get_span_context() == link
            and current.is_recording()
        ):
            current.set_attribute("orcs_ws.close_code", code)

    async def handle(
        self, route: EventRoute, conn: Connection, event: str, call: Awaitable[T]
    ) -> T:
        label = event_label(route, event)
        link = self._links.get(conn.client_id)
        closed_before = conn.closed_by_server
        with self._tracer.start_as_current_span(
            f"WS {route.path} {label}",
            context=self._root,
            kind=self._trace.SpanKind.SERVER,
            links=[self._trace.Link(link)] if link is not None else None,
            attributes={
                "orcs_ws.route": route.path,
                "orcs_ws.event": label,
                "orcs_ws.client_id": conn.client_id,
            },
        ) as span:
            result = await call
            outcome, code = outcome_of(result, closed_before, conn)
            span.set_attribute("orcs_ws.outcome", outcome)
            if code:
                span.set_attribute("orcs_ws.error_code", code)
                if code == ErrorCode.INTERNAL_ERROR:
                    span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, code))
        return result
