"""Prometheus metrics (issue 15): the chat example's /metrics after a scripted session, and
the rules that keep metrics cheap and their labels bounded."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    EventError,
    PrometheusMetrics,
    WebSocketManager,
    WebSocketRouter,
)
from fastapi_orcs_ws._observer import Observer
from fastapi_orcs_ws.testing import EventClient

from .wsclient import client, raw_handshake, recv, send

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROUTE = "/ws/chat"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


class ChatProcess:
    """``uvicorn examples.chat_app.main:app`` in its own process (its own default registry)."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = workdir / "chat.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.chat_app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--ws",
                "websockets-sansio",
                "--ws-per-message-deflate",
                "false",
            ],
            cwd=ROOT,
            env={**os.environ, "WS_AUTH_ENABLED": "false", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}{ROUTE}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chat app exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.http}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("chat app did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[ChatProcess]:
    # No rate limit: the flood that makes a slow consumer is one client's.
    proc = ChatProcess(
        tmp_path,
        WS_SLOW_CONSUMER_TIMEOUT="1",
        WS_SEND_QUEUE_SIZE="16",
        WS_RATE_LIMIT_PER_SECOND="0",
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


async def scrape(http: httpx.AsyncClient) -> dict[Any, float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def until(predicate: Any, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_chat_example_metrics_after_a_scripted_session(chat: ChatProcess) -> None:
    sent_by_a: list[str] = []
    received: list[str] = []  # every frame the server wrote to a and b, as sent
    async with httpx.AsyncClient(base_url=chat.http, timeout=5) as http:

        async def got(ws: Any, event: str) -> dict[str, Any]:
            with anyio.fail_after(5):
                text = await ws.recv()
            received.append(text)
            frame: dict[str, Any] = json.loads(text)
            assert frame["event"] == event, frame
            return frame

        async def say(ws: Any, event: str, payload: Any, **extra: Any) -> None:
            text = json.dumps({"event": event, "payload": payload, **extra})
            sent_by_a.append(text)
            await ws.send(text)

        async def connections() -> int:
            return int((await http.get("/stats")).json()["connections"])

        async with client(chat.ws) as a:
            await got(a, "welcome")  # alone in general: no presence-join for anyone
            async with client(chat.ws) as b:
                b_id = (await got(b, "welcome"))["payload"]["clientId"]
                # b joined general on connect: presence-join (the room's presence events),
                # then the chat's own user-joined, each one fan-out frame, to a.
                assert (await got(a, "presence-join"))["payload"]["clientId"] == b_id
                assert (await got(a, "user-joined"))["payload"] == {
                    "clientId": b_id,
                    "room": "general",
                }
                await say(a, "join", {"room": "r1"}, id=1)  # a is alone in r1: no fan-out
                ack = (await got(a, "ack"))["payload"]
                assert ack == {"room": "r1", "recovered": False, "offset": 0} | {
                    "epoch": ack["epoch"]
                }
                await say(a, "message", {"room": "general", "text": "hi"})
                hi_a, hi_b = await got(a, "message"), await got(b, "message")
                assert hi_a == hi_b and hi_a["payload"]["text"] == "hi"
                await say(a, "message", {"room": "general", "text": ""}, id=2)
                assert (await got(a, "error"))["payload"]["code"] == "validation_error"
                await say(a, "no-such-event", {})
                assert (await got(a, "error"))["payload"]["code"] == "unknown_event"
                # A refusal: a subprotocol the route does not speak (HTTP 403 before accept).
                with pytest.raises(InvalidStatus) as refused:
                    async with client(chat.ws, subprotocols=["chat.v9"]):
                        pass
                assert refused.value.response.status_code == 403

                first = await scrape(http)
                assert value(first, "orcs_ws_connections_open", route=ROUTE) == 2
                assert value(first, "orcs_ws_connections_opened_total", route=ROUTE) == 2
                assert (
                    value(
                        first,
                        "orcs_ws_connections_refused_total",
                        route=ROUTE,
                        reason="subprotocol",
                    )
                    == 1
                )
                assert value(first, "orcs_ws_frames_received_total", route=ROUTE) == 4
                assert value(first, "orcs_ws_received_bytes_total", route=ROUTE) == sum(
                    len(text.encode()) for text in sent_by_a
                )
                # Fan-out: presence-join and user-joined (to a), "hi" (to a and b); and to one
                # connection: two welcomes (ws.send), one ack and two error events.
                assert len(received) == 9
                assert value(first, "orcs_ws_frames_sent_total") == 9
                assert value(first, "orcs_ws_sent_bytes_total") == sum(
                    len(text.encode()) for text in received
                )
                handled = "orcs_ws_events_handled_total"
                assert value(first, handled, route=ROUTE, event="connect", outcome="ok") == 2
                assert value(first, handled, route=ROUTE, event="join", outcome="ok") == 1
                assert value(first, handled, route=ROUTE, event="message", outcome="ok") == 1
                assert value(first, handled, route=ROUTE, event="message", outcome="error") == 1
                errors = "orcs_ws_event_errors_total"
                assert (
                    value(first, errors, route=ROUTE, event="message", code="validation_error") == 1
                )
                assert value(first, errors, route=ROUTE, event="other", code="unknown_event") == 1
                assert value(first, "orcs_ws_acks_total", route=ROUTE, event="join") == 1
                duration = "orcs_ws_event_duration_seconds_count"
                assert value(first, duration, route=ROUTE, event="message") == 2
                assert value(first, "orcs_ws_rooms") == 2  # general, r1
                assert value(first, "orcs_ws_room_memberships") == 3  # a, b in general; a in r1
                assert value(first, "orcs_ws_backend_connections") == 2
                assert value(first, "orcs_ws_backend_up", backend="memory") == 1
                assert value(first, "orcs_ws_queued_frames") == 0
                assert value(first, "orcs_ws_draining") == 0

                # A slow consumer: a member of general that never reads, while a and b do.
                stalled = raw_handshake("127.0.0.1", chat.port, ROUTE, rcvbuf=4096)
                try:
                    await until(lambda: _equals(connections, 3))
                    await _flood_until_dropped(a, b, http)
                finally:
                    stalled.close()
            await until(lambda: _equals(connections, 1))
        await until(lambda: _equals(connections, 0))

        last = await scrape(http)
    assert value(last, "orcs_ws_connections_open", route=ROUTE) == 0
    assert value(last, "orcs_ws_connections_opened_total", route=ROUTE) == 3
    closed = "orcs_ws_connections_closed_total"
    assert value(last, closed, route=ROUTE, code="4429") == 1
    assert value(last, closed, route=ROUTE, code="1000") == 2
    assert value(last, "orcs_ws_slow_consumer_disconnects_total", route=ROUTE) == 1
    assert value(last, "orcs_ws_rooms") == 0
    assert value(last, "orcs_ws_publish_failures_total") == 0
    assert value(last, "orcs_ws_frames_lost_total") == 0


async def _equals(read: Any, expected: int) -> bool:
    return bool(await read() == expected)


async def _flood_until_dropped(a: Any, b: Any, http: httpx.AsyncClient) -> None:
    """Big messages to general until the stalled member is dropped; a and b keep reading."""
    text = "x" * 4000
    async with anyio.create_task_group() as tg:

        async def drain(ws: Any) -> None:
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed:
                pass

        tg.start_soon(drain, b)
        with anyio.fail_after(60):
            while (await http.get("/stats")).json()["slowConsumerDisconnects"] == 0:
                for _ in range(20):
                    await send(a, "message", {"room": "general", "text": text})
                    await recv(a)
        tg.cancel_scope.cancel()


# -- the rules ---------------------------------------------------------------------------


def _app(metrics: PrometheusMetrics) -> tuple[FastAPI, WebSocketRouter]:
    router = WebSocketRouter()
    route = router.ws("/ws")

    @route.on("ping")
    async def ping(ws: Connection, payload: Any) -> str:
        return "pong"

    @route.on("fail")
    async def fail(ws: Connection, payload: Any) -> None:
        raise EventError("nope", code="custom_code")

    @route.on("shout")
    async def shout(ws: Connection, payload: Any) -> int:
        return await ws.data.manager.broadcast("shout", payload)

    metrics.instrument(router)
    app = FastAPI()
    app.include_router(router)
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False)
    return app, router


def test_event_labels_are_bounded_to_the_routes_events() -> None:
    registry = prometheus_client.CollectorRegistry()
    app, _ = _app(PrometheusMetrics(registry))
    with EventClient(app) as events, events.connect("/ws") as ws:
        for i in range(20):
            ws.send(f"random-{i}", {})
            assert ws.expect("error")["code"] == "unknown_event"
        ws.send("fail", {}, id=1)
        assert ws.expect("error")["code"] == "custom_code"
        assert ws.request("ping") == "pong"
    scraped = samples(prometheus_client.generate_latest(registry).decode())
    events_seen = {
        dict(labels)["event"] for name, labels in scraped if name == "orcs_ws_event_errors_total"
    }
    assert events_seen == {"other", "fail"}
    assert (
        value(
            scraped, "orcs_ws_event_errors_total", route="/ws", event="other", code="unknown_event"
        )
        == 20
    )
    assert (
        value(scraped, "orcs_ws_event_errors_total", route="/ws", event="fail", code="custom_code")
        == 1
    )
    assert value(scraped, "orcs_ws_acks_total", route="/ws", event="ping") == 1


def test_a_client_chosen_close_code_is_a_label_only_when_rfc_6455_defines_it() -> None:
    registry = prometheus_client.CollectorRegistry()
    app, _ = _app(PrometheusMetrics(registry))
    with EventClient(app) as events:
        for code in (4999, 4123, 3001, 1000, 1001):
            with events.connect("/ws") as ws:
                ws.close(code)
    # The app has stopped: every session has ended (and been counted).
    scraped = samples(prometheus_client.generate_latest(registry).decode())
    codes = {
        dict(labels)["code"]: v
        for (name, labels), v in scraped.items()
        if name == "orcs_ws_connections_closed_total"
    }
    assert codes == {"other": 3, "1000": 1, "1001": 1}


def test_a_broadcast_is_counted_once_not_per_recipient() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    app, router = _app(metrics)
    calls: list[tuple[int, int]] = []

    class Spy(Observer):
        def frames_sent(self, count: int, size: int) -> None:
            calls.append((count, size))

    from fastapi_orcs_ws._observer import attach

    attach(router, Spy())
    with EventClient(app) as events, contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(events.connect("/ws")) for _ in range(30)]
        assert sessions[0].request("shout", {"n": 1}) == 30
        for ws in sessions:
            ws.expect("shout")
    frame_size = len(json.dumps({"event": "shout", "payload": {"n": 1}}, separators=(",", ":")))
    # One count per fan-out, then the ack to the requester.
    assert calls[0] == (30, frame_size) and len(calls) == 2 and calls[1][0] == 1
    ack_size = calls[1][1]
    scraped = samples(prometheus_client.generate_latest(registry).decode())
    assert value(scraped, "orcs_ws_frames_sent_total") == 31
    assert value(scraped, "orcs_ws_sent_bytes_total") == 30 * frame_size + ack_size


def test_a_manager_without_metrics_has_no_observer() -> None:
    assert WebSocketManager().observer is None


def test_one_registry_holds_one_set_of_metrics() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    with pytest.raises(ConfigurationError, match="one PrometheusMetrics per registry"):
        PrometheusMetrics(registry)
    with pytest.raises(TypeError, match="WebSocketRouter or a WebSocketManager"):
        metrics.instrument(object())  # type: ignore[arg-type]
    # Several managers, one set of metrics: instrument each.
    first, second = WebSocketManager(), WebSocketManager()
    metrics.instrument(first).instrument(second).instrument(first)
    assert metrics.managers == [first, second]
    assert first.observer is metrics


def test_the_endpoint_serves_openmetrics_when_asked() -> None:
    registry = prometheus_client.CollectorRegistry()
    app, _ = _app(PrometheusMetrics(registry))
    with EventClient(app) as events:
        response = events.http.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "orcs_ws_backend_up" in response.text


def test_rate_limited_events_are_counted() -> None:
    from fastapi_orcs_ws import RateLimit

    registry = prometheus_client.CollectorRegistry()
    router = WebSocketRouter()
    route = router.ws("/ws", rate_limit=RateLimit(per_second=0.01, burst=1))

    @route.on("ping")
    async def ping(ws: Connection, payload: Any) -> str:
        return "pong"

    PrometheusMetrics(registry).instrument(router)
    app = FastAPI()
    app.include_router(router)
    with EventClient(app) as events, events.connect("/ws") as ws:
        assert ws.request("ping") == "pong"
        ws.send("ping", None)  # over the rate: not handled, one rate_limited error
        assert ws.expect("error")["code"] == "rate_limited"
    sample = registry.get_sample_value
    assert sample("orcs_ws_events_rate_limited_total", {"route": "/ws"}) == 1
    assert (
        sample("orcs_ws_events_handled_total", {"route": "/ws", "event": "ping", "outcome": "ok"})
        == 1
    )
