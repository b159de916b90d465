"""The chat example in real headless Chromium (Playwright, sync API).

- the spec's JavaScript client code, unchanged, talks to examples/chat_app;
- two pages of the chat UI talk to each other (message, typing indicator, user-left);
- the UI's room switcher, visible errors, and a screenshot.

Playwright drives the Debian ``/usr/bin/chromium``; without it these tests are skipped.
The sync API is used from plain test functions so it never meets anyio's event loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import TIMEOUT_MS, page_opener, playwright_sync_api

pytestmark = pytest.mark.browser

ISO_8601 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"

# The "Client-Side Connection" snippet of the spec (websocket-support.md), verbatim.
SPEC_CLIENT = """\
const ws = new WebSocket("ws://localhost:42069/ws/chat");

ws.onopen = () => {
  console.log("Connected!");

  // Send a message
  ws.send(
    JSON.stringify({
      event: "message",
      payload: { text: "Hello!" },
    }),
  );
};

ws.onmessage = (event) => {
  const { event: eventName, payload } = JSON.parse(event.data);
  console.log(`Received ${eventName}:`, payload);
};
"""

# Records every console.log call's arguments, structured, before the spec code runs.
RECORD_CONSOLE = """\
window.__logged = [];
const __log = console.log.bind(console);
console.log = (...args) => { window.__logged.push(args); __log(...args); };
"""

sync_api = playwright_sync_api()  # skips this module without Chromium or Playwright
Browser = sync_api.Browser
Page = sync_api.Page
expect = sync_api.expect

from examples.chat_app.main import app  # noqa: E402
from fastapi_orcs_ws.testing import LiveServer, serve  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with serve(app) as live:
        yield live


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Any]:
    """Open pages, each in its own browser context (like two users); all closed afterwards.

    Any uncaught JavaScript error in a page fails the test.
    """
    with page_opener(browser, viewport={"width": 1000, "height": 640}) as open_page:
        yield open_page


def open_chat(new_page: Any, server: LiveServer) -> tuple[Page, str]:
    """Open the chat UI, wait until it is connected, return the page and its clientId."""
    page = new_page()
    page.goto(server.http_url + "/")
    expect(page.locator("#status")).to_have_text("Connected")
    client_id = page.locator("#client-id")
    expect(client_id).not_to_have_text("—")
    return page, client_id.inner_text()


def system_lines(page: Page, text: str) -> Any:
    return page.locator("#messages li[data-kind=system]", has_text=text)


def test_spec_client_code_unchanged_talks_to_chat_app(new_page: Any, server: LiveServer) -> None:
    # The spec hard-codes ws://localhost:42069; serve() picks a free port, so the one and
    # only change is this textual replacement of the URL's host:port. The rest runs as written.
    spec_url = "ws://localhost:42069"
    assert SPEC_CLIENT.count(spec_url) == 1
    script = SPEC_CLIENT.replace(spec_url, server.ws_url(""))

    page = new_page()
    # A same-origin page of the server (not about:blank), as a real page would be.
    page.goto(server.http_url + "/stats")
    page.add_script_tag(content=RECORD_CONSOLE)
    page.add_script_tag(content=script)

    page.wait_for_function(
        """() => window.__logged.some(([label, payload]) =>
              label === "Received message:" && payload && payload.text === "Hello!")""",
        timeout=TIMEOUT_MS,
    )
    logged: list[list[Any]] = page.evaluate("window.__logged")

    assert logged[0] == ["Connected!"]
    received = [(args[0], args[1]) for args in logged[1:]]
    labels = [label for label, _ in received]
    assert labels[0] == "Received welcome:", received
    welcome = received[0][1]
    assert welcome["message"] == "Welcome to chat!"
    assert isinstance(welcome["clientId"], str) and welcome["clientId"]

    message = next(payload for label, payload in received if label == "Received message:")
    # The spec's keys, plus "room" (our addition, which the spec's client simply ignores).
    assert set(message) == {"from", "text", "timestamp", "room"}
    assert message["room"] == "general"
    assert message["from"] == welcome["clientId"]
    assert message["text"] == "Hello!"
    assert re.fullmatch(ISO_8601, message["timestamp"]), message
    assert "Received error:" not in labels


def test_two_pages_talk_to_each_other(new_page: Any, server: LiveServer) -> None:
    page_b, id_b = open_chat(new_page, server)
    page_a, id_a = open_chat(new_page, server)
    assert id_a != id_b

    # B is told that A arrived.
    expect(system_lines(page_b, f"{id_a} joined")).to_have_count(1)

    # A types: B shows the typing indicator.
    page_a.locator("#text").press_sequentially("hi B <b>not bold</b>")
    expect(page_b.locator("#typing")).to_have_text(f"{id_a} is typing…")
    expect(page_a.locator("#typing")).to_have_text("")

    # A sends: B shows the message (as text, never as markup), the indicator goes away.
    page_a.locator("#send").click()
    expect(page_a.locator("#text")).to_have_value("")
    in_b = page_b.locator("#messages li[data-kind=message]")
    expect(in_b).to_have_count(1)
    expect(in_b.locator(".from")).to_have_text(id_a)
    expect(in_b.locator(".room")).to_have_text("#general")
    expect(in_b.locator(".text")).to_have_text("hi B <b>not bold</b>")
    expect(in_b.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
    expect(in_b.locator("b")).to_have_count(0)
    expect(page_b.locator("#typing")).to_have_text("")
    # The sender sees its own message once, marked as its own.
    expect(page_a.locator("#messages li.msg.mine .text")).to_have_text("hi B <b>not bold</b>")

    # B answers with Enter.
    page_b.locator("#text").fill("hello A")
    page_b.locator("#text").press("Enter")
    expect(page_a.locator("#messages li[data-kind=message] .text")).to_have_text(
        ["hi B <b>not bold</b>", "hello A"]
    )

    # A goes away: B sees it leave.
    page_a.close()
    expect(system_lines(page_b, f"{id_a} left")).to_have_count(1)
    expect(page_b.locator("#status")).to_have_text("Connected")


def test_room_switcher_join_and_leave(new_page: Any, server: LiveServer) -> None:
    page_a, _ = open_chat(new_page, server)
    page_b, _ = open_chat(new_page, server)
    for page in (page_a, page_b):
        page.locator("#new-room").fill("random")
        page.locator("#join").click()
        expect(page.locator("#room")).to_have_value("random")
        expect(page.locator("#room option")).to_have_text(["general", "random"])
        expect(page.locator("#messages li", has_text="You joined random")).to_have_count(1)
    expect(page_a.locator("#leave")).to_be_enabled()

    # A message to "random" reaches B, who is in the room.
    page_a.locator("#text").fill("in random")
    page_a.locator("#send").click()
    expect(page_b.locator("#messages li[data-kind=message] .text")).to_have_text(["in random"])

    # B leaves "random"; A's next message there no longer reaches B.
    page_b.locator("#leave").click()
    expect(page_b.locator("#room")).to_have_value("general")
    expect(page_b.locator("#room option")).to_have_text(["general"])
    expect(page_b.locator("#leave")).to_be_disabled()
    page_a.locator("#text").fill("after B left")
    page_a.locator("#send").click()
    expect(page_a.locator("#messages li[data-kind=message] .text")).to_have_text(
        ["in random", "after B left"]
    )
    # Then one to "general", which B is still in: it arrives, the "random" one never did.
    page_a.locator("#room").select_option("general")
    page_a.locator("#text").fill("in general")
    page_a.locator("#send").click()
    expect(page_b.locator("#messages li[data-kind=message] .text")).to_have_text(
        ["in random", "in general"]
    )


def test_server_errors_are_shown(new_page: Any, server: LiveServer) -> None:
    page, _ = open_chat(new_page, server)
    # A room name the server refuses (longer than 100 characters): the error is visible.
    page.locator("#new-room").evaluate("el => el.removeAttribute('maxlength')")
    page.locator("#new-room").fill("x" * 101)
    page.locator("#join").click()
    error = page.locator("#messages li[data-kind=error]")
    expect(error).to_have_count(1)
    expect(error).to_have_attribute("role", "alert")
    expect(error).to_contain_text("validation_error")
    expect(page.locator("#room option")).to_have_text(["general"])
    expect(page.locator("#status")).to_have_text("Connected")


def test_reconnects_with_backoff_and_rejoins_rooms(new_page: Any, server: LiveServer) -> None:
    page = new_page()
    routes: list[Any] = []

    def forward(route: Any) -> None:  # pass the page's socket through to the real server
        route.connect_to_server()
        routes.append(route)

    page.route_web_socket(re.compile(r"/ws/chat(\?|$)"), forward)
    page.goto(server.http_url + "/")
    expect(page.locator("#status")).to_have_text("Connected")
    first_id = page.locator("#client-id").inner_text()
    page.locator("#new-room").fill("random")
    page.locator("#join").click()
    expect(page.locator("#room")).to_have_value("random")

    # The connection drops (as on a server restart): the UI says so, waits, reconnects.
    routes[0].close(code=1012, reason="Service Restart")
    expect(page.locator("#messages li", has_text="Disconnected (code 1012")).to_have_count(1)
    expect(page.locator("#status")).to_have_text("Connected")
    expect(page.locator("#client-id")).not_to_have_text(first_id)
    assert len(routes) == 2
    second_id = page.locator("#client-id").inner_text()

    # It is back in "random" on the new connection: a message there reaches it.
    other, _ = open_chat(new_page, server)
    other.locator("#new-room").fill("random")
    other.locator("#join").click()
    expect(other.locator("#room")).to_have_value("random")
    other.locator("#text").fill("still in random?")
    other.locator("#send").click()
    expect(page.locator("#messages li[data-kind=message] .text")).to_have_text(["still in random?"])
    expect(page.locator("#room option")).to_have_text(["general", "random"])
    assert second_id != first_id


def test_screenshot(new_page: Any, server: LiveServer, tmp_path: Path) -> None:
    page_a, _ = open_chat(new_page, server)
    page_b, _ = open_chat(new_page, server)
    page_b.locator("#text").fill("Hi there!")
    page_b.locator("#send").click()
    page_a.locator("#text").fill("Hello, <script>alert(1)</script> stays text.")
    page_a.locator("#send").click()
    expect(page_a.locator("#messages li[data-kind=message]")).to_have_count(2)
    page_b.locator("#text").press_sequentially("typing")
    expect(page_a.locator("#typing")).not_to_have_text("")

    shot = tmp_path / "chat.png"
    page_a.screenshot(path=str(shot), full_page=True, timeout=TIMEOUT_MS)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
    print(f"screenshot: {shot}")
