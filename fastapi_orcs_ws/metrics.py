"""Prometheus metrics for event routes (the ``metrics`` extra: ``prometheus-client``).

::

    metrics = PrometheusMetrics()        # on prometheus_client.REGISTRY
    metrics.instrument(router)           # a WebSocketRouter or a WebSocketManager
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False)

Counters, gauges and the handler histogram are updated where things happen (a few hooks in
the session and the manager, nothing per recipient of a broadcast). Queued frames and bytes
and the backend's figures (rooms, memberships, publish failures, lost frames, health) are
read when Prometheus scrapes. docs/operations.md lists every metric with its labels.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from ._observer import (
    Observer,
    T,
    attach,
    close_code_label,
    event_label,
    is_ack,
    outcome_of,
    route_path,
)
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .backends.base import BackendStats
    from .connection import Connection
    from .manager import WebSocketManager
    from .routing import EventRoute, WebSocketRouter

__all__ = ["DEFAULT_BUCKETS", "PrometheusMetrics"]

logger = logging.getLogger("fastapi_orcs_ws")

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Handler duration buckets, in seconds."""

_BACKEND_DETAIL_COUNTERS = {
    "reaped_nodes": "Processes this process found dead and reaped (their clients handed over).",
    "claimed_clients": "Clients of dead processes whose disconnect logic this process ran.",
    "reconnects": "Times this process's Redis subscription reconnected.",
}


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - exercised without the extra
        raise ConfigurationError(
            "PrometheusMetrics needs prometheus-client: pip install 'fastapi-orcs-ws[metrics]'"
        ) from None
    return prometheus_client


class PrometheusMetrics(Observer):
    """The metrics of one or more managers, on a Prometheus registry.

    Args:
        registry: the ``prometheus_client.CollectorRegistry`` to register on; default
            ``prometheus_client.REGISTRY`` (what ``make_asgi_app()`` and
            ``start_http_server()`` expose).
        buckets: ``orcs_ws_event_duration_seconds`` buckets, in seconds.
        stats_timeout: seconds a scrape waits for a backend's figures (Redis) before it
            reports ``orcs_ws_backend_up 0``.

    Raises:
        ConfigurationError: ``prometheus-client`` is not installed, or this registry already
            has these metrics (create one ``PrometheusMetrics`` per registry and
            [`instrument`][fastapi_orcs_ws.PrometheusMetrics.instrument] every manager with it).

    Example:
        ```python
        metrics = PrometheusMetrics()
        metrics.instrument(router)
        app.add_route("/metrics", metrics.endpoint, include_in_schema=False)
        ```
    """

    def __init__(
        self,
        registry: Any = None,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        stats_timeout: float = 2.0,
    ) -> None:
        prom = _prometheus()
        self.registry: Any = prom.REGISTRY if registry is None else registry
        self.stats_timeout = stats_timeout
        self.managers: list[WebSocketManager] = []
        """The managers instrumented, in order."""
        self._stats: dict[int, tuple[str, BackendStats | None]] = {}
        self._refreshed: float | None = None
        reg = self.registry
        try:
            self._open = prom.Gauge(
                "orcs_ws_connections_open",
                "WebSocket connections this process holds.",
                ["route"],
                registry=reg,
                multiprocess_mode="livesum",
            )
            self._opened = prom.Counter(
                "orcs_ws_connections_opened",
                "WebSocket connections accepted and registered.",
                ["route"],
                registry=reg,
            )
            self._closed = prom.Counter(
                "orcs_ws_connections_closed",
                "WebSocket connections that ended, by close code (RFC 6455; 1006: no close "
                "frame; 4429: slow consumer).",
                ["route", "code"],
                registry=reg,
            )
            self._refused = prom.Counter(
                "orcs_ws_connections_refused",
                "WebSocket handshakes refused before the connection was served.",
                ["route", "reason"],
                registry=reg,
            )
            self._frames_in = prom.Counter(
                "orcs_ws_frames_received",
                "Text frames received from clients.",
                ["route"],
                registry=reg,
            )
            self._bytes_in = prom.Counter(
                "orcs_ws_received_bytes",
                "Bytes (UTF-8) of the text frames received from clients.",
                ["route"],
                registry=reg,
            )
            self._frames_out = prom.Counter(
                "orcs_ws_frames_sent",
                "Frames handed to local clients by broadcast, broadcast_to_room and "
                "send_to_client (one per recipient).",
                registry=reg,
            )
            self._bytes_out = prom.Counter(
                "orcs_ws_sent_bytes",
                "Bytes (UTF-8) of the frames counted by orcs_ws_frames_sent.",
                registry=reg,
            )
            self._handled = prom.Counter(
                "orcs_ws_events_handled",
                "Events whose handler ran, by outcome: ok, error (an error event was "
                "sent), closed (the handler closed the connection), cancelled.",
                ["route", "event", "outcome"],
                registry=reg,
            )
            self._duration = prom.Histogram(
                "orcs_ws_event_duration_seconds",
                "Time from the start of an event's handler (dependencies included) to its reply.",
                ["route", "event"],
                buckets=tuple(buckets),
                registry=reg,
            )
            self._errors = prom.Counter(
                "orcs_ws_event_errors",
                "Error events sent in answer to a client's frame, by error code.",
                ["route", "event", "code"],
                registry=reg,
            )
            self._acks = prom.Counter(
                "orcs_ws_acks",
                "Acks sent (answers to events that carried an id).",
                ["route", "event"],
                registry=reg,
            )
            self._rate_limited = prom.Counter(
                "orcs_ws_events_rate_limited",
                "Events not handled because their client was over its rate limit.",
                ["route"],
                registry=reg,
            )
            self._slow = prom.Counter(
                "orcs_ws_slow_consumer_disconnects",
                "Clients closed with 4429 because they stopped reading.",
                ["route"],
                registry=reg,
            )
            reg.register(_ScrapeCollector(self))
        except ValueError as exc:  # prometheus-client: "Duplicated timeseries in ..."
            raise ConfigurationError(
                f"{exc}: this registry already has the fastapi-orcs-ws metrics; create one "
                "PrometheusMetrics per registry and call instrument() for every manager"
            ) from None
        self._rx: dict[str, tuple[Any, Any]] = {}

    # -- set-up ---------------------------------------------------------------------------

    def instrument(self, target: WebSocketManager | WebSocketRouter) -> PrometheusMetrics:
        """Observe ``target`` (a ``WebSocketRouter`` or its ``WebSocketManager``); returns self.

        Raises:
            TypeError: ``target`` is neither.
        """
        manager = attach(target, self)
        if manager not in self.managers:
            self.managers.append(manager)
        return self

    # -- exposition -----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read every instrumented manager's backend figures for the next scrape.

        [`endpoint`][fastapi_orcs_ws.PrometheusMetrics.endpoint] calls it before each scrape.
        Exposing the registry another way (``make_asgi_app()``, ``start_http_server()``), call it
        yourself now and then: the backend's figures are those of the last refresh
        (``orcs_ws_stats_age_seconds``).
        """
        for manager in self.managers:
            name = manager.backend.name
            if not manager.started:
                self._stats[id(manager)] = (name, None)
                continue
            try:
                stats = await asyncio.wait_for(manager.backend.stats(), self.stats_timeout)
            except Exception as exc:
                logger.warning(
                    "metrics: the %s backend gave no figures within %g s (%s); reporting "
                    "orcs_ws_backend_up 0",
                    name,
                    self.stats_timeout,
                    type(exc).__name__,
                )
                self._stats[id(manager)] = (name, None)
                continue
            self._stats[id(manager)] = (name, stats)
        self._refreshed = time.monotonic()

    async def endpoint(self, request: Request) -> Response:
        """A Starlette/FastAPI endpoint serving the registry in Prometheus' text format
        (OpenMetrics when the scraper asks for it), after a
        [`refresh`][fastapi_orcs_ws.PrometheusMetrics.refresh].

        With ``PROMETHEUS_MULTIPROC_DIR`` set and the default registry, it serves every
        worker's metrics through ``prometheus_client.multiprocess.MultiProcessCollector``
        (see docs/operations.md for what that mode cannot report).
        """
        prom = _prometheus()
        await self.refresh()
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and registry is prom.REGISTRY:
            from prometheus_client import multiprocess

            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    # -- hooks ----------------------------------------------------------------------------

    def refused(self, route: str, reason: str) -> None:
        self._refused.labels(route, reason).inc()

    def opened(self, conn: Connection, route: EventRoute) -> None:
        self._open.labels(route.path).inc()
        self._opened.labels(route.path).inc()

    def closed(self, conn: Connection, route: EventRoute) -> None:
        self._open.labels(route.path).dec()
        self._closed.labels(route.path, close_code_label(conn)).inc()

    def frame_received(self, route: str, size: int) -> None:
        children = self._rx.get(route)
        if children is None:
            children = self._rx[route] = (
                self._frames_in.labels(route),
                self._bytes_in.labels(route),
            )
        children[0].inc()
        children[1].inc(size)

    def frames_sent(self, count: int, size: int) -> None:
        if count:
            self._frames_out.inc(count)
            self._bytes_out.inc(count * size)

    def protocol_error(self, route: str, code: str) -> None:
        self._errors.labels(route, "other", code).inc()

    def slow_consumer(self, conn: Connection) -> None:
        self._slow.labels(route_path(conn)).inc()

    def rate_limited(self, conn: Connection) -> None:
        self._rate_limited.labels(route_path(conn)).inc()

    async def handle(
        self, route: EventRoute, conn: Connection, event: str, call: Awaitable[T]
    ) -> T:
        closed_before = conn.closed_by_server
        label = event_label(route, event)
        path = route.path
        start = time.perf_counter()
        try:
            reply = await call
        except BaseException:
            self._duration.labels(path, label).observe(time.perf_counter() - start)
            self._handled.labels(path, label, "cancelled").inc()
            raise
        self._duration.labels(path, label).observe(time.perf_counter() - start)
        outcome, code = outcome_of(reply, closed_before, conn)
        self._handled.labels(path, label, outcome).inc()
        if outcome == "error":
            self._errors.labels(path, label, code).inc()
        elif is_ack(reply):
            self._acks.labels(path, label).inc()
        return reply

    # -- scrape time ------------------------------------------------------------------------

    def _snapshot(self) -> Iterator[tuple[str, BackendStats | None]]:
        for manager in self.managers:
            yield self._stats.get(id(manager), (manager.backend.name, None))


class _ScrapeCollector:
    """What is read when Prometheus scrapes: backlogs and the backend's figures."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        from prometheus_client import core

        self._metrics = metrics
        self._families = core

    def describe(self) -> Iterable[Any]:
        return ()  # collected at scrape time only (and never while registering)

    def collect(self) -> Iterator[Any]:
        core = self._families
        metrics = self._metrics
        frames = size = worst = 0
        draining = 0
        for manager in metrics.managers:
            draining = max(draining, int(manager.draining))
            for conn in list(manager._connections.values()):
                queued = conn.queued
                frames += queued
                size += conn.queued_bytes
                worst = max(worst, queued)
        yield core.GaugeMetricFamily(
            "orcs_ws_queued_frames", "Frames waiting to be written to local clients.", frames
        )
        yield core.GaugeMetricFamily(
            "orcs_ws_queued_bytes",
            "Bytes (text characters) waiting to be written to local clients.",
            size,
        )
        yield core.GaugeMetricFamily(
            "orcs_ws_queued_frames_max",
            "The longest backlog of one local client, in frames.",
            worst,
        )
        yield core.GaugeMetricFamily(
            "orcs_ws_draining", "1 while this process drains (refuses new WebSockets).", draining
        )
        rooms = memberships = connections = failures = lost = 0
        up: dict[str, int] = {}
        details: dict[str, int] = {}
        for backend, stats in metrics._snapshot():
            if stats is None:
                up[backend] = 0
                continue
            up[backend] = min(up.get(backend, 1), int(stats.healthy))
            rooms += stats.rooms
            memberships += stats.memberships
            connections += stats.connections
            failures += stats.publish_failures
            lost += stats.frames_lost
            for key in _BACKEND_DETAIL_COUNTERS:
                value = stats.details.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    details[key] = details.get(key, 0) + value
        yield core.GaugeMetricFamily("orcs_ws_rooms", "Rooms (all processes).", rooms)
        yield core.GaugeMetricFamily(
            "orcs_ws_room_memberships", "Room memberships (all processes).", memberships
        )
        yield core.GaugeMetricFamily(
            "orcs_ws_backend_connections", "Connections (all processes).", connections
        )
        healthy = core.GaugeMetricFamily(
            "orcs_ws_backend_up",
            "1 when the backend answered and is healthy at the last refresh, else 0.",
            labels=["backend"],
        )
        for backend, value in sorted(up.items()):
            healthy.add_metric([backend], value)
        yield healthy
        yield core.CounterMetricFamily(
            "orcs_ws_publish_failures",
            "Publishes of this process that never reached the other processes.",
            failures,
        )
        yield core.CounterMetricFamily(
            "orcs_ws_frames_lost",
            "Frames handed to the broker for a process that was not listening, per recipient.",
            lost,
        )
        for key, value in sorted(details.items()):
            yield core.CounterMetricFamily(
                f"orcs_ws_backend_{key}", _BACKEND_DETAIL_COUNTERS[key], value
            )
        refreshed = metrics._refreshed
        if refreshed is not None:
            yield core.GaugeMetricFamily(
                "orcs_ws_stats_age_seconds",
                "Seconds since the backend figures were read (see PrometheusMetrics.refresh).",
                time.monotonic() - refreshed,
            )
