"""OpenTelemetry traces (issue 15): spans from the SDK's in-memory exporter, on a real uvicorn,
with and without OpenTelemetry's ASGI middleware in front."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from fastapi_orcs_ws import (
    Connection,
    EventError,
    OpenTelemetryTracing,
    PrometheusMetrics,
    WebSocketRouter,
)
from fastapi_orcs_ws.testing import serve

from .wsclient import client, expect, send

pytest.importorskip("opentelemetry.sdk")
import anyio.lowlevel
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

pytestmark = pytest.mark.anyio

# A W3C trace context, as a browser's instrumented page would send it (RFC: W3C Trace Context).
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    provider.shutdown()


def make_app(provider: TracerProvider) -> tuple[FastAPI, WebSocketRouter]:
    router = WebSocketRouter()
    route = router.ws("/ws")
    inner = trace.get_tracer("test", tracer_provider=provider)

    @route.on("connect")
    async def connect(ws: Connection) -> None:
        await ws.data.manager.join_room(ws.client_id, "lobby")

    @route.on("work")
    async def work(ws: Connection, payload: Any) -> str:
        with inner.start_as_current_span("database"):  # the handler's own span
            await anyio.lowlevel.checkpoint()
        return "done"

    @route.on("refuse")
    async def refuse(ws: Connection, payload: Any) -> None:
        raise EventError("not allowed", code="forbidden_thing")

    @route.on("crash")
    async def crash(ws: Connection, payload: Any) -> None:
        raise RuntimeError("bug")

    OpenTelemetryTracing(tracer_provider=provider).instrument(router)
    app = FastAPI()
    app.include_router(router)
    return app, router


async def run_script(url: str, router: WebSocketRouter, **connect: Any) -> None:
    async with client(url, **connect) as ws:
        await send(ws, "work", {}, id=1)
        assert (await expect(ws, "ack"))["payload"] == "done"
        await send(ws, "refuse", {}, id=2)
        assert (await expect(ws, "error"))["payload"]["code"] == "forbidden_thing"
        await send(ws, "crash", {}, id=3)
        assert (await expect(ws, "error"))["payload"]["code"] == "internal_error"
        await send(ws, "never-registered", {})
        assert (await expect(ws, "error"))["payload"]["code"] == "unknown_event"
    with anyio.fail_after(10):
        while router.manager.local_connections:
            await anyio.sleep(0.02)


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


async def finished(memory: InMemorySpanExporter, name: str) -> tuple[ReadableSpan, ...]:
    with anyio.fail_after(10):
        while not any(span.name == name for span in memory.get_finished_spans()):
            await anyio.sleep(0.02)
    return memory.get_finished_spans()


async def test_event_spans_link_to_the_handshake_span_that_continues_the_callers_trace(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = exporter
    app, router = make_app(provider)
    with serve(app) as server:
        await run_script(
            server.ws_url("/ws"), router, additional_headers={"traceparent": TRACEPARENT}
        )
        spans = await finished(memory, "WS /ws")

    connection = by_name(spans, "WS /ws")
    assert connection.kind is SpanKind.SERVER
    assert connection.context is not None and connection.parent is not None
    # The handshake's traceparent is the connection span's parent: the caller's trace goes on.
    assert connection.context.trace_id == TRACE_ID
    assert connection.parent.span_id == PARENT_ID and connection.parent.is_remote
    assert connection.attributes is not None
    client_id = connection.attributes["orcs_ws.client_id"]
    assert connection.attributes["orcs_ws.route"] == "/ws"
    assert connection.attributes["orcs_ws.close_code"] == 1000

    expected = {
        "WS /ws connect": ("ok", None),
        "WS /ws work": ("ok", None),
        "WS /ws refuse": ("error", "forbidden_thing"),
        "WS /ws crash": ("error", "internal_error"),
    }
    for name, (outcome, code) in expected.items():
        span = by_name(spans, name)
        assert span.attributes is not None and span.context is not None
        assert span.attributes["orcs_ws.event"] == name.rsplit(" ", 1)[1]
        assert span.attributes["orcs_ws.client_id"] == client_id
        assert span.attributes["orcs_ws.outcome"] == outcome
        assert span.attributes.get("orcs_ws.error_code") == code
        # Its own trace, linked to the connection's span.
        assert span.parent is None
        assert span.context.trace_id != TRACE_ID
        assert [link.context.span_id for link in span.links] == [connection.context.span_id]
        assert span.status.status_code is (
            StatusCode.ERROR if code == "internal_error" else StatusCode.UNSET
        )
    # The handler's own span is a child of its event's span.
    work = by_name(spans, "WS /ws work")
    database = by_name(spans, "database")
    assert database.parent is not None and work.context is not None
    assert database.parent.span_id == work.context.span_id
    # An unknown event runs no handler: no span, and no label beyond the route's events.
    assert not [span for span in spans if "never-registered" in span.name]


async def test_behind_opentelemetry_asgi_middleware_the_middlewares_span_is_the_handshakes(
    exporter: tuple[TracerProvider, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    provider, memory = exporter
    app, router = make_app(provider)

    @app.middleware("http")  # FastAPI's own middleware, beside OpenTelemetry's
    async def stamp(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["x-stamp"] = "1"
        return response

    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)
    caplog.set_level(logging.WARNING)
    with serve(app) as server:
        await run_script(
            server.ws_url("/ws"), router, additional_headers={"traceparent": TRACEPARENT}
        )
        spans = await finished(memory, "WS /ws crash")
        with anyio.fail_after(10):  # the middleware ends its span when the app returns
            while not [
                s
                for s in memory.get_finished_spans()
                if s.kind is SpanKind.SERVER
                and s.context is not None
                and s.context.trace_id == TRACE_ID
            ]:
                await anyio.sleep(0.02)
        spans = memory.get_finished_spans()

    handshake = [
        s
        for s in spans
        if s.kind is SpanKind.SERVER and s.context is not None and s.context.trace_id == TRACE_ID
    ]
    assert len(handshake) == 1, [s.name for s in handshake]
    middleware_span = handshake[0]
    assert middleware_span.parent is not None and middleware_span.parent.span_id == PARENT_ID
    assert middleware_span.attributes is not None
    assert middleware_span.attributes["orcs_ws.route"] == "/ws"
    assert middleware_span.attributes["orcs_ws.close_code"] == 1000
    assert not [s for s in spans if s.name == "WS /ws"]  # no second handshake span
    for name in ("WS /ws connect", "WS /ws work", "WS /ws refuse", "WS /ws crash"):
        span = by_name(spans, name)
        assert middleware_span.context is not None
        assert [link.context.span_id for link in span.links] == [middleware_span.context.span_id]
    # Every send went through the middleware's wrapped send, in its context: no
    # "Failed to detach context" (a contextvar token used in another context).
    problems = [r for r in caplog.records if "detach" in r.getMessage().lower()]
    assert not problems, problems


async def test_metrics_and_tracing_together(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    provider, memory = exporter
    app, router = make_app(provider)
    registry = prometheus_client.CollectorRegistry()
    PrometheusMetrics(registry).instrument(router)
    with serve(app) as server:
        await run_script(server.ws_url("/ws"), router)
        spans = await finished(memory, "WS /ws")
    assert by_name(spans, "WS /ws work").attributes["orcs_ws.outcome"] == "ok"  # type: ignore[index]
    connection = by_name(spans, "WS /ws")
    assert connection.parent is None  # no traceparent: the connection starts a trace
    handled = registry.get_sample_value(
        "orcs_ws_events_handled_total", {"route": "/ws", "event": "work", "outcome": "ok"}
    )
    assert handled == 1
