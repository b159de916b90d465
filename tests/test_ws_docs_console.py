"""The "Try it" console of /ws-docs in headless Chromium, against a real uvicorn.

The chat example: connect, send a join, see the ack next to the request and the broadcast in
the live log; a payload the schema refuses is not sent and the problem is shown; the server's
own error comes back next to the request when the check is off. A keyed route behind a router
prefix and a root path: the token goes in the ``["token", JWT]`` subprotocol. And
``WS_DOCS_CONSOLE=false`` leaves the read-only docs.

Screenshots go to ``$WS_DOCS_CONSOLE_SCREENSHOTS`` (``docs/img`` to refresh the docs' images),
else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from examples.chat_app.main import app as chat_app
from fastapi_orcs_ws import Connection, WebSocketRouter, WebSocketSettings
from fastapi_orcs_ws.testing import LiveServer, mint_token, serve
from tests.browser import TIMEOUT_MS, page_opener

pytestmark = pytest.mark.browser

CLOCK = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$")


@pytest.fixture(scope="module")
def chat() -> Iterator[LiveServer]:
    with serve(chat_app) as live:
        yield live


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WS_DOCS_CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_console(open_page: Any, url: str, address: str, seen: list[str] | None = None) -> Any:
    """The page at ``url`` and the console of the route at ``address``.

    ``seen`` collects the URL of every request and WebSocket the page opens.
    """
    page = open_page()
    if seen is not None:
        page.on("request", lambda request: seen.append(request.url))
        page.on("websocket", lambda ws: seen.append(ws.url))
    page.goto(url)
    page.wait_for_selector("body[data-rendered=true]")
    console = page.locator(f'.console[data-console="{address}"]')
    assert console.count() == 1
    return page, console


def connect(console: Any, token: str | None = None) -> None:
    if token is not None:
        console.locator("input.token").fill(token)
    console.locator("button.connect").click()
    console.locator('.status[data-state="open"]').wait_for()


def send(console: Any, event: str, payload: Any) -> None:
    console.locator("select.event-name").select_option(event)
    text = payload if isinstance(payload, str) else json.dumps(payload)
    console.locator("textarea.payload").fill(text)
    console.locator("button.send").click()


def answer(console: Any, request_id: int) -> Any:
    """The request's entry once answered (ack or error)."""
    entry = console.locator(f'.request[data-id="{request_id}"]')
    entry.locator("xpath=self::*[@data-state!='pending']").wait_for()
    return entry


def frames(console: Any, direction: str) -> list[dict[str, Any]]:
    """The frames in the log in one direction, as JSON (only the visible ones)."""
    rows = console.locator(f'ol.log li[data-direction="{direction}"]:visible')
    return [json.loads(rows.nth(i).locator("code").inner_text()) for i in range(rows.count())]


def wait_for_frame(console: Any, text: str) -> None:
    console.locator('ol.log li[data-direction="received"]', has_text=text).first.wait_for()


def test_join_shows_the_ack_and_the_broadcast_in_the_log(
    chat: LiveServer, browser: Any, shots: Path
) -> None:
    requests: list[str] = []
    with page_opener(browser) as open_page:
        _, alice = open_console(open_page, f"{chat.http_url}/ws-docs", "/ws/chat", requests)
        # Pre-filled from the schema's example.
        assert json.loads(alice.locator("textarea.payload").input_value())["room"] == "string"
        connect(alice)
        wait_for_frame(alice, '"welcome"')

        send(alice, "join", {"room": "lobby"})
        joined = answer(alice, 1)
        assert joined.get_attribute("data-state") == "ack"
        assert '"room":"lobby"' in joined.locator(".result").inner_text()
        sent = frames(alice, "sent")
        assert sent == [{"event": "join", "id": 1, "payload": {"room": "lobby"}}]

        # Someone else joins the room: the broadcast reaches Alice's log.
        _, bob = open_console(open_page, f"{chat.http_url}/ws-docs", "/ws/chat")
        connect(bob)
        wait_for_frame(bob, '"welcome"')
        (welcome,) = [f for f in frames(bob, "received") if f["event"] == "welcome"]
        send(bob, "join", {"room": "lobby"})
        assert answer(bob, 1).get_attribute("data-state") == "ack"
        wait_for_frame(alice, welcome["payload"]["clientId"])
        broadcast = [f for f in frames(alice, "received") if f["event"] == "user-joined"]
        assert {"clientId": welcome["payload"]["clientId"], "room": "lobby"} in [
            f["payload"] for f in broadcast
        ]

        send(bob, "message", {"room": "lobby", "text": "hello from the console"})
        wait_for_frame(alice, "hello from the console")

        # Every line has a time stamp; the filter and the direction select narrow the log.
        stamps = alice.locator("ol.log li time")
        assert stamps.count() >= 5
        assert all(CLOCK.match(stamps.nth(i).inner_text()) for i in range(stamps.count()))
        alice.locator("input.log-filter").fill("user-joined")
        shown = [f["event"] for f in frames(alice, "received")]
        assert shown and set(shown) == {"user-joined"}
        assert frames(alice, "sent") == []  # the join frame has no "user-joined" in it
        alice.locator("input.log-filter").fill("")
        alice.locator("select.log-direction").select_option("sent")
        assert alice.locator('ol.log li[data-direction="received"]:visible').count() == 0
        assert len(frames(alice, "sent")) == 1
        alice.locator("select.log-direction").select_option("")
        alice.scroll_into_view_if_needed()
        alice.screenshot(path=str(shots / "ws-docs-console.png"))

    # Offline: the page asked for nothing but itself, and its WebSocket went to the route.
    assert requests == [f"{chat.http_url}/ws-docs", chat.ws_url("/ws/chat")]


def test_a_payload_the_schema_refuses_is_not_sent(
    chat: LiveServer, browser: Any, shots: Path
) -> None:
    with page_opener(browser) as open_page:
        _, console = open_console(open_page, f"{chat.http_url}/ws-docs", "/ws/chat")
        connect(console)
        wait_for_frame(console, '"welcome"')
        problems = console.locator("ul.problems")

        send(console, "join", '{"room": ')
        problems.wait_for()
        assert "not JSON" in problems.inner_text()
        send(console, "join", {"room": ""})
        assert "payload.room: at least 1 character(s)" in problems.inner_text()
        send(console, "join", {"rooom": "lobby"})
        assert "payload.room: required" in problems.inner_text()
        send(console, "message", {"room": "", "text": 42})
        shown = problems.inner_text()
        assert "payload.room: at least 1 character(s)" in shown
        assert "payload.text: expected string, got integer" in shown
        assert "Not sent." in shown
        console.screenshot(path=str(shots / "ws-docs-console-invalid.png"))
        # Nothing was sent, no request is listed.
        assert frames(console, "sent") == []
        assert console.locator(".request").count() == 0

        # With the check off the server judges it: its error shows next to the request.
        console.locator("input.check-schema").uncheck()
        send(console, "join", {"room": ""})
        refused = answer(console, 1)
        assert refused.get_attribute("data-state") == "error"
        text = refused.locator(".result").inner_text()
        assert text.startswith("error validation_error:"), text
        assert "room:" in text and "at least 1 character" in text
        assert problems.is_hidden()


SECRET = "ws-docs-console-secret-0123456789abcdef"


async def say(ws: Connection, payload: str) -> str:
    return f"{ws.data.user.id if ws.data.user else 'anonymous'} said {payload}"


def keyed_app() -> FastAPI:
    router = WebSocketRouter(settings=WebSocketSettings(jwt_secret=SECRET))
    router.ws("/ws/talk", {"say": say})
    app = FastAPI(title="keyed")
    app.include_router(router, prefix="/api")
    return app


def behind_proxy(app: ASGIApp, prefix: str) -> ASGIApp:
    """What a reverse proxy at ``prefix`` plus ``uvicorn --root-path`` give the app."""

    async def proxied(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(prefix + "/"):
            scope = dict(scope, root_path=prefix)
        await app(scope, receive, send)

    return proxied


def test_token_goes_in_the_subprotocol_behind_a_prefix_and_root_path(browser: Any) -> None:
    app = keyed_app()
    with (
        serve(behind_proxy(app, "/proxy"), settings=WebSocketSettings()) as live,
        page_opener(browser) as open_page,
    ):
        seen: list[str] = []
        docs = f"{live.http_url}/proxy/ws-docs"
        _, console = open_console(open_page, docs, "/api/ws/talk", seen)
        url = console.locator("input.ws-url").input_value()
        assert url == f"ws://127.0.0.1:{live.port}/proxy/api/ws/talk"

        connect(console, token=mint_token("alice", secret=SECRET))
        assert "subprotocol token" in console.locator(".status").inner_text()
        send(console, "say", json.dumps("hi"))
        said = answer(console, 1)
        assert said.locator(".result").inner_text() == 'ack "alice said hi"'
        assert seen == [docs, url]  # the token is not in the URL

        console.locator("button.connect").click()  # disconnect
        console.locator('.status[data-state="closed"]').wait_for()
        console.locator("input.token").fill("not-a-jwt")
        console.locator("button.connect").click()
        console.locator('.status[data-state="failed"]').wait_for()
        assert "4401" in console.locator(".status").inner_text()
        assert "token was refused" in console.locator(".status").inner_text()


def test_the_console_offers_the_routes_subprotocols(browser: Any) -> None:
    router = WebSocketRouter(settings=WebSocketSettings(jwt_secret=SECRET))
    router.ws("/ws/talk", {"say": say}, subprotocols=["chat.v2", "chat.v1"])
    app = FastAPI(title="versioned")
    app.include_router(router)
    with serve(app) as live, page_opener(browser) as open_page:
        _, console = open_console(open_page, f"{live.http_url}/ws-docs", "/ws/talk")
        field = console.locator("input.subprotocols")
        assert field.input_value() == "chat.v2, chat.v1"
        connect(console, token=mint_token("alice", secret=SECRET))
        assert "subprotocol chat.v2" in console.locator(".status").inner_text()
        send(console, "say", json.dumps("hi"))
        assert answer(console, 1).locator(".result").inner_text() == 'ack "alice said hi"'
        console.locator("button.connect").click()  # disconnect
        console.locator('.status[data-state="closed"]').wait_for()

        field.fill("chat.v1")
        connect(console)
        assert "subprotocol chat.v1" in console.locator(".status").inner_text()
        console.locator("button.connect").click()
        console.locator('.status[data-state="closed"]').wait_for()

        field.fill("chat.v9")  # one the route does not speak: refused at the handshake
        console.locator("button.connect").click()
        console.locator('.status[data-state="failed"]').wait_for()


def test_the_setting_turns_the_console_off(browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_DOCS_CONSOLE", "false")
    router = WebSocketRouter()
    assert router.settings.docs_console is False
    router.ws("/ws/talk", {"say": say})
    app = FastAPI(title="quiet")
    app.include_router(router)
    with serve(app) as live, page_opener(browser) as open_page:
        page = open_page()
        page.goto(f"{live.http_url}/ws-docs")
        page.wait_for_selector("body[data-rendered=true]", timeout=TIMEOUT_MS)
        # The read-only docs stay; no console, no button, no way to connect from the page.
        assert page.locator('.event[data-event="say"]').count() == 1
        assert page.locator(".console").count() == 0
        assert page.locator("button").count() == 0
        assert "Try it" not in page.locator("main").inner_text()


class Color(StrEnum):
    RED = "red"
    GREEN = "green"


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    lives: int = Field(9, ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"] = "dog"
    good: bool = True


class Order(BaseModel):
    name: str = Field(min_length=2, max_length=5, pattern=r"^[a-z]+$")
    color: Color
    tags: list[str] = Field(default_factory=list, max_length=2)
    pet: Annotated[Cat | Dog, Field(discriminator="kind")] | None = None
    ratio: float = Field(0.5, gt=0, lt=1)
    point: tuple[int, int] = (0, 0)


async def order(ws: Connection, payload: Order) -> None:
    return None


CANDIDATES: list[Any] = [
    {"name": "ab", "color": "red"},
    {"name": "abcdef", "color": "red"},
    {"name": "a", "color": "red"},
    {"name": "AB", "color": "red"},
    {"name": "ab", "color": "blue"},
    {"name": "ab"},
    {"name": 12, "color": "red"},
    {"name": "ab", "color": "green", "tags": ["x", "y"]},
    {"name": "ab", "color": "green", "tags": ["x", "y", "z"]},
    {"name": "ab", "color": "green", "tags": [1]},
    {"name": "ab", "color": "red", "pet": {"kind": "cat", "lives": 3}},
    {"name": "ab", "color": "red", "pet": {"kind": "cat", "lives": 10}},
    {"name": "ab", "color": "red", "pet": {"kind": "dog", "good": False}},
    {"name": "ab", "color": "red", "pet": {"kind": "fish"}},
    {"name": "ab", "color": "red", "pet": None},
    {"name": "ab", "color": "red", "ratio": 1},
    {"name": "ab", "color": "red", "ratio": 0.25},
    {"name": "ab", "color": "red", "point": [1, 2]},
    {"name": "ab", "color": "red", "point": [1]},
    {"name": "ab", "color": "red", "point": [1, "2"]},
    [],
    None,
    "ab",
]


def test_the_checker_agrees_with_pydantic(browser: Any) -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    router.ws("/ws/shop", {"order": order})
    app = FastAPI(title="shop")
    app.include_router(router)
    with serve(app) as live, page_opener(browser) as open_page:
        page, _ = open_console(open_page, f"{live.http_url}/ws-docs", "/ws/shop")
        verdicts = page.evaluate(
            """(values) => {
              const doc = JSON.parse(document.getElementById("asyncapi-document").textContent);
              const message = Object.values(doc.components.messages)
                .find((m) => m.name === "order" && m["x-direction"] === "client-to-server");
              return values.map((v) => window.orcsWsDocs.validate(
                message.payload.properties.payload, v));
            }""",
            CANDIDATES,
        )
    adapter = TypeAdapter(Order)
    for value, problems in zip(CANDIDATES, verdicts, strict=True):
        try:
            adapter.validate_json(json.dumps(value), strict=True)
            valid = True
        except ValidationError:
            valid = False
        assert valid == (problems == []), (value, problems)
