"""The /ws-docs page renders in headless Chromium, with no network beyond the app.

The ``browser`` fixture (tests/conftest.py) skips these tests without Chromium or Playwright.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from examples.chat_app.main import app
from fastapi_orcs_ws import Connection, WebSocketRouter, WebSocketSettings, asyncapi_document
from fastapi_orcs_ws.testing import LiveServer, serve

pytestmark = pytest.mark.browser

SCREENSHOT = Path(os.environ.get("WS_DOCS_SCREENSHOT", "/tmp/ws-docs.png"))


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with serve(app) as live:
        yield live


def test_ws_docs_renders_every_chat_event(server: LiveServer, browser: Any) -> None:
    page = browser.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(f"{server.http_url}/ws-docs", timeout=10_000)
        page.wait_for_selector("body[data-rendered=true]", timeout=10_000)

        route = page.locator('section.route[data-address="/ws/chat"]')
        assert route.count() == 1
        incoming = route.locator('.event[data-direction="client-to-server"]')
        outgoing = route.locator('.event[data-direction="server-to-client"]')
        names_in = {incoming.nth(i).get_attribute("data-event") for i in range(incoming.count())}
        names_out = {outgoing.nth(i).get_attribute("data-event") for i in range(outgoing.count())}
        assert names_in == {"join", "leave", "message", "typing"}
        assert names_out == {
            "welcome",
            "presence-join",
            "presence-leave",
            "user-joined",
            "user-left",
            "user-typing",
            "message",
            "error",
        }

        join = route.locator('.event[data-event="join"][data-direction="client-to-server"]')
        assert '"event": "join"' in join.locator("pre").first.inner_text()
        join.locator("details.schema summary").first.click()
        assert '"minLength": 1' in join.locator("details.schema pre").first.inner_text()
        assert "ack" in join.inner_text()
        # The example's settings come from WS_*: without a key no token can be checked, so
        # the page lists no way to present one.
        (channel,) = asyncapi_document(app)["channels"].values()
        badge = "optional" if channel["x-auth"]["verifiable"] else "none"
        assert route.locator(f'[data-auth="{badge}"]').count() == 1
        assert f"ws://127.0.0.1:{server.port}/ws/chat" in route.inner_text()

        page.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        page.close()
    assert not errors, errors
    # Offline: the page needs nothing but itself.
    assert [url for url in requests if not url.startswith(server.http_url)] == []
    assert [url for url in requests if not url.endswith("/ws-docs")] == []


SECRET = "ws-docs-browser-secret-0123456789abcdef"


def prefixed_app() -> FastAPI:
    keyed = WebSocketRouter(settings=WebSocketSettings(jwt_secret=SECRET))
    keyed.ws("/ws/chat", {"say": say})
    keyless = WebSocketRouter(settings=WebSocketSettings())  # auth on, no key
    keyless.ws("/ws/lobby", {"say": say})
    app = FastAPI(title="prefixed")
    app.include_router(keyed, prefix="/api")
    app.include_router(keyless, prefix="/open")
    return app


async def say(ws: Connection, payload: str) -> str:
    return payload


def test_connect_lines_have_each_prefix_once_behind_a_root_path(browser: Any) -> None:
    with serve(prefixed_app(), root_path="/proxy") as live:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(f"{live.http_url}/ws-docs", timeout=10_000)
            page.wait_for_selector("body[data-rendered=true]", timeout=10_000)
            chat = page.locator('section.route[data-address="/api/ws/chat"]')
            lobby = page.locator('section.route[data-address="/open/ws/lobby"]')
            base = f"ws://127.0.0.1:{live.port}/proxy"
            assert f"Connect: {base}/api/ws/chat" in chat.inner_text()
            assert f"Connect: {base}/open/ws/lobby" in lobby.inner_text()
            assert "/api/api" not in page.content() and "/proxy/proxy" not in page.content()
            # Tokens are offered only where one can be checked.
            assert chat.locator('[data-auth="optional"]').count() == 1
            assert chat.locator("ul.auth li").count() == 3
            assert lobby.locator('[data-auth="none"]').count() == 1
            assert "No key is configured" in lobby.inner_text()
        finally:
            page.close()
        assert not errors, errors
