"""Breakers for the hot-path rewrite (issue 9: 648b183, d58edb3, 27a3f71, 866ab9c).

Real uvicorn servers on 127.0.0.1 and real `websockets` clients. The reader-mode routes below
have no `connect` handler, no token expiry and ``concurrency=1``: the connection's own task is
the first reader (docs/lifecycle.md).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import anyio
import pytest
from fastapi import FastAPI

from fastapi_orcs_ws import Connection, WebSocketRouter
from fastapi_orcs_ws.testing import serve

from .wsclient import client, expect, recv, send

pytestmark = pytest.mark.anyio

bound: contextvars.ContextVar[str] = contextvars.ContextVar("bound", default="unset")


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


def binding_app(*, with_connect: bool) -> tuple[FastAPI, list[str]]:
    """An event handler binds a context variable the way ``structlog.contextvars
    .bind_contextvars`` does (set, never reset); the disconnect handler reads it."""
    router = WebSocketRouter()
    route = router.ws("/ws")
    seen: list[str] = []

    if with_connect:

        @route.on("connect")
        async def connect(ws: Connection) -> None:
            pass

    @route.on("bind")
    async def bind(ws: Connection, payload: Any) -> int:
        bound.set(f"bound by event {payload}")
        return 1

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        seen.append(bound.get())

    app = FastAPI()
    app.include_router(router)
    return app, seen


async def run_binding(app: FastAPI, seen: list[str]) -> None:
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "bind", 1, id=1)
            await expect(ws, "ack")
        await wait_until(lambda: bool(seen))


async def test_an_event_handlers_context_does_not_reach_disconnect_with_a_connect_handler() -> None:
    # The control: with a `connect` handler the session is supervised from the start and the
    # readers are child tasks, so the disconnect handler sees the connection's own context.
    app, seen = binding_app(with_connect=True)
    await run_binding(app, seen)
    assert seen == ["unset"]


async def test_an_event_handlers_context_does_not_reach_disconnect() -> None:
    app, seen = binding_app(with_connect=False)
    await run_binding(app, seen)
    assert seen == ["unset"]  # got ['bound by event 1'] at 943543f


async def test_a_context_variable_reset_by_a_handler_does_not_reach_later_events() -> None:
    router = WebSocketRouter()
    route = router.ws("/ws")

    @route.on("scoped")
    async def scoped(ws: Connection, payload: Any) -> str:
        token = bound.set("inside the first handler's with-block")
        try:
            await asyncio.sleep(0.05)  # suspends: reading moves to a new task, made here
        finally:
            bound.reset(token)
        return bound.get()

    @route.on("peek")
    async def peek(ws: Connection, payload: Any) -> str:
        return bound.get()

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "scoped", id=1)
            assert (await recv(ws))["payload"] == "unset"
            await send(ws, "peek", id=2)  # after the first handler ended: handled inline
            assert (await recv(ws))["payload"] == "unset"  # got the first handler's value


@pytest.mark.parametrize("with_connect", [False, True], ids=["reader-mode", "supervised"])
async def test_each_event_runs_in_its_own_context(with_connect: bool) -> None:
    """As each HTTP request does: what one event's handler sets (and never resets) is not
    seen by the next event, by one queued behind a suspended handler, by `disconnect`, or by
    an ASGI middleware after the app returns."""
    router = WebSocketRouter()
    route = router.ws("/ws")
    seen: list[str] = []
    after_app: list[str] = []

    if with_connect:

        @route.on("connect")
        async def connect(ws: Connection) -> None:
            pass

    @route.on("bind")
    async def bind(ws: Connection, payload: Any) -> str:
        bound.set(f"bound by {payload}")
        if payload == "slow":
            await asyncio.sleep(0.05)  # suspends: the next event is queued meanwhile
        return bound.get()

    @route.on("peek")
    async def peek(ws: Connection, payload: Any) -> str:
        return bound.get()

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        seen.append(bound.get())

    app = FastAPI()
    app.include_router(router)

    async def middleware(scope: Any, receive: Any, send_: Any) -> None:
        await app(scope, receive, send_)
        if scope["type"] == "websocket":
            after_app.append(bound.get())

    with serve(middleware, settings=router.settings) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "bind", "fast", id=1)
            assert (await recv(ws))["payload"] == "bound by fast"
            await send(ws, "peek", id=2)
            assert (await recv(ws))["payload"] == "unset"
            await send(ws, "bind", "slow", id=3)
            await send(ws, "peek", id=4)  # arrives while "slow" is suspended
            assert (await recv(ws))["payload"] == "bound by slow"
            assert (await recv(ws))["payload"] == "unset"
        await wait_until(lambda: bool(seen) and bool(after_app))
    assert seen == ["unset"] and after_app == ["unset"]


# -- the direct path: a `(ws, payload)` handler sent without an id is the reader's own call --


def failing_app(caplog: pytest.LogCaptureFixture) -> FastAPI:
    router = WebSocketRouter()
    route = router.ws("/ws")

    @route.on("fail")
    async def fail(ws: Connection, payload: Any) -> None:
        if payload == "later":
            await asyncio.sleep(0.01)  # suspends: finished by the task that started it
        if payload == "cancelled":
            raise asyncio.CancelledError  # raised by the handler, not a cancellation
        if payload == "close":
            from starlette.exceptions import WebSocketException

            raise WebSocketException(4003, "go away")
        raise RuntimeError(f"boom {payload}")

    @route.on("ping")
    async def ping(ws: Connection, payload: Any) -> None:
        await ws.send("pong", payload)

    app = FastAPI()
    app.include_router(router)
    return app


@pytest.mark.parametrize("when", ["at-once", "later", "cancelled"])
async def test_a_direct_handler_that_raises_is_answered_logged_and_the_connection_lives(
    when: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("ERROR", logger="fastapi_orcs_ws")
    with serve(failing_app(caplog)) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "fail", when)  # no id: the reader calls the handler directly
            error = await expect(ws, "error")
            assert error["payload"]["code"] == "internal_error"
            assert error["payload"]["event"] == "fail"
            assert "id" not in error
            await send(ws, "ping", 7)  # the session goes on
            assert (await expect(ws, "pong"))["payload"] == 7
    assert any(
        r.levelname == "ERROR" and "handler for event 'fail' raised" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


async def test_a_direct_handler_that_raises_websocket_exception_closes_with_its_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from websockets.exceptions import ConnectionClosed

    with serve(failing_app(caplog)) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "fail", "close")
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 4003
            assert ws.close_reason == "go away"
