"""examples/notifications against a real uvicorn: per-user delivery, 4401, bearer-only POST."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from fastapi_orcs_ws.testing import LiveServer, serve

from .wsclient import client, expect, recv, send

SECRET = "notifications-example-secret-0123456789abcdef"
MODULE = "examples.notifications.main"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("WS_JWT_SECRET", SECRET)
    for name in ("WS_AUTH_ENABLED", "WS_AUTH_REQUIRED", "WS_JWT_AUDIENCE", "WS_JWT_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    sys.modules.pop(MODULE, None)
    module = importlib.import_module(MODULE)
    yield module
    sys.modules.pop(MODULE, None)


@pytest.fixture
def server(example: ModuleType) -> Iterator[LiveServer]:
    with serve(example.app) as live:
        yield live


def token(user: str, **kwargs: Any) -> str:
    from examples.notifications.mint_token import mint
    from fastapi_orcs_ws import WebSocketSettings

    return mint(user, settings=WebSocketSettings(jwt_secret=SECRET), **kwargs)


async def nothing_arrives(ws: Any, seconds: float = 0.3) -> None:
    with anyio.move_on_after(seconds) as scope:
        frame = await ws.recv()
        pytest.fail(f"unexpected frame {frame!r}")
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_notify_reaches_every_connection_of_the_user_and_nobody_else(
    server: LiveServer,
) -> None:
    url = server.ws_url("/ws/notifications")
    alice, bob = token("alice"), token("bob")
    async with (
        client(f"{url}?token={alice}") as alice1,
        client(url, subprotocols=["token", alice]) as alice2,
        client(url, additional_headers={"Authorization": f"Bearer {bob}"}) as bob1,
        httpx.AsyncClient(base_url=server.http_url, timeout=5) as http,
    ):
        assert alice2.subprotocol == "token"
        assert alice2.response is not None
        assert alice2.response.headers["Sec-WebSocket-Protocol"] == "token"
        for ws in (alice1, alice2, bob1):
            assert (await expect(ws, "unread-count"))["payload"] == {"count": 0}

        response = await http.post(
            "/notify/alice",
            json={"title": "Hello", "body": "from bob"},
            headers={"Authorization": f"Bearer {bob}"},
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"delivered": 2}
        for ws in (alice1, alice2):
            payload = (await expect(ws, "notification"))["payload"]
            assert payload["title"] == "Hello" and payload["sender"] == "bob"
            assert payload["body"] == "from bob" and "createdAt" in payload
        await nothing_arrives(bob1)

        response = await http.post(
            "/notify/carol", json={"title": "x"}, headers={"Authorization": f"Bearer {bob}"}
        )
        assert response.json() == {"delivered": 0}
        await nothing_arrives(alice1, 0.1)

        # Unread count survives reconnects; "read" resets it on every connection.
        async with client(f"{url}?token={alice}") as alice3:
            assert (await expect(alice3, "unread-count"))["payload"] == {"count": 1}
            await send(alice3, "read", id=1)
            frames = [await recv(alice3), await recv(alice3)]
            assert {f["event"] for f in frames} == {"unread-count", "ack"}
        assert (await expect(alice1, "unread-count"))["payload"] == {"count": 0}


@pytest.mark.anyio
async def test_notify_requires_a_bearer_token(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=5) as http:
        body = {"title": "spam"}
        assert (await http.post("/notify/alice", json=body)).status_code == 401
        bad = {"Authorization": "Bearer not-a-token"}
        assert (await http.post("/notify/alice", json=body, headers=bad)).status_code == 401
        expired = {"Authorization": f"Bearer {token('bob', ttl=-10)}"}
        assert (await http.post("/notify/alice", json=body, headers=expired)).status_code == 401
        query = f"/notify/alice?token={token('bob')}"  # no query tokens over HTTP
        assert (await http.post(query, json=body)).status_code == 401


@pytest.mark.anyio
@pytest.mark.parametrize("query", ["", "?token=garbage", "?token={expired}"])
async def test_socket_without_a_valid_token_is_closed_4401(server: LiveServer, query: str) -> None:
    url = server.ws_url("/ws/notifications") + query.format(expired=token("alice", ttl=-10))
    async with client(url) as ws:
        with pytest.raises(ConnectionClosed) as exc:
            with anyio.fail_after(5):
                await ws.recv()
    assert exc.value.rcvd is not None
    assert (exc.value.rcvd.code, exc.value.rcvd.reason) == (4401, "Unauthorized")


def test_example_refuses_to_start_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WS_JWT_SECRET", raising=False)
    monkeypatch.delenv("WS_JWT_PUBLIC_KEY", raising=False)
    monkeypatch.chdir("/")  # no .env
    sys.modules.pop(MODULE, None)
    from fastapi_orcs_ws import ConfigurationError

    with pytest.raises(ConfigurationError, match="WS_JWT_SECRET"):
        importlib.import_module(MODULE)
    sys.modules.pop(MODULE, None)


def test_mint_token_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jose import jwt

    from examples.notifications.mint_token import main

    monkeypatch.setenv("WS_JWT_SECRET", SECRET)
    main(["alice", "--ttl", "60"])
    out, err = capsys.readouterr()
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60
    assert "demo" in err
