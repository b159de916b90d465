"""Limits that hold under abuse (issue 12, items 1-3): attacks on a real uvicorn, bounded in
count and time, each asserting the documented refusal and that a normal client is still served."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    RateLimit,
    WebSocketRouter,
    WebSocketSettings,
)
from fastapi_orcs_ws.testing import mint_token, serve

from .wsclient import client, expect, recv, send

pytestmark = pytest.mark.anyio

SECRET = "limits-test-secret-0123456789abcdef"


def app_with(settings: WebSocketSettings, **route_options: Any) -> tuple[FastAPI, WebSocketRouter]:
    router = WebSocketRouter(settings=settings)
    route = router.ws("/ws", **route_options)

    @route.on("ping")
    async def ping(ws: Connection, payload: Any) -> str:
        return "pong"

    app = FastAPI()
    app.include_router(router)
    return app, router


async def refused_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with client(url, **kwargs):
            pass
    return info.value.response.status_code


async def served(ws: Any) -> bool:
    await send(ws, "ping", id="p")
    return (await expect(ws, "ack"))["payload"] == "pong"


async def test_connections_per_ip_and_in_total_are_capped_with_http_429() -> None:
    app, router = app_with(WebSocketSettings(max_connections_per_ip=3, max_connections=5))
    with serve(app) as server:
        url = server.ws_url("/ws")
        async with client(url) as a, client(url) as b, client(url) as c:
            # The attacker's fourth socket from the same address is refused before accept.
            for _ in range(20):
                assert await refused_status(url) == 429
            for ws in (a, b, c):  # the others are untouched
                assert await served(ws)
        async with client(url) as again:  # places are given back on disconnect
            assert await served(again)
        stats = await router.manager.get_stats()
    assert stats.connections_refused == 20


async def test_connections_per_user_are_capped_and_other_users_still_connect() -> None:
    settings = WebSocketSettings(
        jwt_secret=SECRET, max_connections_per_user=2, max_connections_per_ip=0
    )
    app, router = app_with(settings)
    alice = mint_token("alice", secret=SECRET)
    bob = mint_token("bob", secret=SECRET)
    with serve(app) as server:
        url = server.ws_url("/ws")
        protos = ["token", alice]
        async with client(url, subprotocols=protos) as a1, client(url, subprotocols=protos) as a2:
            assert await refused_status(url, subprotocols=protos) == 429
            async with client(url, subprotocols=["token", bob]) as b1:
                assert await served(b1)
            assert await served(a1) and await served(a2)
        assert (await router.manager.get_stats()).connections_refused == 1


async def test_a_flooding_client_is_warned_then_closed_and_others_are_served() -> None:
    app, router = app_with(WebSocketSettings(), rate_limit=RateLimit(per_second=5, burst=10))
    with serve(app) as server:
        url = server.ws_url("/ws")
        async with client(url) as flooder, client(url) as normal:
            for i in range(200):
                try:
                    await send(flooder, "ping", id=i)
                except ConnectionClosed:
                    break
            acks: list[int] = []
            refused: list[int] = []
            with anyio.fail_after(10):
                try:
                    while True:
                        frame = json.loads(await flooder.recv())
                        if frame["event"] == "ack":
                            acks.append(frame["id"])
                        else:
                            assert frame["payload"]["code"] == "rate_limited", frame
                            refused.append(frame["id"])
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    assert (exc.rcvd.code, exc.rcvd.reason) == (1008, "rate limit exceeded")
            assert 10 <= len(acks) <= 12  # the burst, plus what refilled meanwhile
            # Every request before the close was answered, in order: handled, or refused with
            # its own id (so a client's request fails fast); then another burst closes it.
            assert 1 <= len(refused) <= 11
            assert acks + refused == list(range(len(acks) + len(refused)))
            assert await served(normal)
        stats = await router.manager.get_stats()
    assert stats.events_rate_limited > 10


async def test_events_without_an_id_over_the_rate_get_one_warning() -> None:
    app, router = app_with(WebSocketSettings(), rate_limit=RateLimit(per_second=1, burst=3))
    with serve(app) as server:
        async with client(server.ws_url("/ws")) as ws:
            for _ in range(6):  # 3 within the burst, 3 over it: fewer than a burst more
                await send(ws, "ping")
            warning = await expect(ws, "error")  # pings without an id get no ack
            assert warning["payload"]["code"] == "rate_limited" and "id" not in warning
            # Told once: the next frame is the answer to a request made once a token is back.
            await anyio.sleep(warning["payload"]["retry_after"])  # the documented wait
            assert await served(ws)
        assert (await router.manager.get_stats()).events_rate_limited == 3


async def test_rate_limit_from_settings_and_per_route_opt_out() -> None:
    settings = WebSocketSettings(rate_limit_per_second=1, rate_limit_burst=2)
    router = WebSocketRouter(settings=settings)
    limited = router.ws("/limited")
    free = router.ws("/free", rate_limit=False)
    for route in (limited, free):

        @route.on("ping")
        async def ping(ws: Connection, payload: Any) -> str:
            return "pong"

    assert limited.effective_rate_limit == RateLimit(1, 2)
    assert free.effective_rate_limit is None
    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/free")) as ws:
            for i in range(50):
                await send(ws, "ping", id=i)
            assert [(await recv(ws))["id"] for _ in range(50)] == list(range(50))
        async with client(server.ws_url("/limited")) as ws:
            for i in range(3):
                await send(ws, "ping", id=i)
            frames = [await recv(ws) for _ in range(3)]
            assert [f["event"] for f in frames] == ["ack", "ack", "error"]
            assert frames[2]["payload"]["code"] == "rate_limited"
            assert frames[2]["id"] == 2  # the refused request is answered
            assert frames[2]["payload"]["retry_after"] > 0


def test_bad_rate_limits_fail_at_registration() -> None:
    with pytest.raises(ConfigurationError):
        RateLimit(per_second=0, burst=1)
    with pytest.raises(ConfigurationError):
        RateLimit(per_second=1, burst=0)
    with pytest.raises(ConfigurationError, match="rate_limit"):
        WebSocketRouter().ws("/x", rate_limit=10)  # type: ignore[arg-type]


async def test_error_replies_stay_small_whatever_the_input() -> None:
    # 4 MB of wrong items for a `list[int]` payload: the reply is a few KB, not 100 MB.
    router = WebSocketRouter(settings=WebSocketSettings())
    route = router.ws("/ws")

    @route.on("numbers")
    async def numbers(ws: Connection, payload: list[int]) -> int:
        return len(payload)

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        async with client(server.ws_url("/ws"), max_size=None) as ws:
            bad = json.dumps({"event": "numbers", "payload": ["a"] * 800_000, "id": 1})
            assert len(bad) > 4_000_000
            await ws.send(bad)
            with anyio.fail_after(60):
                raw = await ws.recv()
            assert len(raw) < 4096
            assert json.loads(raw)["payload"]["error_count"] == 800_000
            assert await served_numbers(ws)


async def served_numbers(ws: Any) -> bool:
    await send(ws, "numbers", [1, 2, 3], id=2)
    return (await expect(ws, "ack"))["payload"] == 3
