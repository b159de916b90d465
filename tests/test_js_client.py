"""orcs-client.js against real servers, in Node 22 and in headless Chromium.

The same scenarios (tests/js_client/scenarios.mjs) run in both: request/ack, an error event,
a timeout, 4401 stopping the reconnects (and a new token resuming them), the emit buffer and
its overflow, emits before the socket opens, and room positions sent back when rejoining.
A real restart of the chat example's server process checks reconnection with a buffered emit.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastapi_orcs_ws.testing import LiveServer, mint_token, serve
from tests.js_client.apps import SECRET, ChatProcess, extras_app, free_port
from tests.js_client.toolchain import JS_DIR, node_toolchain

ROOT = Path(__file__).resolve().parent.parent
CLIENT_JS = ROOT / "fastapi_orcs_ws" / "static" / "orcs-client.js"
SCENARIOS = [
    "requestAck",
    "errorEvent",
    "timeout",
    "unauthorizedStops",
    "unauthorizedThenNewToken",
    "serverCloses",
    "bufferOverflow",
    "bufferedBeforeOpen",
    "positions",
    "positionsNeverBack",
]

NEVER_BACK = {"kept": {"offset": 2, "epoch": "epoch-1"}, "since": {"offset": 2, "epoch": "epoch-1"}}


@pytest.fixture(scope="module")
def node() -> Path:
    return node_toolchain()[0]


@pytest.fixture(scope="module")
def chat() -> Iterator[ChatProcess]:
    server = ChatProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def extras() -> Iterator[LiveServer]:
    with serve(extras_app()) as live:
        yield live


@pytest.fixture(scope="module")
def env(chat: ChatProcess, extras: LiveServer) -> dict[str, Any]:
    return {
        "clientPath": str(CLIENT_JS),
        "chatUrl": chat.ws_url,
        "slowUrl": extras.ws_url("/ws/slow"),
        "privateUrl": extras.ws_url("/ws/private"),
        "positionsUrl": extras.ws_url("/ws/positions"),
        "deadUrl": f"ws://127.0.0.1:{free_port()}/ws/chat",  # nothing listens there
        "token": mint_token("alice", secret=SECRET),
    }


def results_of(stdout: str) -> dict[str, Any]:
    found = {}
    for line in stdout.splitlines():
        marker = line.find("RESULT ")
        if marker >= 0:
            name, _, data = line[marker + 7 :].partition(" ")
            found[name] = json.loads(data)
    return found


# -- Node ------------------------------------------------------------------------------------


def test_node_scenarios(node: Path, env: dict[str, Any]) -> None:
    result = subprocess.run(
        [str(node), "--test", "--test-reporter=tap", "client.test.mjs"],
        cwd=JS_DIR,
        env={**os.environ, "ORCS_ENV": json.dumps(env)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "# fail 0" in result.stdout, output[-3000:]
    results = results_of(result.stdout)
    assert sorted(results) == sorted(SCENARIOS), output[-3000:]
    assert results["requestAck"] == {
        "ack": {"room": "js-room", "recovered": False},  # a first join has nothing to recover
        "message": {"text": "hello from js", "room": "js-room"},
    }
    assert results["errorEvent"] == {"invalid": "validation_error", "unknown": "unknown_event"}
    assert results["timeout"] == {"slow": "timeout", "fast": "fast"}
    assert results["unauthorizedStops"] == {"code": 4401, "asked": 2}
    assert results["unauthorizedThenNewToken"] == {"who": "alice"}
    assert results["serverCloses"] == {"1000": False, "4403": False, "4429": True}
    assert results["bufferOverflow"] == {"third": "buffer_full", "rest": ["closed", "closed"]}
    assert results["positions"] == {
        "since": {"offset": 3, "epoch": "epoch-1"},
        "recovered": True,
    }
    # The ack (offset 0) came after live frames 1 and 2: the client keeps 2 and asks from 2.
    assert results["positionsNeverBack"] == NEVER_BACK


class Lines:
    """A child's stdout, read line by line with a timeout on every read."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stdout = process.stdout

        def pump() -> None:
            for line in stdout:
                self.queue.put(line.rstrip("\n"))
            self.queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        while True:
            try:
                line = self.queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} within {timeout}s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"the script ended before {prefix!r}; saw {self.seen}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line


def test_node_server_restart_reconnects_rejoins_and_sends_buffered(
    node: Path, env: dict[str, Any], chat: ChatProcess
) -> None:
    with subprocess.Popen(
        [str(node), "restart.mjs"],
        cwd=JS_DIR,
        env={**os.environ, "ORCS_ENV": json.dumps(env)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            lines = Lines(process)
            lines.expect("joined")
            chat.stop()  # SIGTERM: uvicorn closes the socket with 1012
            lines.expect("buffered")
            chat.start()
            assert process.stdin is not None
            process.stdin.write("restarted\n")
            process.stdin.flush()
            result = json.loads(lines.expect("RESULT")[len("RESULT ") :])
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert result == {"reconnected": True, "code": 1012, "text": "sent while the server was down"}


# -- headless Chromium ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium_page(browser: Any, extras: LiveServer) -> Iterator[Any]:
    """A page of the extras app (same origin as the client module it serves)."""
    from tests.browser import TIMEOUT_MS, page_opener

    with page_opener(browser) as open_page:
        page = open_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(extras.http_url + "/js/blank")
        yield page


RUN_IN_PAGE = """async ([name, env]) => {
  const lib = await import("/orcs-client.js");
  const { scenarios } = await import("/js/scenarios.mjs");
  return await scenarios[name](lib, env);
}"""


@pytest.mark.browser
@pytest.mark.parametrize("name", SCENARIOS)
def test_chromium_scenario(chromium_page: Any, env: dict[str, Any], name: str) -> None:
    result = chromium_page.evaluate(RUN_IN_PAGE, [name, env])
    assert isinstance(result, dict) and result, result
    if name == "requestAck":
        assert result["ack"] == {"room": "js-room", "recovered": False}
    if name == "positions":
        assert result == {"since": {"offset": 3, "epoch": "epoch-1"}, "recovered": True}
    if name == "unauthorizedStops":
        assert result == {"code": 4401, "asked": 2}
    if name == "positionsNeverBack":
        assert result == NEVER_BACK


@pytest.mark.browser
def test_chromium_server_restart(
    chromium_page: Any, env: dict[str, Any], chat: ChatProcess
) -> None:
    page = chromium_page
    page.evaluate(
        """async (env) => {
          const { connect } = await import("/orcs-client.js");
          const { next } = await import("/js/scenarios.mjs");
          const client = connect(env.chatUrl, { reconnect: { initialDelay: 100, maxDelay: 500 } });
          const t = (window.restart = { client, closes: [], opens: [], messages: [] });
          client.on("close", (info) => t.closes.push(info));
          client.on("open", (info) => t.opens.push(info));
          client.on("message", (p) => t.messages.push(p));
          await next(client, "welcome");
          await client.request("join", { room: "survivors" });
        }""",
        env,
    )
    chat.stop()
    page.wait_for_function("window.restart.closes.length > 0")
    page.evaluate(
        """() => { const t = window.restart;
          t.sent = t.client.emit("message", { room: "survivors", text: "buffered in Chromium" });
          t.buffered = t.client.buffered; }"""
    )
    chat.start()
    page.wait_for_function(
        "window.restart.messages.some((m) => m.text === 'buffered in Chromium')", timeout=30_000
    )
    seen = page.evaluate(
        """async () => { const t = window.restart; await t.sent;
          const out = { closes: t.closes, opens: t.opens, buffered: t.buffered,
                        rooms: t.messages.map((m) => m.room) };
          await t.client.close(); return out; }"""
    )
    assert seen["closes"][0]["code"] == 1012 and seen["closes"][0]["willReconnect"] is True
    assert seen["buffered"] == 1
    assert seen["opens"][0] == {"reconnected": False}
    assert seen["opens"][-1] == {"reconnected": True}
    assert seen["rooms"] == ["survivors"]  # rejoined automatically, message delivered once


def test_chat_page_has_no_socket_code_of_its_own() -> None:
    page = (ROOT / "examples" / "chat_app" / "static" / "index.html").read_text("utf-8")
    assert "WebSocket" not in page and "JSON.stringify" not in page and "JSON.parse" not in page
    assert 'import { connect } from "./orcs-client.js";' in page


# -- serving ---------------------------------------------------------------------------------


def test_the_app_serves_the_client_cacheably() -> None:
    from fastapi.testclient import TestClient

    from examples.chat_app.main import app

    with TestClient(app) as http:
        response = http.get("/orcs-client.js")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        assert response.content == CLIENT_JS.read_bytes()
        assert response.headers["cache-control"] == "public, max-age=3600"
        etag = response.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"') and len(etag) == 34
        again = http.get("/orcs-client.js", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        other = http.get("/orcs-client.js", headers={"If-None-Match": '"something-else"'})
        assert other.status_code == 200
        head = http.head("/orcs-client.js")
        assert head.status_code == 200 and head.headers["etag"] == etag
        assert "/orcs-client.js" not in http.get("/openapi.json").text


def test_client_url_is_configurable_and_can_be_turned_off() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from fastapi_orcs_ws import WebSocketRouter, mount_docs

    def app_with(**urls: Any) -> FastAPI:
        router = WebSocketRouter()
        router.ws("/ws")
        app = FastAPI()
        app.include_router(router)
        mount_docs(app, **urls)
        return app

    with TestClient(app_with(client_url="/static/orcs.js")) as http:
        assert http.get("/static/orcs.js").status_code == 200
        assert http.get("/orcs-client.js").status_code == 404
    with TestClient(app_with(client_url=None)) as http:
        assert http.get("/orcs-client.js").status_code == 404
        assert http.get("/ws-docs").status_code == 200
    with TestClient(app_with(asyncapi_url=None, docs_url=None)) as http:
        assert http.get("/orcs-client.js").status_code == 404  # no docs: no client either
    with TestClient(app_with(asyncapi_url=None, docs_url=None, client_url="/c.js")) as http:
        assert http.get("/c.js").status_code == 200


# -- the notifications example's documented snippet, in Chromium -----------------------------

NOTIFY_SECRET = "notifications-client-secret-0123456789abcdef"


@pytest.fixture
def notifications(monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    import importlib
    import sys

    monkeypatch.setenv("WS_JWT_SECRET", NOTIFY_SECRET)
    for name in ("WS_AUTH_ENABLED", "WS_AUTH_REQUIRED", "WS_JWT_AUDIENCE", "WS_JWT_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    sys.modules.pop("examples.notifications.main", None)
    module = importlib.import_module("examples.notifications.main")
    try:
        with serve(module.app) as live:
            yield live
    finally:
        sys.modules.pop("examples.notifications.main", None)


def documented_snippet() -> str:
    import examples.notifications.main as example

    doc = example.__doc__ or ""
    start = doc.index('<script type="module">') + len('<script type="module">')
    return doc[start : doc.index("</script>", start)]


@pytest.mark.browser
def test_notifications_snippet_in_chromium(browser: Any, notifications: LiveServer) -> None:
    import httpx

    from tests.browser import page_opener

    alice = mint_token("alice", secret=NOTIFY_SECRET)
    stubs = f"""
      window.seen = {{ badges: [], toasts: [] }};
      window.getToken = () => {json.dumps(alice)};
      window.showBadge = (n) => window.seen.badges.push(n);
      window.showToast = (title, body) => window.seen.toasts.push([title, body]);
      window.markAllRead = document.createElement("button");
    """
    with page_opener(browser) as open_page:
        page = open_page()
        page.goto(notifications.http_url + "/openapi.json")  # any page of the app's origin
        page.add_script_tag(content=stubs)
        page.add_script_tag(content=documented_snippet(), type="module")
        page.wait_for_function("window.seen.badges.length === 1")
        response = httpx.post(
            notifications.http_url + "/notify/alice",
            json={"title": "Hello", "body": "from the docs"},
            headers={"Authorization": f"Bearer {alice}"},
            timeout=10,
        )
        assert response.json() == {"delivered": 1}
        page.wait_for_function("window.seen.toasts.length === 1")
        page.evaluate("() => window.markAllRead.onclick()")
        page.wait_for_function("window.seen.badges.at(-1) === 0 && window.seen.badges.length >= 3")
        seen = page.evaluate("window.seen")
    assert seen["toasts"] == [["Hello", "from the docs"]]
    assert seen["badges"][0] == 0 and seen["badges"][-1] == 0
