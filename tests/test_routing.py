"""In-process behaviour of event routes, with Starlette's TestClient."""
# No `from __future__ import annotations`: handlers here use local names in annotations.


import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, WebSocket
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection
from starlette.testclient import TestClient

from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    WebSocketManager,
    WebSocketRouter,
    get_manager,
)


class Greeting(BaseModel):
    name: str = Field(min_length=1)
    times: int = 1


def build(**router_kwargs: Any) -> tuple[FastAPI, WebSocketRouter]:
    router = WebSocketRouter(**router_kwargs)
    app = FastAPI()
    return app, router


@contextmanager
def connected(app: FastAPI, router: WebSocketRouter, path: str = "/ws") -> Iterator[Any]:
    """Include ``router`` in ``app``, start it in a TestClient and open one WebSocket."""
    app.include_router(router)
    with TestClient(app) as client, client.websocket_connect(path) as ws:
        yield ws


def test_handler_dict_and_decorator_forms_and_typed_payload() -> None:
    app, router = build()

    async def greet(ws: Connection, payload: Greeting) -> str:
        await ws.send("greeting", {"text": f"hello {payload.name}" * payload.times})
        return "done"

    route = router.ws("/ws", {"greet": greet})

    @route.on("shout")
    async def shout(ws: Connection, payload: str) -> str:
        return payload.upper()

    with connected(app, router) as ws:
        ws.send_json({"event": "greet", "payload": {"name": "ada"}, "id": "a1"})
        assert ws.receive_json() == {"event": "greeting", "payload": {"text": "hello ada"}}
        assert ws.receive_json() == {"event": "ack", "payload": "done", "id": "a1"}
        ws.send_json({"event": "shout", "payload": "hi", "id": 2})
        assert ws.receive_json() == {"event": "ack", "payload": "HI", "id": 2}
        # Without an id there is no ack.
        ws.send_json({"event": "shout", "payload": "quiet"})
        ws.send_json({"event": "shout", "payload": "x", "id": 3})
        assert ws.receive_json()["id"] == 3


def test_validation_error_names_the_field_and_connection_keeps_working() -> None:
    app, router = build()

    async def greet(ws: Connection, payload: Greeting) -> str:
        return payload.name

    router.ws("/ws", {"greet": greet})
    with connected(app, router) as ws:
        ws.send_json({"event": "greet", "payload": {"name": "", "times": "many"}, "id": 9})
        error = ws.receive_json()
        assert error["event"] == "error" and error["id"] == 9
        payload = error["payload"]
        assert payload["code"] == "validation_error"
        assert payload["event"] == "greet"
        assert {tuple(e["loc"]) for e in payload["errors"]} == {("name",), ("times",)}
        assert "many" not in str(payload)  # the input is not echoed
        ws.send_json({"event": "greet", "payload": {"name": "ok"}, "id": 10})
        assert ws.receive_json() == {"event": "ack", "payload": "ok", "id": 10}


def test_dependencies_are_resolved_per_event_with_cleanup_and_overrides() -> None:
    app, router = build()
    calls: list[str] = []

    async def session() -> AsyncIterator[str]:
        calls.append("open")
        yield "db-session"
        calls.append("close")

    def settings_value() -> int:
        return 1

    def doubled(value: Annotated[int, Depends(settings_value)]) -> int:
        return value * 2

    async def handler(
        ws: Connection,
        payload: Any,
        db: Annotated[str, Depends(session)],
        raw: WebSocket,
        number: int = Depends(doubled),
        manager: WebSocketManager = Depends(get_manager),
    ) -> dict[str, Any]:
        assert manager is ws.data.manager
        assert raw is ws.websocket
        return {"db": db, "number": number}

    router.ws("/ws", {"use": handler})
    with connected(app, router) as ws:
        ws.send_json({"event": "use", "id": 1})
        assert ws.receive_json()["payload"] == {"db": "db-session", "number": 2}
        assert calls == ["open", "close"]
        app.dependency_overrides[settings_value] = lambda: 21
        ws.send_json({"event": "use", "id": 2})
        assert ws.receive_json()["payload"] == {"db": "db-session", "number": 42}


def test_sync_handlers_run_in_a_worker_thread() -> None:
    app, router = build()
    threads: list[str] = []

    def blocking(ws: Connection, payload: int) -> int:
        threads.append(threading.current_thread().name)
        return payload + 1

    router.ws("/ws", {"inc": blocking})
    with connected(app, router) as ws:
        ws.send_json({"event": "inc", "payload": 1, "id": 1})
        assert ws.receive_json()["payload"] == 2
    assert threads and threads[0] != "MainThread"


def test_prefix_router_dependencies_and_http_routes() -> None:
    app, _ = build()
    seen: list[str] = []

    async def check_key(conn: HTTPConnection) -> None:
        key = conn.query_params.get("key")
        seen.append(key or "")
        if key != "sesame":
            raise HTTPException(status_code=403)

    api = WebSocketRouter(dependencies=[Depends(check_key)])

    async def ping(ws: Connection, payload: Any) -> str:
        return "pong"

    api.ws("/ws", {"ping": ping})

    @api.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(api, prefix="/v1")
    with TestClient(app) as client:
        assert client.get("/v1/health?key=sesame").json() == {"ok": True}
        assert client.get("/v1/health").status_code == 403
        with client.websocket_connect("/v1/ws?key=sesame") as ws:
            ws.send_json({"event": "ping", "id": 1})
            assert ws.receive_json()["payload"] == "pong"
        with pytest.raises(Exception), client.websocket_connect("/v1/ws?key=wrong"):
            pass
    assert seen == ["sesame", "", "sesame", "wrong"]


def test_get_manager_in_http_endpoints_broadcasts_to_sockets() -> None:
    app, router = build()

    async def connect(ws: Connection) -> None:
        await ws.data.manager.join_room(ws.data.client_id, "news")

    router.ws("/ws", {"connect": connect})

    @app.post("/publish")
    async def publish(manager: WebSocketManager = Depends(get_manager)) -> dict[str, int]:
        return {"delivered": await manager.broadcast_to_room("news", "headline", {"t": 1})}

    app.include_router(router)
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
            assert client.post("/publish").json() == {"delivered": 2}
            assert a.receive_json() == {"event": "headline", "payload": {"t": 1}}
            assert b.receive_json() == {"event": "headline", "payload": {"t": 1}}
        assert client.post("/publish").json() == {"delivered": 0}


def test_manager_on_registers_shared_handlers() -> None:
    manager = WebSocketManager()

    @manager.on("ping")
    async def ping(ws: Connection, payload: Any) -> str:
        return "shared pong"

    app, router = build(manager=manager)

    async def local_ping(ws: Connection, payload: Any) -> str:
        return "local pong"

    router.ws("/a")
    router.ws("/b", {"ping": local_ping})
    app.include_router(router)
    with TestClient(app) as client:
        with client.websocket_connect("/a") as ws:
            ws.send_json({"event": "ping", "id": 1})
            assert ws.receive_json()["payload"] == "shared pong"
        with client.websocket_connect("/b") as ws:
            ws.send_json({"event": "ping", "id": 1})
            assert ws.receive_json()["payload"] == "local pong"


def test_connection_data_and_disconnect_runs_once(caplog: pytest.LogCaptureFixture) -> None:
    app, router = build()
    seen: dict[str, Any] = {}
    disconnects: list[dict[str, Any]] = []

    async def connect(ws: Connection) -> None:
        seen["data"] = ws.data

    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        disconnects.append(payload)
        raise RuntimeError("a failing disconnect handler is logged, not fatal")

    router.ws("/ws", {"connect": connect, "disconnect": disconnect})
    with caplog.at_level(logging.ERROR), connected(app, router) as ws:
        ws.send_json({"event": "nothing"})
        assert ws.receive_json()["payload"]["code"] == "unknown_event"
        ws.close(code=4000)
    data = seen["data"]
    assert len(data.client_id) == 32
    assert data.connected_at.tzinfo is not None
    assert data.authenticated is False and data.user is None
    assert data.manager is router.manager
    assert disconnects == [{"code": 4000, "reason": ""}]
    assert any("disconnect" in r.getMessage() for r in caplog.records)


def test_bad_registrations_fail_at_start_up() -> None:
    _, router = build()
    route = router.ws("/ws")

    # A model outside the payload position is what FastAPI reads from a request body.
    async def needs_unknown(ws: Connection, payload: Any, mystery: Greeting) -> None: ...

    with pytest.raises(ConfigurationError, match="mystery"):
        route.add("x", needs_unknown)
    with pytest.raises(ValueError, match="reserved"):
        route.add("error", lambda ws, payload: None)
    with pytest.raises(ConfigurationError):
        route.add("y", "not callable")  # type: ignore[arg-type]


@pytest.fixture
def chat_client() -> Iterator[TestClient]:
    from examples.chat_app.main import app

    with TestClient(app) as client:
        yield client


def test_chat_example_in_process(chat_client: TestClient) -> None:
    with chat_client.websocket_connect("/ws/chat") as a:
        welcome = a.receive_json()
        assert welcome["event"] == "welcome"
        a_id = welcome["payload"]["clientId"]
        assert welcome["payload"]["message"] == "Welcome to chat!"
        with chat_client.websocket_connect("/ws/chat") as b:
            b_id = b.receive_json()["payload"]["clientId"]
            joined = {"clientId": b_id, "room": "general"}
            presence = {**joined, "user": None}
            assert a.receive_json() == {"event": "presence-join", "payload": presence}
            frame = a.receive_json()  # the chat's rooms keep history: a position comes along
            assert (frame["event"], frame["payload"], frame["room"]) == (
                "user-joined",
                joined,
                "general",
            )
            b.send_json({"event": "typing", "payload": {"room": "general"}})
            # Typing is sent with history=False: no position.
            assert a.receive_json() == {"event": "user-typing", "payload": joined}
            b.send_json({"event": "message", "payload": {"text": "hi"}})
            for ws in (a, b):
                msg = ws.receive_json()
                assert msg["event"] == "message"
                assert msg["payload"]["from"] == b_id and msg["payload"]["text"] == "hi"
                stats_offset = msg["offset"]
            stats = chat_client.get("/stats").json()
            assert stats["connections"] == 2
            assert stats["rooms"] == 1
            assert stats["averageRoomSize"] == 2
        left = {"clientId": b_id, "room": "general"}
        frame = a.receive_json()
        assert (frame["event"], frame["payload"]) == ("user-left", left)
        assert frame["offset"] == stats_offset + 1  # the position goes on by exactly one
        assert a.receive_json() == {"event": "presence-leave", "payload": {**left, "user": None}}
    assert chat_client.get("/stats").json()["connections"] == 0
    assert a_id != b_id


def test_debug_mode_checks_outgoing_payloads_against_emits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastapi_orcs_ws import WebSocketSettings

    class Note(BaseModel):
        text: str

    for debug in (True, False):
        app, router = build(settings=WebSocketSettings(debug=debug))

        async def send_bad(ws: Connection, payload: Any) -> None:
            await ws.send("note", {"txt": "typo"})

        async def send_good(ws: Connection, payload: Any) -> None:
            await ws.data.manager.broadcast("note", {"text": "fine"})

        router.ws("/ws", {"bad": send_bad, "good": send_good}, emits={"note": Note})
        with caplog.at_level(logging.ERROR), connected(app, router) as ws:
            ws.send_json({"event": "good"})
            assert ws.receive_json() == {"event": "note", "payload": {"text": "fine"}}
            ws.send_json({"event": "bad"})
            reply = ws.receive_json()
            if debug:
                assert reply["payload"]["code"] == "internal_error"
            else:
                assert reply == {"event": "note", "payload": {"txt": "typo"}}
