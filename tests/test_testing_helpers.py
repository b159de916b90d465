"""The helpers users get in fastapi_orcs_ws.testing."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from jose import jwt
from starlette.websockets import WebSocketDisconnect

from examples.chat_app.main import app as chat_app
from fastapi_orcs_ws import Connection, EventError, WebSocketRouter, WebSocketSettings
from fastapi_orcs_ws.testing import EventClient, mint_token

SECRET = "test-secret-that-is-long-enough-for-hs256"


def test_two_clients_in_a_room() -> None:
    with (
        EventClient(chat_app) as client,
        client.connect("/ws/chat") as alice,
        client.connect("/ws/chat") as bob,
    ):
        alice.request("join", {"room": "blue"})
        bob.request("join", {"room": "blue"})
        alice.send("message", {"room": "blue", "text": "hi"})
        assert bob.expect("message")["text"] == "hi"
        client.assert_room_received("blue", "message", {"text": "hi", "from": alice.client_id})


def test_ack_round_trip_and_error_as_exception() -> None:
    with EventClient(chat_app) as client, client.connect("/ws/chat") as ws:
        answer = ws.request("join", {"room": "red"})
        assert (answer["room"], answer["recovered"], answer["offset"]) == ("red", False, 0)
        assert ws.client_id in client.room_members("red")
        with pytest.raises(EventError) as caught:
            ws.request("join", {"room": ""})
        assert caught.value.code == "validation_error"
        assert caught.value.extra["errors"][0]["loc"] == ["room"]
        assert ws.request("leave", {"room": "red"}) == {"room": "red"}  # still usable


def test_expect_keeps_skipped_frames() -> None:
    with EventClient(chat_app) as client, client.connect("/ws/chat") as ws:
        ws.send("join", {"room": "x"}, id=7)
        # The welcome came first; expect() skips it but keeps it for later.
        assert ws.expect("ack", where=lambda frame: frame["id"] == 7)["room"] == "x"
        event, payload = ws.receive()
        assert event == "welcome" and payload["clientId"] == ws.client_id
        assert [name for name, _ in ws.received] == ["welcome", "ack"]


def test_reads_time_out_instead_of_hanging() -> None:
    with EventClient(chat_app) as client, client.connect("/ws/chat") as ws:
        ws.expect("welcome")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0.2)
        with pytest.raises(TimeoutError, match="no 'nothing' event"):
            ws.expect("nothing", timeout=0.2)
        assert time.monotonic() - started < 2
        ws.assert_nothing_received(0.05)
        assert ws.request("join", {"room": "late"})["room"] == "late"  # nothing was lost


def make_private_app() -> FastAPI:
    router = WebSocketRouter(settings=WebSocketSettings(jwt_secret=SECRET))
    private = router.ws("/private", auth={"required": True})

    @private.on("whoami")
    async def whoami(ws: Connection) -> dict[str, object]:
        return {"sub": ws.data.claims["sub"], "role": ws.data.claims.get("role")}

    app = FastAPI()
    app.include_router(router)
    return app


@pytest.mark.parametrize("via", ["header", "query", "subprotocol"])
def test_mint_token_authenticates_by_every_transport(via: str) -> None:
    token = mint_token("alice", secret=SECRET, role="admin")
    with (
        EventClient(make_private_app()) as client,
        client.connect("/private", token=token, token_via=via) as ws,
    ):
        assert ws.request("whoami") == {"sub": "alice", "role": "admin"}
        if via == "subprotocol":
            assert ws.subprotocol == "token"


def test_mint_token_claims_and_expiry() -> None:
    token = mint_token("bob", secret=SECRET, expires_in=60, aud="chat")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="chat")
    assert claims["sub"] == "bob" and claims["exp"] - claims["iat"] == 60
    assert "exp" not in jwt.get_unverified_claims(mint_token("c", secret=SECRET, expires_in=None))


def test_refused_connection_closes_with_4401() -> None:
    expired = mint_token("alice", secret=SECRET, expires_in=-10)
    with EventClient(make_private_app()) as client:
        for token in (None, expired, "not-a-jwt"):
            # The server accepts, then closes with 4401 so that browsers can read the code.
            with client.connect("/private", token=token) as ws:
                assert ws.expect_close() == 4401


def test_expect_close_returns_the_code() -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/ws")

    @route.on("bye")
    async def bye(ws: Connection) -> None:
        await ws.close(4000, "bye")

    app = FastAPI()
    app.include_router(router)
    with EventClient(app) as client, client.connect("/ws") as ws:
        ws.send("bye")
        assert ws.expect_close() == 4000
        with pytest.raises(WebSocketDisconnect):
            ws.receive(timeout=0.1)
