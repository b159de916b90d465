"""Every code snippet the docs include is a real file; these tests run them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

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
