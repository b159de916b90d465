"""The manager's room rules, the wire protocol helpers and settings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import fastapi_orcs_ws
from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    WebSocketManager,
    WebSocketRouter,
    WebSocketSettings,
)
from fastapi_orcs_ws.protocol import (
    ProtocolError,
    decode_envelope,
    encode,
    truncate_reason,
    validate_close_code,
)

pytestmark = pytest.mark.anyio


async def test_rooms_membership_and_stats_without_connections() -> None:
    manager = WebSocketManager()
    # Unknown clients: nothing raises, the answers say so.
    assert await manager.join_room("ghost", "lobby") is False
    assert await manager.leave_room("ghost", "lobby") is False
    assert await manager.send_to_client("ghost", "x", {}) is False
    assert await manager.disconnect("ghost") is False
    assert await manager.broadcast("x", {}) == 0
    assert await manager.broadcast_to_room("lobby", "x", {}) == 0
    assert await manager.get_room_clients("lobby") == set()
    assert await manager.get_client_rooms("ghost") == set()
    stats = await manager.get_stats()
    assert (stats.connections, stats.rooms, stats.average_room_size) == (0, 0, 0.0)
    assert json.loads(stats.model_dump_json()) == {
        "connections": 0,
        "rooms": 0,
        "averageRoomSize": 0.0,
        "slowConsumerDisconnects": 0,
        "connectionsRefused": 0,
        "eventsRateLimited": 0,
        "publishFailures": 0,
        "framesLost": 0,
        "backend": "memory",
        "backendHealthy": True,
        "backendDetails": {},
    }
    with pytest.raises(ValueError):
        await manager.disconnect("ghost", code=1006)


def test_rooms_with_live_connections() -> None:
    router = WebSocketRouter()
    ids: list[str] = []

    async def connect(ws: Connection) -> None:
        ids.append(ws.data.client_id)

    async def join(ws: Connection, payload: str) -> list[str]:
        await ws.data.manager.join_room(ws.data.client_id, payload)
        return sorted(await ws.data.manager.get_client_rooms(ws.data.client_id))

    async def leave(ws: Connection, payload: str) -> bool:
        return await ws.data.manager.leave_room(ws.data.client_id, payload)

    async def shout(ws: Connection, payload: str) -> int:
        return await ws.data.manager.broadcast_to_room(
            payload, "shout", ws.data.client_id, exclude=ws.data.client_id
        )

    async def everyone(ws: Connection, payload: None) -> int:
        return await ws.data.manager.broadcast("all", None, exclude=[ws.data.client_id])

    async def stats(ws: Connection, payload: None) -> dict[str, object]:
        s = await ws.data.manager.get_stats()
        return {"c": s.connections, "r": s.rooms, "avg": s.average_room_size}

    async def direct(ws: Connection, payload: str) -> bool:
        return await ws.data.manager.send_to_client(payload, "direct", "hi")

    router.ws(
        "/ws",
        {
            "connect": connect,
            "join": join,
            "leave": leave,
            "shout": shout,
            "everyone": everyone,
            "stats": stats,
            "direct": direct,
        },
    )
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(router)
    manager = router.manager

    def ask(ws: object, event: str, payload: object = None) -> object:
        ws.send_json({"event": event, "payload": payload, "id": 1})  # type: ignore[attr-defined]
        reply = ws.receive_json()  # type: ignore[attr-defined]
        assert reply["event"] == "ack", reply
        return reply["payload"]

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
            assert ask(a, "join", "red") == ["red"]
            assert ask(a, "join", "blue") == ["blue", "red"]
            assert ask(b, "join", "red") == ["red"]
            assert ask(a, "stats") == {"c": 2, "r": 2, "avg": 1.5}
            assert ask(a, "shout", "red") == 1
            assert b.receive_json() == {"event": "shout", "payload": ids[0]}
            assert ask(b, "everyone") == 1
            assert a.receive_json() == {"event": "all", "payload": None}
            assert ask(a, "direct", ids[1]) is True
            assert b.receive_json() == {"event": "direct", "payload": "hi"}
            assert ask(a, "leave", "blue") is True
            assert ask(a, "leave", "blue") is False
            assert ask(a, "stats") == {"c": 2, "r": 1, "avg": 2.0}
            b.close()
            # b left every room on its way out; empty rooms disappear. Its clean-up runs
            # concurrently, so poll a bounded number of times.
            for _ in range(200):
                if ask(a, "stats") == {"c": 1, "r": 1, "avg": 1.0}:
                    break
                time.sleep(0.01)
            assert ask(a, "stats") == {"c": 1, "r": 1, "avg": 1.0}
        assert manager.local_connections == 0


def test_envelope_decoding() -> None:
    assert decode_envelope('{"event": "a"}').payload is None
    env = decode_envelope('{"event": "a", "payload": [1], "id": "x"}')
    assert (env.event, env.payload, env.id) == ("a", [1], "x")
    for bad, code in [
        ("{", "invalid_json"),
        ("[" * 10_000 + "]" * 10_000, "invalid_json"),
        ('{"event": "a", "payload": Infinity}', "invalid_json"),
        ("null", "invalid_envelope"),
        ('{"event": null}', "invalid_envelope"),
        ('{"event": "a", "id": true}', "invalid_envelope"),
        ('{"event": "a", "id": {}}', "invalid_envelope"),
    ]:
        with pytest.raises(ProtocolError) as exc:
            decode_envelope(bad)
        assert exc.value.code == code
    assert json.loads(encode("e", {"x": 1}, id=3)) == {"event": "e", "payload": {"x": 1}, "id": 3}


def test_close_codes_and_reasons() -> None:
    for ok in (1000, 1001, 1008, 1011, 3000, 4401, 4999):
        assert validate_close_code(ok) == ok
    for bad in (999, 1004, 1005, 1006, 1015, 2000, 5000):
        with pytest.raises(ValueError):
            validate_close_code(bad)
    assert truncate_reason("short") == "short"
    cut = truncate_reason("€" * 100)  # 300 bytes
    assert len(cut.encode()) <= 123 and cut == "€" * 41


def test_settings_from_env_dotenv_and_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("WS_IDLE_TIMEOUT=30\nWS_MAX_PAYLOAD_LENGTH=2048\n")
    monkeypatch.setenv("WS_AUTH_REQUIRED", "true")
    monkeypatch.setenv("WS_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    settings = WebSocketSettings()
    assert settings.idle_timeout == 30
    assert settings.max_payload_length == 2048
    assert settings.auth_required is True
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]
    assert WebSocketSettings(idle_timeout=5).idle_timeout == 5
    manager = WebSocketManager(idle_timeout=7, max_payload_length=99)
    assert (manager.idle_timeout, manager.max_payload_length) == (7, 99)
    monkeypatch.setenv("WS_IDLE_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="WS_IDLE_TIMEOUT"):
        WebSocketSettings()
    monkeypatch.setenv("WS_IDLE_TIMEOUT", "-1")
    with pytest.raises(ConfigurationError, match="WS_IDLE_TIMEOUT"):
        WebSocketSettings()


def test_unknown_backend_url_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="WS_BACKEND_URL"):
        WebSocketManager(backend="kafka://x")


def test_uvicorn_settings_follow_ours() -> None:
    options = fastapi_orcs_ws.uvicorn_settings(
        WebSocketSettings(idle_timeout=10, max_payload_length=1000)
    )
    assert options["ws_ping_interval"] + options["ws_ping_timeout"] <= 10
    assert options["ws_max_size"] == 1000
    assert options["ws_per_message_deflate"] is False


def test_public_api_is_sorted_and_complete() -> None:
    names = fastapi_orcs_ws.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(fastapi_orcs_ws, name), name
    public = {n for n in vars(fastapi_orcs_ws) if not n.startswith("_")}
    modules = {
        n for n in public if type(getattr(fastapi_orcs_ws, n)).__name__ == "module"
    }
    assert public - modules == set(names) - {"__version__"}
