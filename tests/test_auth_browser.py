"""Token transports in real headless Chromium, with the spec's client code.

The spec's "Client-side with token" snippets (Option 1: query parameter, Option 3:
subprotocol; websocket-support.md), with only the URL and the token substituted, connect to
examples/notifications under a real uvicorn and receive ``unread-count``. Option 2 (an
``Authorization`` header) is not possible in a browser: ``new WebSocket`` takes no headers.

A browser shown a bad token sees close code 4401 in ``onclose``: the server accepts the
handshake and then closes. A close before accept would reach the browser as an HTTP 403,
which JavaScript sees only as code 1006, so this proves the accept-then-close design.

Playwright drives the Debian ``/usr/bin/chromium`` with the sync API from plain test
functions (it never meets anyio's event loop); without Chromium these tests are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .browser import TIMEOUT_MS, page_opener, playwright_sync_api
from .test_notifications_example import example, server, token  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

SPEC_URL = "ws://localhost:42069/ws/private"
SPEC_TOKEN = "YOUR_JWT_TOKEN"

# The spec's client code, verbatim (websocket-support.md, "Client-side with token").
SPEC_OPTION_1 = """\
// Option 1: Query parameter
const ws = new WebSocket(
  "ws://localhost:42069/ws/private?token=YOUR_JWT_TOKEN",
);
"""

SPEC_OPTION_2 = """\
// Option 2: Authorization header (if supported by client)
const ws = new WebSocket("ws://localhost:42069/ws/private", {
  headers: {
    Authorization: "Bearer YOUR_JWT_TOKEN",
  },
});
"""

SPEC_OPTION_3 = """\
// Option 3: Subprotocol
const ws = new WebSocket("ws://localhost:42069/ws/private", [
  "token",
  "YOUR_JWT_TOKEN",
]);
"""

# Runs the spec's code, then records what the socket sees (handlers attached in the same task
# as the constructor, so nothing is missed).
RUN_AND_RECORD = """\
() => {
%s
window.__frames = [];
window.__closed = null;
window.__ws = ws;
ws.onopen = () => { window.__protocol = ws.protocol; };
ws.onmessage = (event) => { window.__frames.push(JSON.parse(event.data)); };
ws.onclose = (event) => {
  window.__closed = { code: event.code, reason: event.reason, wasClean: event.wasClean };
};
}
"""

# Runs code and returns the error it throws, or null.
CATCH = "() => { try { %s; return null; } catch (e) { return String(e); } }"

playwright_sync_api()  # skips this module without Chromium or Playwright

from fastapi import FastAPI  # noqa: E402

from fastapi_orcs_ws import WebSocketRouter, WebSocketSettings  # noqa: E402
from fastapi_orcs_ws.testing import LiveServer, serve  # noqa: E402


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:  # noqa: F811 - the fixture
    """A page on the example's own origin; any uncaught JavaScript error fails the test."""
    with page_opener(browser) as open_page:
        page = open_page()
        page.goto(f"{server.http_url}/openapi.json")
        yield page


def run_spec_code(page: Any, snippet: str, url: str, jwt: str) -> None:
    """Run the spec's snippet with only its URL and token substituted."""
    assert SPEC_URL in snippet and SPEC_TOKEN in snippet
    code = snippet.replace(SPEC_URL, url).replace(SPEC_TOKEN, jwt)
    page.evaluate(RUN_AND_RECORD % code)


@pytest.mark.parametrize("snippet", [SPEC_OPTION_1, SPEC_OPTION_3], ids=["query", "subprotocol"])
def test_spec_client_code_authenticates_and_receives_unread_count(
    page: Any,
    server: LiveServer,  # noqa: F811 - the fixture
    snippet: str,
) -> None:
    run_spec_code(page, snippet, server.ws_url("/ws/notifications"), token("alice"))
    page.wait_for_function(
        "window.__frames.some((f) => f.event === 'unread-count')", timeout=TIMEOUT_MS
    )
    frames = page.evaluate("window.__frames")
    assert frames[0] == {"event": "unread-count", "payload": {"count": 0}}
    # The subprotocol option only opens because the server selected "token" (never the JWT).
    expected_protocol = "token" if snippet is SPEC_OPTION_3 else ""
    assert page.evaluate("window.__protocol") == expected_protocol
    assert page.evaluate("window.__ws.readyState") == 1  # still OPEN: nothing refused
    assert page.evaluate("window.__closed") is None


@pytest.mark.parametrize("snippet", [SPEC_OPTION_1, SPEC_OPTION_3], ids=["query", "subprotocol"])
@pytest.mark.parametrize("bad", ["garbage", "expired"])
def test_browser_with_a_bad_token_sees_4401(
    page: Any,
    server: LiveServer,  # noqa: F811 - the fixture
    snippet: str,
    bad: str,
) -> None:
    jwt = token("alice", ttl=-10) if bad == "expired" else "not.a.jwt"
    run_spec_code(page, snippet, server.ws_url("/ws/notifications"), jwt)
    page.wait_for_function("window.__closed !== null", timeout=TIMEOUT_MS)
    closed = page.evaluate("window.__closed")
    # 4401, not 1006: the server accepted, then closed (a close before accept is an HTTP 403).
    assert closed == {"code": 4401, "reason": "Unauthorized", "wasClean": True}
    assert page.evaluate("window.__frames") == []


def test_spec_option_2_header_is_not_possible_in_a_browser(
    page: Any,
    server: LiveServer,  # noqa: F811 - the fixture
) -> None:
    code = SPEC_OPTION_2.replace(SPEC_URL, server.ws_url("/ws/notifications"))
    error = page.evaluate(CATCH % code.replace(SPEC_TOKEN, token("alice")))
    assert error is not None and error.startswith("SyntaxError"), error


def test_a_close_before_accept_is_only_1006_in_a_browser(
    page: Any,
    server: LiveServer,  # noqa: F811 - the fixture
) -> None:
    """The contrast: refused before accept (here, by origin), a browser learns nothing."""
    router = WebSocketRouter(
        settings=WebSocketSettings(allowed_origins=["https://app.example"], auth_enabled=False)
    )
    router.ws("/ws/guarded")
    app = FastAPI()
    app.include_router(router)
    with serve(app) as guarded:  # the page's origin is the example's: not allowed here
        run_spec_code(page, SPEC_OPTION_1, guarded.ws_url("/ws/guarded"), token("alice"))
        page.wait_for_function("window.__closed !== null", timeout=TIMEOUT_MS)
    assert page.evaluate("window.__closed") == {"code": 1006, "reason": "", "wasClean": False}
