"""Subprotocols from a real browser (issue 10, item 8): `new WebSocket(url, ["chat.v1"])`.

Chromium fails a connection whose response selects no subprotocol when it offered some, so a
route must declare what it speaks; the token transport keeps working beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from fastapi_orcs_ws import Connection, WebSocketRouter, WebSocketSettings
from fastapi_orcs_ws.testing import LiveServer, mint_token, serve

from .browser import chromium, page_opener

pytestmark = pytest.mark.browser

SECRET = "subprotocol-browser-secret-0123456789"

OPEN = """([url, protocols]) => new Promise((resolve) => {
  const ws = new WebSocket(url, protocols);
  ws.onopen = () => ws.send(JSON.stringify({event: "hi", payload: null, id: 1}));
  ws.onmessage = (m) => resolve({protocol: ws.protocol, frame: JSON.parse(m.data)});
  ws.onclose = (e) => resolve({protocol: ws.protocol, closed: e.code});
  setTimeout(() => resolve({timeout: true}), 10000);  // every wait bounded
})"""


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    router = WebSocketRouter(settings=WebSocketSettings(jwt_secret=SECRET))
    route = router.ws("/ws", subprotocols=["chat.v2", "chat.v1"])
    router.ws("/plain")

    @route.on("hi")
    async def hi(ws: Connection, payload: Any) -> Any:
        return {"user": ws.data.user.id if ws.data.user else None}

    app = FastAPI()
    app.include_router(router)

    @app.get("/")
    async def home() -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>subprotocols</title>")

    with serve(app) as live:
        yield live


@pytest.fixture(scope="module")
def page(server: LiveServer) -> Iterator[Any]:
    with chromium() as browser, page_opener(browser) as open_page:
        page = open_page()
        page.goto(server.http_url + "/")
        yield page


def test_a_declared_subprotocol_is_selected_in_chromium(page: Any, server: LiveServer) -> None:
    result = page.evaluate(OPEN, [server.ws_url("/ws"), ["chat.v1"]])
    assert result == {
        "protocol": "chat.v1",
        "frame": {"event": "ack", "payload": {"user": None}, "id": 1},
    }


def test_the_token_subprotocol_works_beside_a_declared_one(page: Any, server: LiveServer) -> None:
    protocols = ["chat.v1", "token", mint_token("alice", secret=SECRET)]
    result = page.evaluate(OPEN, [server.ws_url("/ws"), protocols])
    assert result["protocol"] == "chat.v1"
    assert result["frame"]["payload"] == {"user": "alice"}


def test_an_undeclared_subprotocol_is_refused_not_half_open(page: Any, server: LiveServer) -> None:
    result = page.evaluate(OPEN, [server.ws_url("/plain"), ["chat.v1"]])
    assert result == {"protocol": "", "closed": 1006}  # refused before accept (HTTP 403)
