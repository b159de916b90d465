"""End-to-end behaviour against a real uvicorn on 127.0.0.1 with a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed

from fastapi_orcs_ws import Connection, EventError, WebSocketRouter, WebSocketSettings
from fastapi_orcs_ws.testing import serve

from .wsclient import client, expect, numbered, raw_handshake, recv, send, wait_for

pytestmark = pytest.mark.anyio


def make_app(
    settings: WebSocketSettings | None = None,
) -> tuple[FastAPI, WebSocketRouter, list[Any]]:
    """A small app recording lifecycle calls in `log`."""
    log: list[Any] = []
    router = WebSocketRouter(settings=settings or WebSocketSettings())
    room = router.ws("/ws")

    @room.on("connect")
    async def connect(ws: Connection) -> None:
        log.append(("connect", ws.data.client_id))
        await ws.data.manager.join_room(ws.data.client_id, "room")
        await ws.send("hello", {"clientId": ws.data.client_id})

    @room.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        log.append(("disconnect", ws.data.client_id, payload["code"]))

    @room.on("echo")
    async def echo(ws: Connection, payload: Any) -> None:
        await ws.send("echo", payload)

    @room.on("boom")
    async def boom(ws: Connection, payload: Any) -> None:
        raise RuntimeError("secret internals: db password=hunter2")

    @room.on("refuse")
    async def refuse(ws: Connection, payload: Any) -> None:
        raise EventError("you may not", code="forbidden")

    @room.on("blast")
    async def blast(ws: Connection, payload: dict[str, int]) -> None:
        filler = "x" * payload["size"]
        for i in range(payload["count"]):
            await ws.data.manager.broadcast_to_room("room", "n", {"i": i, "pad": filler})

    @room.on("kick")
    async def kick(ws: Connection, payload: dict[str, Any]) -> bool:
        return await ws.data.manager.disconnect(payload["id"], payload["code"], payload["reason"])

    app = FastAPI()
    app.include_router(router)
    return app, router, log


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def test_bad_input_gets_error_events_and_connection_survives() -> None:
    app, _, _ = make_app()
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await expect(ws, "hello")
            cases = [
                ("not json", "invalid_json"),
                ("[" * 100_000 + "]" * 100_000, "invalid_json"),  # deeply nested
                ('{"event": "echo", "payload": NaN}', "invalid_json"),
                ("[1, 2]", "invalid_envelope"),
                ('"just a string"', "invalid_envelope"),
                ('{"payload": 1}', "invalid_envelope"),
                ('{"event": 42}', "invalid_envelope"),
                ('{"event": ""}', "invalid_envelope"),
                ('{"event": "nope"}', "unknown_event"),
                ('{"event": "connect"}', "reserved_event"),
                ('{"event": "disconnect"}', "reserved_event"),
            ]
            for frame, code in cases:
                await ws.send(frame)
                error = await expect(ws, "error")
                assert error["payload"]["code"] == code, (frame[:40], error)
                assert error["payload"]["message"]
            await ws.send(b"\x00\x01binary")
            error = await expect(ws, "error")
            assert error["payload"]["code"] == "unsupported_frame"
            await send(ws, "echo", {"still": "alive"})
            assert (await expect(ws, "echo"))["payload"] == {"still": "alive"}


async def test_handler_exception_is_logged_and_hidden(caplog: pytest.LogCaptureFixture) -> None:
    app, _, _ = make_app()
    with serve(app) as server, caplog.at_level(logging.ERROR, logger="fastapi_orcs_ws"):
        async with client(server.ws_url("/ws")) as a, client(server.ws_url("/ws")) as b:
            await expect(a, "hello")
            await expect(b, "hello")
            await send(a, "boom", None, id="q1")
            error = await expect(a, "error")
            assert error["payload"] == {
                "message": "internal server error",
                "code": "internal_error",
                "event": "boom",
            }
            assert error["id"] == "q1"
            assert "hunter2" not in json.dumps(error)
            # The failing client and the others keep working.
            await send(a, "echo", 1)
            assert (await expect(a, "echo"))["payload"] == 1
            await send(b, "echo", 2)
            assert (await expect(b, "echo"))["payload"] == 2
            await send(a, "refuse", None)
            refused = await expect(a, "error")
            assert refused["payload"]["code"] == "forbidden"
            assert refused["payload"]["message"] == "you may not"
    records = [r for r in caplog.records if r.name == "fastapi_orcs_ws" and r.exc_info]
    assert records, "the handler's exception must be logged with its traceback"
    assert "boom" in records[0].getMessage()
    assert "hunter2" in str(records[0].exc_info[1])


async def test_oversize_frame_closes_1009_from_the_app() -> None:
    # uvicorn's own limit is higher, so the library's check is what fires.
    app, router, log = make_app(WebSocketSettings(max_payload_length=1024))
    with serve(app, ws_max_size=1 << 20) as server:
        async with client(server.ws_url("/ws")) as ws:
            await expect(ws, "hello")
            await send(ws, "echo", "é" * 600)  # 1,200+ bytes but only ~600 characters
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009
        await wait_until(lambda: any(e[0] == "disconnect" for e in log))
    assert [e[2] for e in log if e[0] == "disconnect"] == [1009]
    assert router.manager.local_connections == 0


async def test_oversize_frame_closes_1009_from_uvicorn() -> None:
    app, _, log = make_app(WebSocketSettings(max_payload_length=1024))
    with serve(app) as server:  # uvicorn_settings() sets ws_max_size=1024
        async with client(server.ws_url("/ws"), max_size=None) as ws:
            await expect(ws, "hello")
            await send(ws, "echo", "x" * 2000)
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        await wait_until(lambda: any(e[0] == "disconnect" for e in log))


async def test_dead_peer_is_removed_and_silent_live_peer_is_kept() -> None:
    app, router, log = make_app(WebSocketSettings(idle_timeout=1.0))
    manager = router.manager
    with serve(app) as server:
        async with client(server.ws_url("/ws"), ping_interval=None) as live:
            await expect(live, "hello")
            dead = raw_handshake("127.0.0.1", server.port, "/ws")
            try:
                await wait_until(lambda: manager.local_connections == 2)
                started = time.monotonic()
                # uvicorn pings every 0.5 s and gives up after 0.5 s without a pong.
                await wait_until(lambda: manager.local_connections == 1, timeout=5)
                assert time.monotonic() - started < 3
                stats = await manager.get_stats()
                assert stats.connections == 1
                assert await manager.get_room_clients("room") == {log[0][1]}
                assert sum(1 for e in log if e[0] == "disconnect") == 1
                # The live client said nothing for 3x the idle timeout and is still here.
                await anyio.sleep(3)
                assert manager.local_connections == 1
                await send(live, "echo", "still here")
                assert (await wait_for(live, "echo"))["payload"] == "still here"
            finally:
                dead.close()


async def test_stalled_reader_never_delays_the_others() -> None:
    settings = WebSocketSettings(send_queue_size=64)
    app, router, log = make_app(settings)
    manager = router.manager
    total, size = 1000, 4096
    with serve(app) as server:
        stalled = raw_handshake("127.0.0.1", server.port, "/ws", rcvbuf=4096)
        try:
            async with (
                client(server.ws_url("/ws"), max_size=None) as a,
                client(server.ws_url("/ws"), max_size=None) as b,
                client(server.ws_url("/ws"), max_size=None) as sender,
            ):
                for ws in (a, b, sender):
                    await expect(ws, "hello")
                await wait_until(lambda: manager.local_connections == 4)
                await send(sender, "blast", {"count": total, "size": size})
                for ws in (a, b, sender):
                    assert await numbered(ws, total) == list(range(total))
                await wait_until(lambda: manager.local_connections == 3)
                stats = await manager.get_stats()
                assert stats.slow_consumer_disconnects == 1
                assert stats.connections == 3
                assert [e[2] for e in log if e[0] == "disconnect"] == [4429]
        finally:
            stalled.close()


async def test_kick_with_long_reason_and_invalid_codes() -> None:
    app, router, log = make_app()
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as admin, client(server.ws_url("/ws")) as victim:
            await expect(admin, "hello")
            victim_id = (await expect(victim, "hello"))["payload"]["clientId"]
            reason = "ü" * 200  # 400 bytes: must be cut to at most 123 bytes of valid UTF-8
            await send(admin, "kick", {"id": victim_id, "code": 4000, "reason": reason}, id=1)
            assert (await wait_for(admin, "ack"))["payload"] is True
            with pytest.raises(ConnectionClosed) as closed:
                await recv(victim)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4000
            assert closed.value.rcvd.reason == "ü" * 61
            await wait_until(lambda: len([e for e in log if e[0] == "disconnect"]) == 1)
            assert [e[2] for e in log if e[0] == "disconnect"] == [4000]
            # Kicking someone who is gone says so; a forbidden close code is refused.
            await wait_until(lambda: router.manager.local_connections == 1)
            await send(admin, "kick", {"id": victim_id, "code": 4000, "reason": ""}, id=2)
            assert (await wait_for(admin, "ack"))["payload"] is False
            await send(admin, "kick", {"id": victim_id, "code": 1006, "reason": ""}, id=3)
            error = await wait_for(admin, "error")
            assert error["payload"]["code"] == "internal_error"
            assert error["id"] == 3


async def test_shutdown_closes_clients_and_runs_disconnect_handlers() -> None:
    app, _, log = make_app()
    codes = []
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as a, client(server.ws_url("/ws")) as b:
            await expect(a, "hello")
            await expect(b, "hello")
            server_done = anyio.Event()

            def stop() -> None:
                server.stop()
                server_done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, stop)
                for ws in (a, b):
                    with pytest.raises(ConnectionClosed) as closed:
                        await recv(ws, timeout=10)
                    assert closed.value.rcvd is not None
                    codes.append(closed.value.rcvd.code)
    assert set(codes) <= {1001, 1012}
    assert sorted(e[0] for e in log) == ["connect", "connect", "disconnect", "disconnect"]


def test_raw_handshake_helper_works_with_plain_sockets() -> None:
    # Guards the helper the liveness tests rely on.
    app, _, _ = make_app()
    with serve(app) as server:
        sock = raw_handshake("127.0.0.1", server.port, "/ws")
        try:
            sock.settimeout(5)
            first = sock.recv(2)
            assert first[0] == 0x81  # FIN + text frame: the "hello" event
        finally:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()


async def test_a_reader_that_pauses_gets_everything_in_order_later() -> None:
    # The peer's socket fills up mid-write: the broadcast waits for it (flow control, it
    # makes progress once it reads again), and nothing is lost or reordered for anyone.
    app, router, _ = make_app(WebSocketSettings(send_queue_size=1024))
    total, size = 600, 16384  # ~10 MB: more than loopback's socket buffers hold
    with serve(app) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await anyio.to_thread.run_sync(sock.connect_ex, ("127.0.0.1", server.port))
        async with (
            client(server.ws_url("/ws"), sock=sock, max_size=None, max_queue=4) as paused,
            client(server.ws_url("/ws"), max_size=None) as sender,
        ):
            await expect(paused, "hello")
            await expect(sender, "hello")
            await send(sender, "blast", {"count": total, "size": size})
            # `paused` reads nothing until the sender has seen frames arrive.
            first = await numbered(sender, 50)
            rest, paused_seen = await asyncio.gather(
                numbered(sender, total - 50), numbered(paused, total)
            )
            assert first + rest == list(range(total))
            assert paused_seen == list(range(total))
            stats = await router.manager.get_stats()
            assert stats.slow_consumer_disconnects == 0
            assert stats.connections == 2
