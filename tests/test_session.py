"""One supervised session per connection (issue 9), on a real uvicorn with real clients.

Each test names the fault it guards against: pongs unread during a long handler, a handler
cancelled by its client's close, frames lost behind a send-wrapping middleware, readers that
keep up closed as slow, unbounded queues, close codes that are not facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import socket
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from fastapi import FastAPI, HTTPException, WebSocketException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fastapi_orcs_ws import (
    Connection,
    ConnectionState,
    ManagerStoppedError,
    WebSocketManager,
    WebSocketRouter,
    WebSocketSettings,
)
from fastapi_orcs_ws.testing import serve

from .wsclient import client, expect, raw_handshake, recv, send, wait_for

pytestmark = pytest.mark.anyio


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def closed_with(ws: Any, timeout: float = 10.0) -> int | None:
    """Read until the server closes; the close code the client received."""
    with anyio.fail_after(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None


# -- 1. keepalive while a handler runs --


async def test_pings_are_answered_while_long_handlers_run() -> None:
    # Pings every 0.5 s with a 0.5 s timeout: each handler runs for 5 ping timeouts. The
    # server must keep reading (pongs) while handlers run, or the client is closed with 1011.
    settings = WebSocketSettings(idle_timeout=1)
    router = WebSocketRouter(settings=settings)
    route = router.ws("/ws")
    released = asyncio.Event()

    @route.on("sleep")
    async def sleep(ws: Connection, payload: Any) -> str:
        await asyncio.sleep(2.5)
        return "slept"

    @route.on("block")
    def block(ws: Connection, payload: Any) -> str:  # a sync handler: runs in a thread
        time.sleep(2.5)
        return "blocked"

    @route.on("wait")
    async def wait(ws: Connection, payload: Any) -> str:
        with anyio.fail_after(10):
            await released.wait()
        return "released"

    @route.on("release")
    async def release(ws: Connection, payload: Any) -> None:
        released.set()

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws, client(server.ws_url("/ws")) as other:
            await send(ws, "sleep", id=1)
            await send(ws, "block", id=2)
            await send(ws, "wait", id=3)
            # The third handler waits for another client; only a live connection gets there.
            await anyio.lowlevel.checkpoint()  # let the frames go out before the release
            acks = [await recv(ws, timeout=10), await recv(ws, timeout=10)]
            await send(other, "release")
            acks.append(await recv(ws, timeout=10))
            assert [(a["event"], a["id"], a["payload"]) for a in acks] == [
                ("ack", 1, "slept"),
                ("ack", 2, "blocked"),
                ("ack", 3, "released"),
            ]
            # Still connected, still served.
            await send(ws, "sleep", id=4)
            assert (await recv(ws, timeout=10))["id"] == 4


# -- 2. a client that closes while its handler runs --


@pytest.mark.parametrize("code", [1000, 1001, 4000])
async def test_a_started_handler_runs_to_the_end_after_its_client_closes(code: int) -> None:
    router = WebSocketRouter()
    route = router.ws("/ws")
    saved: list[str] = []
    ended: list[tuple[int, list[str]]] = []

    @route.on("connect")
    async def connect(ws: Connection) -> None:
        await ws.data.manager.join_room(ws.client_id, "room")

    @route.on("say")
    async def say(ws: Connection, payload: Any) -> None:
        # The room includes the sender, who is gone by now or soon: dropped quietly.
        await ws.data.manager.broadcast_to_room("room", "said", payload)
        await wait_until(lambda: ws.state is ConnectionState.CLOSED)
        await ws.send("too-late", {})  # a send to a closed client is dropped, not raised
        await asyncio.sleep(0.05)  # more work after the close: nothing cancels it
        saved.append(payload["text"])

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        ended.append((payload["code"], list(saved)))

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "say", {"text": "hello"})
            await ws.close(code)
        await wait_until(lambda: bool(ended))
        await anyio.sleep(0.1)  # a second disconnect would show up here
    assert saved == ["hello"]
    assert ended == [(code, ["hello"])]  # once, after the handler, with the client's code


async def test_starlettes_websocket_states_are_kept() -> None:
    # The session reads and writes past Starlette's WebSocket.receive/send while connected
    # (a coroutine less per frame); what those would record must still be recorded.
    router = WebSocketRouter()
    route = router.ws("/ws")
    seen: list[tuple[str, str, str]] = []

    @route.on("ping")
    async def ping(ws: Connection, payload: Any) -> None:
        seen.append(("ping", ws.websocket.client_state.name, ws.websocket.application_state.name))
        await ws.send("pong", payload)
        if payload == "kick":
            await ws.close(4000, "kicked")

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        state = ws.websocket
        seen.append((str(payload["code"]), state.client_state.name, state.application_state.name))

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "ping", 1)
            assert (await expect(ws, "pong"))["payload"] == 1
            await ws.close(1000)
        await wait_until(lambda: len(seen) == 2)
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "ping", "kick")
            assert (await expect(ws, "pong"))["payload"] == "kick"
            assert await closed_with(ws) == 4000
        await wait_until(lambda: len(seen) == 4)
    assert seen[0] == ("ping", "CONNECTED", "CONNECTED")
    assert seen[1] == ("1000", "DISCONNECTED", "CONNECTED")  # the client closed
    assert seen[2] == ("ping", "CONNECTED", "CONNECTED")
    assert seen[3][:1] == ("4000",) and seen[3][2] == "DISCONNECTED"  # the server closed


async def test_a_vanished_peer_is_reported_as_1006() -> None:
    router = WebSocketRouter()
    route = router.ws("/ws")
    ended: list[int] = []

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        ended.append(payload["code"])

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        sock = raw_handshake("127.0.0.1", server.port, "/ws")
        await wait_until(lambda: router.manager.local_connections == 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST, no close frame
        await wait_until(lambda: bool(ended))
    assert ended == [1006]


async def test_server_close_codes_reach_the_disconnect_handler() -> None:
    router = WebSocketRouter()
    route = router.ws("/ws")
    ended: list[tuple[int, str]] = []

    @route.on("kick-me")
    async def kick_me(ws: Connection, payload: Any) -> None:
        await ws.data.manager.disconnect(ws.client_id, 4003, "kicked")

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        ended.append((payload["code"], payload["reason"]))

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "kick-me")
            assert await closed_with(ws) == 4003
        await wait_until(lambda: bool(ended))
    assert ended == [(4003, "kicked")]


# -- 3. middlewares that wrap `send` --

request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var")


class ContextVarSendMiddleware:
    """Wraps `send` the way tracing middlewares do: a context variable set around it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            token = request_var.set("sending")
            await anyio.sleep(0)  # noqa: ASYNC115 - the shape tracing middlewares have
            await send(message)
            request_var.reset(token)  # raises if finished in another context

        await self.app(scope, receive, wrapped)


class CancelScopeSendMiddleware:
    """Wraps `send` in an anyio cancel scope (a per-send timeout)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            with anyio.move_on_after(30):
                await anyio.sleep(0)  # noqa: ASYNC115 - the shape tracing middlewares have
                await send(message)

        await self.app(scope, receive, wrapped)


@pytest.mark.parametrize("middleware", [ContextVarSendMiddleware, CancelScopeSendMiddleware])
async def test_every_frame_arrives_behind_a_send_wrapping_middleware(
    middleware: type, caplog: pytest.LogCaptureFixture
) -> None:
    router = WebSocketRouter()
    route = router.ws("/ws")

    @route.on("connect")
    async def connect(ws: Connection) -> None:
        await ws.data.manager.join_room(ws.client_id, "room")

    @route.on("three")
    async def three(ws: Connection, payload: Any) -> str:
        for i in range(3):
            await ws.send("n", {"i": i})
        await ws.data.manager.broadcast_to_room("room", "b", {"from": payload})
        return "done"

    app = FastAPI()
    app.include_router(router)
    app.add_middleware(middleware)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws, client(server.ws_url("/ws")) as other:
            await wait_until(lambda: router.manager.local_connections == 2)
            await send(ws, "three", "x", id=1)
            await send(ws, "three", "y", id=2)
            frames = [await recv(ws) for _ in range(10)]
            seen = [(f["event"], f.get("id"), f["payload"]) for f in frames]
            expected = []
            for msg_id, who in ((1, "x"), (2, "y")):
                expected += [("n", None, {"i": i}) for i in range(3)]
                expected += [("b", None, {"from": who}), ("ack", msg_id, "done")]
            assert seen == expected
            assert [(await recv(other))["payload"] for _ in range(2)] == [
                {"from": "x"},
                {"from": "y"},
            ]
    assert "different Context" not in caplog.text
    assert "cancel scope" not in caplog.text


# -- 4. readers that keep up are never slow consumers --


def flood_app() -> tuple[FastAPI, WebSocketRouter]:
    # A small queue makes any missing flow control fail fast.
    router = WebSocketRouter(settings=WebSocketSettings(send_queue_size=64))
    route = router.ws("/ws")

    @route.on("join")
    async def join(ws: Connection, payload: Any) -> None:
        await ws.data.manager.join_room(ws.client_id, "room")

    @route.on("flood")
    async def flood(ws: Connection, payload: dict[str, Any]) -> int:
        pad = "x" * 1000
        for i in range(payload["count"]):
            if payload["to"] == "me":
                await ws.send("n", {"i": i, "pad": pad})
            else:
                await ws.data.manager.broadcast_to_room("room", "n", {"i": i, "pad": pad})
        return payload["count"]

    app = FastAPI()
    app.include_router(router)
    return app, router


async def read_all(ws: Any, count: int) -> list[int]:
    seen = []
    with anyio.fail_after(60):
        while len(seen) < count:
            frame = json.loads(await ws.recv())
            if frame["event"] == "n":
                seen.append(frame["payload"]["i"])
    return seen


async def test_ws_send_flood_to_a_reader_that_keeps_up_loses_nothing() -> None:
    app, router = flood_app()
    total = 20_000
    with serve(app) as server:
        async with client(server.ws_url("/ws"), max_queue=4) as ws:
            await send(ws, "flood", {"count": total, "to": "me"}, id=1)
            assert await read_all(ws, total) == list(range(total))
            assert (await expect(ws, "ack"))["payload"] == total
        stats = await router.manager.get_stats()
    assert stats.slow_consumer_disconnects == 0


async def test_broadcast_flood_to_readers_that_keep_up_loses_nothing() -> None:
    app, router = flood_app()
    total = 20_000
    with serve(app) as server:
        async with (
            client(server.ws_url("/ws"), max_queue=4) as a,
            client(server.ws_url("/ws"), max_queue=4) as b,
            client(server.ws_url("/ws"), max_queue=4) as c,
        ):
            for ws in (a, b, c):
                await send(ws, "join", id=0)
                await expect(ws, "ack")
            await send(a, "flood", {"count": total, "to": "room"})
            results = await asyncio.gather(*(read_all(ws, total) for ws in (a, b, c)))
            for seen in results:
                assert seen == list(range(total))
        stats = await router.manager.get_stats()
    assert stats.slow_consumer_disconnects == 0


# -- 5. the send queue is bounded in bytes too, and a stalled member is dropped ------------------


async def test_a_member_that_never_reads_is_dropped_and_the_others_get_everything() -> None:
    settings = WebSocketSettings(slow_consumer_timeout=1, send_queue_bytes=4 * 1024 * 1024)
    router = WebSocketRouter(settings=settings)
    route = router.ws("/ws")
    ended: list[int] = []
    peak = [0]

    @route.on("connect")
    async def connect(ws: Connection) -> None:
        await ws.data.manager.join_room(ws.client_id, "room")

    @route.on("relay")
    async def relay(ws: Connection, payload: dict[str, Any]) -> None:
        big = "y" * (payload["mib"] * 1024 * 1024)
        manager = ws.data.manager
        for i in range(payload["count"]):
            await manager.broadcast_to_room("room", "big", {"i": i, "data": big})
            for cid in await manager.get_room_clients("room"):
                conn = manager.get_connection(cid)
                if conn is not None:
                    peak[0] = max(peak[0], conn.queued_bytes)

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        ended.append(payload["code"])

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        stalled = raw_handshake("127.0.0.1", server.port, "/ws", rcvbuf=4096)
        try:
            async with client(server.ws_url("/ws"), max_size=None) as ws:
                await wait_until(lambda: router.manager.local_connections == 2)
                await send(ws, "relay", {"mib": 2, "count": 8})
                got = []
                with anyio.fail_after(30):
                    while len(got) < 8:
                        frame = json.loads(await ws.recv())
                        got.append(frame["payload"]["i"])
                assert got == list(range(8))
                await wait_until(lambda: ended == [4429])
                assert (await router.manager.get_stats()).slow_consumer_disconnects == 1
        finally:
            stalled.close()
    assert peak[0] <= settings.send_queue_bytes


# -- the manager's lifecycle and shared handlers --


async def test_a_stopped_manager_refuses_work_instead_of_restarting() -> None:
    manager = WebSocketManager()
    async with manager:
        assert await manager.broadcast("x", {}) == 0
    with pytest.raises(ManagerStoppedError, match="stopped"):
        await manager.broadcast("x", {})
    with pytest.raises(ManagerStoppedError):
        await manager.join_room("someone", "room")
    await manager.start()  # an explicit start is allowed (a lifespan that runs again)
    assert await manager.broadcast("x", {}) == 0
    await manager.stop()


async def test_manager_lifecycle_handlers_run_for_routes_without_their_own() -> None:
    manager = WebSocketManager()
    seen: list[tuple[str, Any]] = []

    @manager.on("connect")
    async def connect(ws: Connection) -> None:
        seen.append(("connect", ws.client_id))
        await ws.send("welcome", {})

    @manager.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        seen.append(("disconnect", payload["code"]))

    router = WebSocketRouter(manager=manager)
    router.ws("/ws")
    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await expect(ws, "welcome")
            await ws.close(1000)
        await wait_until(lambda: len(seen) == 2)
    assert seen[0][0] == "connect" and seen[1] == ("disconnect", 1000)


# -- FastAPI's exceptions --


async def test_fastapi_exceptions_in_connect_and_handlers() -> None:
    router = WebSocketRouter()
    route = router.ws("/ws/{kind}")
    ran: list[str] = []

    @route.on("connect")
    async def connect(ws: Connection) -> None:
        kind = ws.websocket.path_params["kind"]
        if kind == "wsexc":
            raise WebSocketException(code=1008, reason="forbidden")
        if kind == "http":
            raise HTTPException(status_code=403, detail="no entry")

    @route.on("after")
    async def after(ws: Connection, payload: Any) -> None:
        ran.append("after")

    @route.on("http")
    async def http(ws: Connection, payload: Any) -> None:
        raise HTTPException(status_code=404, detail="no such room")

    @route.on("close-me")
    async def close_me(ws: Connection, payload: Any) -> None:
        raise WebSocketException(code=4403, reason="not yours")

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws/wsexc")) as ws:
            with contextlib.suppress(ConnectionClosed):  # the close may already be here
                await send(ws, "after")  # sent after a refused connect: never handled
            with anyio.fail_after(5):
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "forbidden")
        async with client(server.ws_url("/ws/http")) as ws:
            assert await closed_with(ws) == 4403
        async with client(server.ws_url("/ws/ok")) as ws:
            await send(ws, "http", id=7)
            reply = await expect(ws, "error")
            assert reply["id"] == 7
            assert reply["payload"]["code"] == "http_error"
            assert reply["payload"]["status"] == 404
            assert reply["payload"]["message"] == "no such room"
            await send(ws, "close-me")
            assert await closed_with(ws) == 4403
    assert ran == []


# -- replies --


async def test_an_unencodable_ack_is_an_error_event_and_the_connection_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = WebSocketRouter()
    route = router.ws("/ws")

    @route.on("bad")
    async def bad(ws: Connection, payload: Any) -> Any:
        return {"value": object()}

    @route.on("good")
    async def good(ws: Connection, payload: Any) -> str:
        return "fine"

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "bad", id=1)
            reply = await expect(ws, "error")
            assert (reply["id"], reply["payload"]["code"]) == (1, "internal_error")
            await send(ws, "good", id=2)
            assert (await expect(ws, "ack"))["payload"] == "fine"
    assert "cannot be sent as JSON" in caplog.text


async def test_a_validation_error_reply_is_bounded_whatever_the_input() -> None:
    router = WebSocketRouter()
    route = router.ws("/ws")

    @route.on("numbers")
    async def numbers(ws: Connection, payload: list[int]) -> int:
        return len(payload)

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws"), max_size=None) as ws:
            await ws.send(json.dumps({"event": "numbers", "payload": ["x"] * 100_000, "id": 1}))
            raw = await asyncio.wait_for(ws.recv(), 30)
            assert len(raw) < 4096
            reply = json.loads(raw)
            assert reply["payload"]["code"] == "validation_error"
            assert reply["payload"]["error_count"] == 100_000
            # Too many to list cheaply: the count alone (pydantic would build 100k dicts).
            assert reply["payload"]["errors"] == []
            assert "100000 problems" in reply["payload"]["message"]
            await ws.send(json.dumps({"event": "numbers", "payload": ["x"] * 50, "id": 2}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert reply["payload"]["error_count"] == 50
            assert len(reply["payload"]["errors"]) == 10  # the first ten, with their places
            assert reply["payload"]["errors"][0]["loc"] == [0]


# -- subprotocols --


async def test_declared_subprotocols_are_selected_beside_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = WebSocketRouter()
    route = router.ws("/ws", subprotocols=["chat.v2", "chat.v1"])
    router.ws("/plain")

    @route.on("hi")
    async def hi(ws: Connection, payload: Any) -> str:
        return "hello"

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws"), subprotocols=["chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v1"
            await send(ws, "hi", id=1)
            assert (await expect(ws, "ack"))["payload"] == "hello"
        async with client(server.ws_url("/ws"), subprotocols=["chat.v1", "chat.v2"]) as ws:
            assert ws.subprotocol == "chat.v1"  # the client's order of preference
        with pytest.raises(InvalidStatus):
            async with client(server.ws_url("/ws"), subprotocols=["graphql-ws"]):
                pass
        with pytest.raises(InvalidStatus):
            async with client(server.ws_url("/plain"), subprotocols=["chat.v1"]):
                pass
    assert "declare them with router.ws(..., subprotocols=[...])" in caplog.text


def test_bad_subprotocol_and_concurrency_declarations_fail_at_registration() -> None:
    from fastapi_orcs_ws import ConfigurationError

    router = WebSocketRouter()
    with pytest.raises(ConfigurationError, match="list of names"):
        router.ws("/a", subprotocols="chat.v1")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="subprotocol"):
        router.ws("/b", subprotocols=["has space"])
    with pytest.raises(ConfigurationError, match="concurrency"):
        router.ws("/c", concurrency=0)


# -- concurrency --


async def test_a_route_may_handle_several_events_of_one_client_at_once() -> None:
    router = WebSocketRouter()
    route = router.ws("/ws", concurrency=2)
    gate = asyncio.Event()

    @route.on("wait")
    async def wait(ws: Connection, payload: Any) -> str:
        with anyio.fail_after(5):  # with one handler at a time this would never be set
            await gate.wait()
        return "waited"

    @route.on("open")
    async def open_gate(ws: Connection, payload: Any) -> str:
        gate.set()
        return "opened"

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "wait", id=1)
            await send(ws, "open", id=2)
            acks = {(await recv(ws))["id"], (await recv(ws))["id"]}
            assert acks == {1, 2}


async def test_the_inbound_queue_holds_a_flood_without_losing_events() -> None:
    # A client sends far more than the inbound queue holds while a handler is slow: the
    # reader waits (TCP backpressure), nothing is dropped, order is kept.
    router = WebSocketRouter(settings=WebSocketSettings(inbound_queue_size=4))
    route = router.ws("/ws", rate_limit=False)
    got: list[int] = []
    first = threading.Event()

    @route.on("n")
    async def n(ws: Connection, payload: int) -> None:
        if payload == 0:
            await asyncio.sleep(0.3)
            first.set()
        got.append(payload)

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            for i in range(500):
                await send(ws, "n", i)
            await send(ws, "n", 500, id="last")
            await wait_for(ws, "ack", timeout=20)
    assert got == list(range(501))


@pytest.mark.parametrize("suspends", [False, True], ids=["inline", "after-a-wait"])
async def test_a_cancelled_error_a_handler_raises_is_its_failure_not_a_shutdown(
    suspends: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that awaits a cancelled future gets CancelledError while nothing cancels the
    connection: the client gets internal_error and the connection goes on."""
    router = WebSocketRouter()
    route = router.ws("/ws")

    @route.on("bad")
    async def bad(ws: Connection, payload: Any) -> None:
        if suspends:
            await asyncio.sleep(0)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    @route.on("ping")
    async def ping(ws: Connection, payload: Any) -> str:
        return "pong"

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "bad", id=1)
            reply = await recv(ws)
            assert (reply["id"], reply["payload"]["code"]) == (1, "internal_error")
            await send(ws, "ping", id=2)
            assert (await recv(ws))["payload"] == "pong"
    assert "handler for event 'bad' raised" in caplog.text
