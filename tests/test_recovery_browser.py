"""Recovery after a reconnect, in the chat page, in real headless Chromium (issue 13).

Two pages of the chat example; one loses its network while the other sends; once the network
is back, the first page shows every message once, in order, with no "may be missing" notice:
its client rejoined ``general`` with its last position and the server replayed what it missed
before anything new.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .browser import TIMEOUT_MS, page_opener, playwright_sync_api

pytestmark = pytest.mark.browser

sync_api = playwright_sync_api()  # skips this module without Chromium or Playwright
expect = sync_api.expect

from examples.chat_app.main import app  # noqa: E402
from fastapi_orcs_ws.testing import LiveServer, serve  # noqa: E402

MISSED = 20
# The page's client retries with full-jitter backoff capped at 10 s; allow a few attempts.
RECONNECT_MS = 40_000


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with serve(app) as live:
        yield live


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    with page_opener(browser, viewport={"width": 1000, "height": 640}) as open_page:
        yield open_page


def open_chat(new_page: Any, server: LiveServer, route: Any = None) -> tuple[Any, str]:
    page = new_page()
    if route is not None:
        page.route_web_socket(*route)
    page.goto(server.http_url + "/")
    expect(page.locator("#status")).to_have_text("Connected")
    client_id = page.locator("#client-id")
    expect(client_id).not_to_have_text("—")
    return page, client_id.inner_text()


def send(page: Any, text: str) -> None:
    page.locator("#text").fill(text)
    page.locator("#send").click()
    expect(page.locator("#text")).to_have_value("")


def texts(page: Any) -> Any:
    return page.locator("#messages li[data-kind=message] .text")


def test_a_page_that_was_offline_shows_every_missed_message_once_in_order(
    new_page: Any, server: LiveServer
) -> None:
    # Playwright's offline mode stops new connections but leaves an open WebSocket alone, so
    # A's first socket goes through a route that can cut it; later ones use the real network.
    sockets: list[Any] = []
    offline = False

    def first_socket(url: str) -> bool:
        return not offline

    def forward(route: Any) -> None:
        route.connect_to_server()
        sockets.append(route)

    page_a, id_a = open_chat(new_page, server, route=(first_socket, forward))
    page_b, _ = open_chat(new_page, server)
    # Both joined "general" through their clients (A sees B's join, so B's is answered too).
    expect(page_a.locator("#messages li[data-kind=system]", has_text="joined")).to_have_count(1)
    send(page_b, "before")
    expect(texts(page_a)).to_have_text(["before"])

    # A's network goes away: its socket drops, its reconnect attempts fail meanwhile.
    offline = True
    page_a.context.set_offline(True)
    assert len(sockets) == 1
    sockets[0].close(code=1006, reason="network lost")
    expect(page_a.locator("#messages li", has_text="Disconnected (code 1006")).to_have_count(1)
    expect(page_a.locator("#status")).not_to_have_text("Connected")
    missed = [f"missed {n}" for n in range(1, MISSED + 1)]
    for text in missed:
        send(page_b, text)
    expect(texts(page_b)).to_have_text(["before", *missed])
    expect(texts(page_a)).to_have_text(["before"])  # nothing reached A while it was offline

    # Back online: the client reconnects, rejoins "general" with its position, and the
    # server replays the 20 messages before anything new.
    page_a.context.set_offline(False)
    expect(page_a.locator("#status")).to_have_text("Connected", timeout=RECONNECT_MS)
    expect(page_a.locator("#client-id")).not_to_have_text(id_a)
    expect(texts(page_a)).to_have_text(["before", *missed], timeout=TIMEOUT_MS)
    send(page_b, "after")
    expect(texts(page_a)).to_have_text(["before", *missed, "after"], timeout=TIMEOUT_MS)
    expect(texts(page_b)).to_have_text(["before", *missed, "after"])
    expect(page_a.locator("#messages li", has_text="may be missing")).to_have_count(0)
    # Sent by B, shown once each on A (a replayed frame is the frame B's page got live).
    expect(page_a.locator("#messages li.msg.mine")).to_have_count(0)
