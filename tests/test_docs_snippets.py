"""Every code snippet the docs include is a real file; these tests run them."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from fastapi_orcs_ws import CloseCode, ErrorCode, EventError, WebSocketSettings
from fastapi_orcs_ws.testing import EventClient, mint_token

DOCS = Path(__file__).resolve().parent.parent / "docs"
SNIPPETS = sorted((DOCS / "snippets").glob("*.py"))


def test_every_snippet_is_included_and_tested() -> None:
    included = set()
    for page in DOCS.glob("*.md"):
        included |= set(re.findall(r'--8<-- "docs/snippets/([\w.]+)"', page.read_text("utf-8")))
    names = {path.name for path in SNIPPETS}
    assert included <= names, included - names  # no page includes a missing file
    source = Path(__file__).read_text("utf-8")
    tested = set(re.findall(r"docs\.snippets(?:\.| import )(\w+)", source))
    assert {path.stem for path in SNIPPETS} <= tested


def test_quickstart() -> None:
    from docs.snippets.quickstart import app

    with EventClient(app) as client, client.connect("/ws/chat") as alice:
        assert alice.expect("welcome") == {"clientId": alice.client_id}
        with client.connect("/ws/chat") as bob:
            bob.expect("welcome")
            alice.send("message", {"text": "Hello!"})
            assert bob.expect("message") == {"from": alice.client_id, "text": "Hello!"}
        assert client.http.get("/ws-docs").status_code == 200
        doc = client.http.get("/asyncapi.json").json()
        assert doc["operations"]["ws_chat.receive.message"]["description"].startswith("Say")


def test_events() -> None:
    from docs.snippets.events import app

    with EventClient(app) as client, client.connect("/ws/game") as ws:
        assert ws.request("move", {"x": 3, "y": 4}) == {"x": 3, "y": 4}
        assert ws.expect("moved") == {"player": ws.client_id, "x": 3, "y": 4}
        with pytest.raises(EventError) as invalid:
            ws.request("move", {"x": 9, "y": 4})
        assert invalid.value.code == ErrorCode.VALIDATION_ERROR
        assert invalid.value.extra["errors"][0]["loc"] == ["x"]
        with pytest.raises(EventError) as taken:
            ws.request("move", {"x": 0, "y": 0})
        assert taken.value.code == "square_taken" and taken.value.extra["x"] == 0
        assert ws.request("echo", ["a", "b"]) == ["a", "b"]
        assert ws.connection.data.state["game"] == "lobby"  # the dependency ran


def test_getting_started_tests_its_own_app() -> None:
    from docs.snippets import test_quickstart
    from docs.snippets.quickstart import app

    assert test_quickstart.app is app  # the page tests the app it builds
    test_quickstart.test_a_message_reaches_the_room()
    test_quickstart.test_a_message_without_text_is_refused()


def test_rooms_and_the_testing_page() -> None:
    from docs.snippets import test_chat

    test_chat.test_two_clients_in_a_room()
    test_chat.test_ack_round_trip()


def test_rooms_announce_over_http() -> None:
    from docs.snippets.rooms import app

    with TestClient(app) as client:
        assert client.post("/rooms/empty/announce", params={"text": "x"}).json() == {"delivered": 0}


def test_auth() -> None:
    from docs.snippets.auth import app, settings

    assert settings.jwt_secret is not None
    token = mint_token("alice", secret=settings.jwt_secret.get_secret_value())
    with EventClient(app) as client:
        with client.connect("/ws/private", token=token) as ws:
            assert ws.request("whoami") == "alice"
        with client.connect("/ws/private") as anonymous:
            assert anonymous.expect_close() == CloseCode.UNAUTHORIZED


def test_configuration_page_lists_every_setting() -> None:
    page = (DOCS / "configuration.md").read_text("utf-8")
    for name in WebSocketSettings.model_fields:
        assert f"| `{name}` | `WS_{name.upper()}` |" in page, name


def test_protocol_page_lists_every_code() -> None:
    page = (DOCS / "protocol.md").read_text("utf-8")
    for error in ErrorCode:
        assert f"`{error.value}` (`{error.name}`)" in page, error
    for close in CloseCode:
        assert f"| {close.value} | `{close.name}` |" in page, close


def test_security_routes() -> None:
    from docs.snippets.security_routes import app, settings

    assert settings.jwt_secret is not None
    secret = settings.jwt_secret.get_secret_value()
    alice = mint_token("alice", secret=secret, aud="chat")
    with EventClient(app) as client:
        with client.connect("/ws/lobby") as guest:
            assert guest.expect("welcome") == {"name": "guest"}
        with client.connect("/ws/lobby", token=alice, token_via="subprotocol") as member:
            assert member.subprotocol == "token"
            assert member.expect("welcome") == {"name": "Alice"}
        with client.connect("/ws/room", token=alice, token_via="query") as member:
            member.send("say", "hi")
            assert member.expect("said") == {"from": "Alice", "text": "hi"}
        refused = [
            ("/ws/room", None),  # required, no token
            ("/ws/lobby", "garbage"),  # not required, but a bad token
            ("/ws/room", mint_token("alice", secret=secret)),  # no "aud"
            ("/ws/room", mint_token("mallory", secret=secret, aud="chat")),  # loader: None
        ]
        for path, token in refused:
            with client.connect(path, token=token) as ws:
                assert ws.expect_close() == CloseCode.UNAUTHORIZED, (path, token)
        evil = {"Origin": "https://evil.example"}
        with pytest.raises(WebSocketDisconnect), client.connect("/ws/lobby", headers=evil):
            pass  # refused before accept (a browser sees an HTTP 403)
        with client.connect("/ws/lobby", headers={"Origin": "https://chat.example.com"}) as ws:
            assert ws.expect("welcome") == {"name": "guest"}

        http = client.http
        assert http.get("/me", headers={"Authorization": f"Bearer {alice}"}).json() == {
            "id": "alice",
            "name": "Alice",
        }
        assert http.get("/me").status_code == 401
        assert http.get("/greeting").json() == "Hello, guest!"
        greeting = http.get("/greeting", headers={"Authorization": f"Bearer {alice}"})
        assert greeting.json() == "Hello, Alice!"


def test_security_verifier() -> None:
    from docs.snippets.security_verifier import app, sessions

    with EventClient(app) as client:
        with client.connect("/ws/support", token=sessions.open("alice")) as ws:
            assert ws.request("whoami") == "alice"
        for token in ("unknown-session", sessions.open("bob", ttl=-1)):
            with client.connect("/ws/support", token=token) as ws:
                assert ws.expect_close() == CloseCode.UNAUTHORIZED


def test_security_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    user_secret = "users-secret-0123456789-abcdefghijklmnop"
    monkeypatch.setenv("BILLING_PUBLIC_KEY", public_pem)
    monkeypatch.setenv("WS_JWT_SECRET", user_secret)
    sys.modules.pop("docs.snippets.security_keys", None)
    try:
        app = importlib.import_module("docs.snippets.security_keys").app
        service = mint_token(
            "billing",
            secret=private_pem,
            algorithm="ES256",
            aud="ingest",
            iss="https://billing.internal",
        )
        user = mint_token("alice", secret=user_secret)
        with EventClient(app) as client:
            with client.connect("/ws/ingest", token=service) as ws:
                assert ws.request("usage", {"a": 2, "b": 3}) == "billing: 5"
            with client.connect("/ws/users", token=user) as ws:
                ws.assert_nothing_received()
            # Each route accepts only its own kind of token.
            for path, token in (("/ws/ingest", user), ("/ws/users", service)):
                with client.connect(path, token=token) as ws:
                    assert ws.expect_close() == CloseCode.UNAUTHORIZED, path
    finally:
        sys.modules.pop("docs.snippets.security_keys", None)
