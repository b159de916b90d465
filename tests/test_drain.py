"""Graceful drain (issue 15) on real uvicorn servers: clients are told 1012 over a window
instead of all at once, reconnect to a second node, and every disconnect handler runs."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fastapi_orcs_ws import (
    CloseCode,
    Connection,
    WebSocketManager,
    WebSocketRouter,
    WebSocketSettings,
    health_router,
)
from fastapi_orcs_ws.testing import serve

from .wsclient import client, expect, send

pytestmark = pytest.mark.anyio

CLIENTS = 20
WINDOW = 2.0


def make_node(name: str, ended: list[tuple[int, str]]) -> tuple[FastAPI, WebSocketRouter]:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/ws")

    @route.on("hello")
    async def hello(ws: Connection, payload: Any) -> str:
        return name

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        ended.append((payload["code"], payload["reason"]))

    app = FastAPI()
    app.include_router(router)
    app.include_router(health_router())

    @app.post("/admin/drain")
    async def drain(seconds: float) -> dict[str, int]:
        return {"closed": await router.manager.drain(seconds)}

    return app, router


async def test_a_drain_spreads_1012_over_the_window_and_the_clients_move_to_another_node() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from fastapi_orcs_ws import PrometheusMetrics

    ended_a: list[tuple[int, str]] = []
    app_a, router_a = make_node("A", ended_a)
    app_b, _ = make_node("B", [])
    registry = prometheus_client.CollectorRegistry()
    PrometheusMetrics(registry).instrument(router_a)
    closes: dict[int, tuple[int, str, float]] = {}
    moved: set[int] = set()
    ready = anyio.Event()
    connected: set[int] = set()
    finished = anyio.Event()

    with serve(app_a) as node_a, serve(app_b) as node_b:

        async def roam(i: int) -> None:
            async with client(node_a.ws_url("/ws")) as ws:
                await send(ws, "hello", None, id=i)
                assert (await expect(ws, "ack"))["payload"] == "A"
                connected.add(i)
                if len(connected) == CLIENTS:
                    ready.set()
                try:
                    while True:
                        await ws.recv()
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    closes[i] = (exc.rcvd.code, exc.rcvd.reason, time.monotonic())
            # Told to reconnect elsewhere: the second node takes it.
            async with client(node_b.ws_url("/ws")) as ws:
                await send(ws, "hello", None, id=i)
                assert (await expect(ws, "ack"))["payload"] == "B"
                moved.add(i)
                await finished.wait()

        async with (
            httpx.AsyncClient(base_url=node_a.http_url, timeout=30) as http_a,
            httpx.AsyncClient(base_url=node_b.http_url, timeout=5) as http_b,
            anyio.create_task_group() as tg,
        ):
            for i in range(CLIENTS):
                tg.start_soon(roam, i)
            with anyio.fail_after(20):
                await ready.wait()
            assert (await http_a.get("/health/ready")).status_code == 200

            drained: dict[str, int] = {}

            async def drain() -> None:
                response = await http_a.post("/admin/drain", params={"seconds": WINDOW})
                drained.update(response.json())

            tg.start_soon(drain)
            with anyio.fail_after(10):
                while not router_a.manager.draining:
                    await anyio.sleep(0.01)
            # While draining: no new WebSocket (HTTP 503 before accept), not ready.
            with pytest.raises(InvalidStatus) as refused:
                async with client(node_a.ws_url("/ws")):
                    pass
            assert refused.value.response.status_code == 503
            assert refused.value.response.headers["Retry-After"] == "1"
            readiness = await http_a.get("/health/ready")
            assert readiness.status_code == 503
            assert "draining" in readiness.json()["managers"][0]["problem"]
            assert (await http_b.get("/health/ready")).status_code == 200

            with anyio.fail_after(30):
                while len(moved) < CLIENTS or not drained:
                    await anyio.sleep(0.02)
            finished.set()

    assert drained == {"closed": CLIENTS}
    assert sorted(code for code, _, _ in closes.values()) == [CloseCode.SERVICE_RESTART] * CLIENTS
    assert {reason for _, reason, _ in closes.values()} == {"server restarting"}
    # Every disconnect handler ran, with the code the client was sent.
    assert sorted(ended_a) == [(1012, "server restarting")] * CLIENTS
    assert moved == set(range(CLIENTS))
    # Spread over the window: one close per slot of WINDOW / CLIENTS, the last one in the
    # last slot. A busy machine can only delay closes, so the spread cannot shrink below this.
    times = sorted(at for _, _, at in closes.values())
    assert times[-1] - times[0] >= WINDOW * (CLIENTS - 2) / CLIENTS - 0.05
    busiest = max(sum(1 for t in times if start <= t < start + WINDOW / 10) for start in times)
    assert busiest < CLIENTS / 2, times
    sample = registry.get_sample_value
    assert sample("orcs_ws_connections_refused_total", {"route": "/ws", "reason": "draining"}) == 1
    assert sample("orcs_ws_connections_closed_total", {"route": "/ws", "code": "1012"}) == CLIENTS
    assert sample("orcs_ws_draining") == 1


APP = textwrap.dedent(
    """
    from typing import Any

    from fastapi import FastAPI

    from fastapi_orcs_ws import Connection, WebSocketRouter

    router = WebSocketRouter()
    route = router.ws("/ws")


    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        print("disconnect", payload["code"], flush=True)


    app = FastAPI()
    app.include_router(router)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_uvicorn(app_dir: Path, port: int, drain_seconds: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WS_AUTH_ENABLED": "false", "WS_DRAIN_SECONDS": str(drain_seconds)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "drain_app:app",
            "--app-dir",
            str(app_dir),
            "--port",
            str(port),
            "--ws",
            "websockets-sansio",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("drain_seconds", [WINDOW, 0])
async def test_sigterm_drains_before_uvicorn_shuts_down(
    tmp_path: Path, drain_seconds: float
) -> None:
    (tmp_path / "drain_app.py").write_text(APP)
    port = free_port()
    proc = start_uvicorn(tmp_path, port, drain_seconds)
    url = f"ws://127.0.0.1:{port}/ws"
    count = 10
    closes: list[tuple[int, float]] = []
    try:
        with anyio.fail_after(20):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None, "uvicorn exited"
                    await anyio.sleep(0.05)
        connected = 0

        async def hold() -> None:
            nonlocal connected
            async with client(url) as ws:
                connected += 1
                try:
                    while True:
                        await ws.recv()
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    closes.append((exc.rcvd.code, time.monotonic()))

        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(hold)
            with anyio.fail_after(10):
                while connected < count:
                    await anyio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            if drain_seconds:
                with anyio.fail_after(10):
                    while not closes:
                        await anyio.sleep(0.01)
                # Still listening while it drains, but handing out no new WebSockets.
                with pytest.raises(InvalidStatus) as refused:
                    async with client(url):
                        pass
                assert refused.value.response.status_code == 503
        with anyio.fail_after(30):
            while proc.poll() is None:
                await anyio.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=10)[0].decode()
    # uvicorn re-raises the SIGTERM it caught once it has shut down cleanly.
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert sorted(code for code, _ in closes) == [1012] * count
    assert output.count("disconnect 1012") == count, output
    times = sorted(at for _, at in closes)
    if drain_seconds:
        assert times[-1] - times[0] >= WINDOW * (count - 2) / count - 0.05
    else:  # today's abrupt shutdown, for contrast: uvicorn closes everyone at once
        assert math.isclose(times[-1], times[0], abs_tol=WINDOW / 4)


async def test_stop_drains_when_drain_seconds_is_set() -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False, drain_seconds=0.5))
    router.ws("/ws")
    app = FastAPI()
    app.include_router(router)

    @app.post("/admin/stop")
    async def stop() -> None:
        await router.manager.stop()

    with serve(app) as server:
        async with client(server.ws_url("/ws")) as one, client(server.ws_url("/ws")) as two:
            with anyio.fail_after(10):
                while router.manager.local_connections < 2:
                    await anyio.sleep(0.01)
            async with httpx.AsyncClient(timeout=20) as http:
                assert (await http.post(f"{server.http_url}/admin/stop")).status_code == 200
            for ws in (one, two):
                with pytest.raises(ConnectionClosed) as closed:
                    with anyio.fail_after(5):
                        await ws.recv()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1012  # not 1001: drained, not dropped


async def test_drain_refuses_bad_windows_and_start_ends_the_drain() -> None:
    manager = WebSocketManager()
    async with manager:
        for bad in (-1, math.nan, math.inf):
            with pytest.raises(ValueError, match="seconds >= 0"):
                await manager.drain(bad)
        assert await manager.drain(5) == 0  # nobody to close: returns at once
        assert manager.draining
    assert not manager.started
    await manager.start()
    try:
        assert not manager.draining
    finally:
        await manager.stop()
