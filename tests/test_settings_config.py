"""Settings that fail loudly (issue 10, item 5).

- List settings take a JSON list and a comma-separated string, from keyword arguments, the
  environment and ``.env``; anything else is a ``ConfigurationError`` naming the variable.
- Every JWT configuration the authenticator cannot honour stops the app when its router is
  built, whether or not a route requires auth; with nothing configured, a WARNING says that
  tokens will be refused.
- ``run()`` and ``uvicorn_settings()`` take the app (or router, or import string) and use its
  routers' settings; routers that disagree are a ``ConfigurationError``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from jose import jwk
from starlette.middleware.cors import CORSMiddleware

from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    WebSocketRouter,
    WebSocketSettings,
    run,
    uvicorn_settings,
)
from fastapi_orcs_ws.testing import serve
from tests.tokens import rsa_key_pair
from tests.wsclient import client

ROOT = Path(__file__).resolve().parent.parent
SECRET = "settings-test-secret-0123456789-abcdefgh"
_RSA_PRIVATE, RSA_PUBLIC, _ = rsa_key_pair()


def ec_public_pem(curve: ec.EllipticCurve) -> str:
    key = ec.generate_private_key(curve).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def rsa_jwks() -> str:
    key = jwk.construct(RSA_PUBLIC, "RS256").to_dict()
    return json.dumps({"keys": [{**key, "kid": "k1"}]})


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No WS_* variable from the outside, and no .env but the test's own."""
    for name in list(os.environ):
        if name.startswith("WS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


Source = Callable[[pytest.MonkeyPatch, Path, str, str], WebSocketSettings]


def from_kwargs(_mp: pytest.MonkeyPatch, _tmp: Path, name: str, value: str) -> WebSocketSettings:
    return WebSocketSettings(**{name: value})


def from_env(mp: pytest.MonkeyPatch, _tmp: Path, name: str, value: str) -> WebSocketSettings:
    mp.setenv(f"WS_{name.upper()}", value)
    return WebSocketSettings()


def from_dotenv(_mp: pytest.MonkeyPatch, tmp: Path, name: str, value: str) -> WebSocketSettings:
    (tmp / ".env").write_text(f"WS_{name.upper()}='{value}'\n")
    return WebSocketSettings()


SOURCES = {"kwargs": from_kwargs, "env": from_env, "dotenv": from_dotenv}

LIST_FORMS = [
    ("allowed_origins", '["https://app.example"]', ["https://app.example"]),
    (
        "allowed_origins",
        '["https://a.example", "https://b.example:8443"]',
        ["https://a.example", "https://b.example:8443"],
    ),
    ("allowed_origins", " [ ] ", []),
    (
        "allowed_origins",
        "https://a.example, https://b.example",
        ["https://a.example", "https://b.example"],
    ),
    ("allowed_origins", "https://a.example", ["https://a.example"]),
    ("allowed_origins", "HTTPS://App.Example:443/", ["https://app.example"]),  # as browsers send it
    ("allowed_origins", "http://[::1]:8000", ["http://[::1]:8000"]),
    ("jwt_algorithms", '["HS256", "HS384"]', ["HS256", "HS384"]),
    ("jwt_algorithms", "HS256,HS384", ["HS256", "HS384"]),
    ("jwt_algorithms", "HS512", ["HS512"]),
    ("jwt_algorithms", "HS256, HS256", ["HS256"]),
]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("name", "value", "expected"), LIST_FORMS)
def test_list_settings_take_json_lists_and_commas(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    source: str,
    name: str,
    value: str,
    expected: list[str],
) -> None:
    settings = SOURCES[source](monkeypatch, tmp_path, name, value)
    assert getattr(settings, name) == expected


def test_list_settings_take_python_lists_in_code() -> None:
    settings = WebSocketSettings(
        allowed_origins=("https://a.example", "https://b.example/"), jwt_algorithms=["HS384"]
    )
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]
    assert settings.jwt_algorithms == ["HS384"]


MALFORMED = [
    ("allowed_origins", '["https://app.example"', "not a JSON list"),
    ("allowed_origins", "[1, 2]", "non-empty string"),
    ("allowed_origins", '[""]', "non-empty string"),
    ("allowed_origins", '{"a": 1}', "not an origin"),
    ("allowed_origins", "app.example", "not an origin"),
    ("allowed_origins", "https://app.example/login", "not an origin"),
    ("allowed_origins", "*", "leave the list empty"),
    ("allowed_origins", "https://app.example:99999", "not an origin"),
    ("jwt_algorithms", "none", "never accepted"),
    ("jwt_algorithms", '["HS256", "none"]', "never accepted"),
    ("jwt_algorithms", "hs256", "spelled HS256"),
    ("jwt_algorithms", "PS256", "not supported"),
    ("jwt_algorithms", "HS256;RS256", "not supported"),
    ("jwt_algorithms", "[]", "at least one"),
    ("jwt_algorithms", ",", "at least one"),
]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("name", "value", "problem"), MALFORMED)
def test_malformed_list_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    source: str,
    name: str,
    value: str,
    problem: str,
) -> None:
    with pytest.raises(ConfigurationError) as exc:
        SOURCES[source](monkeypatch, tmp_path, name, value)
    message = str(exc.value)
    assert f"WS_{name.upper()}" in message and problem in message, message
    assert "Value error" not in message  # pydantic's prefix is noise to a user


@pytest.mark.parametrize("value", [42, {"https://a.example": True}, None, [None]])
def test_list_settings_refuse_other_types_in_code(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="WS_ALLOWED_ORIGINS"):
        WebSocketSettings(allowed_origins=value)


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WS_JWT_SECRET", "WS_ALLOWED_ORIGINS", "WS_JWT_ALGORITHMS", "WS_IDLE_TIMEOUT"):
        monkeypatch.setenv(name, "")
    settings = WebSocketSettings()
    assert settings.jwt_secret is None and settings.allowed_origins == []
    assert settings.jwt_algorithms == ["HS256"] and settings.idle_timeout == 120


# -- the authenticator refuses what it cannot honour, at start-up ---------------------------

UNHONOURABLE: dict[str, tuple[dict[str, str], str]] = {
    "alg none": ({"WS_JWT_ALGORITHMS": "none", "WS_JWT_SECRET": SECRET}, "WS_JWT_ALGORITHMS"),
    "unknown alg": ({"WS_JWT_ALGORITHMS": "HS257"}, "WS_JWT_ALGORITHMS"),
    "HS without a secret": ({"WS_JWT_ALGORITHMS": "HS256"}, "WS_JWT_SECRET"),
    "HS384 without a secret": ({"WS_JWT_ALGORITHMS": '["HS384"]'}, "WS_JWT_SECRET"),
    "RS without a key": ({"WS_JWT_ALGORITHMS": "RS256"}, "WS_JWT_PUBLIC_KEY"),
    "ES without a key": ({"WS_JWT_ALGORITHMS": "ES256"}, "WS_JWT_JWKS"),
    "mix, secret only": (
        {"WS_JWT_ALGORITHMS": "HS256,RS256", "WS_JWT_SECRET": SECRET},
        "RS256 but no key",
    ),
    "mix, public key only": (
        {"WS_JWT_ALGORITHMS": "HS256,RS256", "WS_JWT_PUBLIC_KEY": RSA_PUBLIC},
        "WS_JWT_SECRET is not set",
    ),
    "public key, default algorithms": ({"WS_JWT_PUBLIC_KEY": RSA_PUBLIC}, "WS_JWT_SECRET"),
    "RSA key for ES256": (
        {"WS_JWT_ALGORITHMS": "ES256", "WS_JWT_PUBLIC_KEY": RSA_PUBLIC},
        "verifies none of",
    ),
    "RSA key for RS256 and ES256": (
        {"WS_JWT_ALGORITHMS": "RS256,ES256", "WS_JWT_PUBLIC_KEY": RSA_PUBLIC},
        "ES256 but no key",
    ),
    "P-384 key for ES256": (
        {"WS_JWT_ALGORITHMS": "ES256", "WS_JWT_PUBLIC_KEY": ec_public_pem(ec.SECP384R1())},
        "verifies none of",
    ),
    "RSA key set for ES256": (
        {"WS_JWT_ALGORITHMS": "RS256,ES256", "WS_JWT_JWKS": rsa_jwks()},
        "ES256 but no key",
    ),
    "key set, no public algorithm": (
        {"WS_JWT_SECRET": SECRET, "WS_JWT_JWKS": rsa_jwks()},
        "WS_JWT_JWKS is set",
    ),
    "secret, no HMAC algorithm": (
        {"WS_JWT_ALGORITHMS": "RS256", "WS_JWT_PUBLIC_KEY": RSA_PUBLIC, "WS_JWT_SECRET": SECRET},
        "WS_JWT_SECRET is set",
    ),
    "private key as public key": (
        {"WS_JWT_ALGORITHMS": "RS256", "WS_JWT_PUBLIC_KEY": _RSA_PRIVATE},
        "private key",
    ),
    "escaped newlines in the PEM": (
        {"WS_JWT_ALGORITHMS": "RS256", "WS_JWT_PUBLIC_KEY": RSA_PUBLIC.replace("\n", "\\n")},
        "literal",
    ),
    "not a PEM": ({"WS_JWT_ALGORITHMS": "RS256", "WS_JWT_PUBLIC_KEY": "abc"}, "PEM"),
    "audience without a key": ({"WS_JWT_AUDIENCE": "chat"}, "WS_JWT_SECRET"),
    "auth enabled explicitly, no key": ({"WS_AUTH_ENABLED": "true"}, "WS_JWT_SECRET"),
    "auth required, no key": ({"WS_AUTH_REQUIRED": "true"}, "WS_JWT_SECRET"),
}

ROUTE_SHAPES: dict[str, Callable[[WebSocketRouter], Any]] = {
    "no route": lambda router: None,
    "anonymous route": lambda router: router.ws("/ws/open", auth={"required": False}),
    "route requiring auth": lambda router: router.ws("/ws/closed", auth={"required": True}),
}


@pytest.mark.parametrize("shape", ROUTE_SHAPES)
@pytest.mark.parametrize("case", UNHONOURABLE)
def test_unhonourable_auth_configuration_stops_the_router(
    monkeypatch: pytest.MonkeyPatch, case: str, shape: str
) -> None:
    env, names = UNHONOURABLE[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as exc:
        ROUTE_SHAPES[shape](WebSocketRouter())
    assert names in str(exc.value), str(exc.value)


@pytest.mark.parametrize("case", ["HS without a secret", "mix, secret only", "RS without a key"])
def test_the_same_mistakes_in_code_stop_the_router(case: str) -> None:
    env, names = UNHONOURABLE[case]
    values: dict[str, Any] = {k.removeprefix("WS_").lower(): v for k, v in env.items()}
    with pytest.raises(ConfigurationError, match=names):
        WebSocketRouter(settings=WebSocketSettings(**values))


def test_a_route_that_enables_auth_needs_a_key_even_when_auth_is_off() -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    router.ws("/ws/open")  # auth off: nothing to verify, nothing to check
    with pytest.raises(ConfigurationError, match="the route enables auth"):
        router.ws("/ws/on", auth={"enabled": True})


def test_disabled_auth_ignores_keys_it_will_not_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_AUTH_ENABLED", "false")
    monkeypatch.setenv("WS_JWT_ALGORITHMS", "RS256")  # no key, but nothing verifies tokens
    WebSocketRouter().ws("/ws/open")


HONOURABLE: dict[str, dict[str, str]] = {
    "secret": {"WS_JWT_SECRET": SECRET},
    "secret, JSON algorithms": {"WS_JWT_SECRET": SECRET, "WS_JWT_ALGORITHMS": '["HS256","HS512"]'},
    "RSA key": {"WS_JWT_ALGORITHMS": "RS256,RS512", "WS_JWT_PUBLIC_KEY": RSA_PUBLIC},
    "EC key": {"WS_JWT_ALGORITHMS": "ES384", "WS_JWT_PUBLIC_KEY": ec_public_pem(ec.SECP384R1())},
    "RSA key set": {"WS_JWT_ALGORITHMS": "RS256", "WS_JWT_JWKS": rsa_jwks()},
    "RSA PEM + EC key set": {
        "WS_JWT_ALGORITHMS": "RS256,ES256",
        "WS_JWT_PUBLIC_KEY": RSA_PUBLIC,
        "WS_JWT_JWKS": json.dumps(
            {
                "keys": [
                    {
                        **jwk.construct(ec_public_pem(ec.SECP256R1()), "ES256").to_dict(),
                        "kid": "e1",
                    }
                ]
            }
        ),
    },
    "everything": {
        "WS_JWT_ALGORITHMS": "HS256,RS256",
        "WS_JWT_SECRET": SECRET,
        "WS_JWT_PUBLIC_KEY": RSA_PUBLIC,
        "WS_AUTH_REQUIRED": "true",
        "WS_JWT_AUDIENCE": "chat",
    },
}


@pytest.mark.parametrize("case", HONOURABLE)
def test_honourable_configurations_start(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    for name, value in HONOURABLE[case].items():
        monkeypatch.setenv(name, value)
    router = WebSocketRouter()
    router.ws("/ws/closed", auth={"required": True})
    assert router.authenticator.verifier is not None


def test_nothing_configured_serves_anonymously_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapi_orcs_ws.auth")
    router = WebSocketRouter()
    router.ws("/ws/open")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "WS_JWT_SECRET" in warnings[0].getMessage()
    assert "WS_AUTH_ENABLED=false" in warnings[0].getMessage()
    caplog.clear()
    WebSocketRouter(settings=WebSocketSettings(auth_enabled=False)).ws("/ws/open")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _run_app_in_subprocess(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")} | env
    full_env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_misconfigured_app_never_starts_serving() -> None:
    """`run("module:app")`, as documented: the process exits before uvicorn binds a port."""
    result = _run_app_in_subprocess(
        {"WS_JWT_ALGORITHMS": "HS256,RS256", "WS_JWT_SECRET": SECRET},
        "import fastapi_orcs_ws; "
        "fastapi_orcs_ws.run('docs.snippets.quickstart:app', host='127.0.0.1', port=1)",
    )
    assert result.returncode != 0
    assert "ConfigurationError" in result.stderr and "RS256" in result.stderr
    assert "WS_JWT_PUBLIC_KEY" in result.stderr
    assert "Uvicorn running" not in result.stderr


# -- JSON-list origins on a real server ------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value", ['["https://app.example", "https://admin.example"]', "https://app.example"]
)
async def test_json_list_origins_let_browsers_in(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from websockets.exceptions import InvalidStatus

    monkeypatch.setenv("WS_ALLOWED_ORIGINS", value)
    monkeypatch.setenv("WS_AUTH_ENABLED", "false")
    router = WebSocketRouter()
    route = router.ws("/ws/echo")

    @route.on("echo")
    async def echo(ws: Connection, payload: Any) -> Any:
        return payload

    app = FastAPI()
    app.include_router(router)
    with serve(app) as server:
        url = server.ws_url("/ws/echo")
        async with client(url, origin="https://app.example") as ws:  # type: ignore[arg-type]
            await ws.send('{"event": "echo", "payload": 1, "id": 1}')
            assert json.loads(await ws.recv()) == {"event": "ack", "payload": 1, "id": 1}
        with pytest.raises(InvalidStatus) as refused:
            async with client(url, origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403


# -- run() and uvicorn_settings() use the app's routers' settings -----------------------------


def app_with(*routers: WebSocketRouter, prefixes: tuple[str, ...] = ()) -> FastAPI:
    app = FastAPI()
    for i, router in enumerate(routers):
        app.include_router(router, prefix=prefixes[i] if prefixes else "")
    return app


def router_with(path: str = "/ws", **values: Any) -> WebSocketRouter:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False, **values))
    router.ws(path)
    return router


def test_router_settings_reach_uvicorn() -> None:
    app = app_with(router_with(idle_timeout=60, max_payload_length=4096, compression=True))
    options = uvicorn_settings(app)
    assert (options["ws_ping_interval"], options["ws_ping_timeout"]) == (30, 30)
    assert options["ws_max_size"] == 4096 and options["ws_per_message_deflate"] is True
    config = uvicorn.Config(app, **options)  # uvicorn takes them as they are
    assert (config.ws_ping_interval, config.ws_ping_timeout, config.ws_max_size) == (30, 30, 4096)
    assert config.ws == "websockets-sansio"


@pytest.mark.parametrize(
    "wrap",
    [
        lambda app: app,
        lambda app: CORSMiddleware(app, allow_origins=["*"]),
        lambda app: app.router,
    ],
    ids=["app", "middleware-wrapped app", "the app's router"],
)
def test_uvicorn_settings_find_routers_in_any_form(wrap: Callable[[FastAPI], Any]) -> None:
    app = app_with(router_with(idle_timeout=10), prefixes=("/api",))
    assert uvicorn_settings(wrap(app))["ws_ping_interval"] == 5


def test_uvicorn_settings_of_a_router_a_settings_object_or_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert uvicorn_settings(router_with(idle_timeout=8))["ws_ping_interval"] == 4
    assert uvicorn_settings(WebSocketSettings(idle_timeout=6))["ws_ping_timeout"] == 3
    assert uvicorn_settings(settings=WebSocketSettings(idle_timeout=4))["ws_ping_timeout"] == 2
    monkeypatch.setenv("WS_IDLE_TIMEOUT", "50")
    assert uvicorn_settings()["ws_ping_interval"] == 25


def test_routers_that_agree_are_fine_and_shared_settings_too() -> None:
    shared = WebSocketSettings(auth_enabled=False, idle_timeout=30)
    one, two = WebSocketRouter(settings=shared), WebSocketRouter(settings=shared)
    one.ws("/a")
    two.ws("/b")
    three = router_with("/c", idle_timeout=30, send_queue_size=10)  # differs off the server
    assert uvicorn_settings(app_with(one, two, three))["ws_ping_interval"] == 15


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"idle_timeout": 60}, "idle_timeout"),
        ({"max_payload_length": 1024}, "max_payload_length"),
        ({"compression": True}, "compression"),
    ],
)
def test_routers_that_disagree_are_refused(values: dict[str, Any], name: str) -> None:
    app = app_with(router_with("/ws/a"), router_with("/ws/b", **values), prefixes=("", "/v2"))
    with pytest.raises(ConfigurationError) as exc:
        uvicorn_settings(app)
    message = str(exc.value)
    assert name in message and "/ws/a" in message and "/v2/ws/b" in message, message
    assert "settings=" in message
    with pytest.raises(ConfigurationError):
        run(app)


def test_explicit_settings_win_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    app = app_with(router_with("/ws/a", idle_timeout=60), router_with("/ws/b", idle_timeout=20))
    with caplog.at_level(logging.WARNING, logger="fastapi_orcs_ws"):
        options = uvicorn_settings(app, settings=WebSocketSettings(idle_timeout=40))
    assert options["ws_ping_interval"] == 20
    assert "overrides idle_timeout" in caplog.text and "60" in caplog.text


def test_an_app_without_event_routes_warns(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WS_IDLE_TIMEOUT", "14")
    with caplog.at_level(logging.WARNING, logger="fastapi_orcs_ws"):
        assert uvicorn_settings(FastAPI())["ws_ping_interval"] == 7
    assert "no WebSocket event route" in caplog.text


@pytest.fixture
def captured_run(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


idle60_app = app_with(router_with(idle_timeout=60))


def make_idle60_app() -> FastAPI:
    return app_with(router_with(idle_timeout=60))


def test_run_passes_the_routers_settings(captured_run: list[tuple[Any, dict[str, Any]]]) -> None:
    run(idle60_app, port=8123)
    ((app, options),) = captured_run
    assert app is idle60_app
    assert (options["ws_ping_interval"], options["ws_ping_timeout"], options["port"]) == (
        30,
        30,
        8123,
    )
    run(idle60_app, ws_ping_interval=5)  # the caller's keywords win
    assert captured_run[-1][1]["ws_ping_interval"] == 5


def test_run_reads_import_strings_and_factories(
    captured_run: list[tuple[Any, dict[str, Any]]],
) -> None:
    run("tests.test_settings_config:idle60_app")
    assert captured_run[-1] == (
        "tests.test_settings_config:idle60_app",
        {**uvicorn_settings(idle60_app)},
    )
    run("tests.test_settings_config:make_idle60_app", factory=True)
    app, options = captured_run[-1]
    assert isinstance(app, FastAPI) and "factory" not in options  # built once, served as is
    assert options["ws_ping_interval"] == 30
    run("tests.test_settings_config:make_idle60_app", factory=True, reload=True)
    app, options = captured_run[-1]
    assert app == "tests.test_settings_config:make_idle60_app" and options["factory"] is True
    assert options["ws_ping_interval"] == 30


def _unix_handshake(path: str, deadline: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1)
    while True:
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    key = b64encode(b"0123456789abcdef").decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def _frames(sock: socket.socket, deadline: float) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each server frame (unmasked, short), until the deadline."""
    buffer = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            return
        buffer += chunk
        while len(buffer) >= 2 and len(buffer) >= 2 + (buffer[1] & 0x7F):
            length = buffer[1] & 0x7F
            yield buffer[0] & 0x0F, buffer[2 : 2 + length]
            buffer = buffer[2 + length :]


def make_idle1_app() -> FastAPI:
    return app_with(router_with(idle_timeout=1))


def test_run_enforces_the_routers_idle_timeout_on_a_real_server(tmp_path: Path) -> None:
    """A peer that never answers pings is pinged and then cut (1011), per the router's
    ``idle_timeout=1``; with the default (120 s) nothing would happen for a minute."""
    uds = str(tmp_path / "ws.sock")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    full_env["PYTHONPATH"] = str(ROOT)
    code = (
        "import fastapi_orcs_ws; fastapi_orcs_ws.run("
        f"'tests.test_settings_config:make_idle1_app', factory=True, uds={uds!r}, "
        "log_level='warning')"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=full_env, stderr=subprocess.PIPE, text=True
    ) as server:
        try:
            deadline = time.monotonic() + 30
            with contextlib.closing(_unix_handshake(uds, deadline)) as sock:
                opcodes, close = [], b""
                for opcode, payload in _frames(sock, deadline):
                    opcodes.append(opcode)
                    if opcode == 0x8:
                        close = payload
                        break
            assert 0x9 in opcodes, opcodes  # pinged...
            assert int.from_bytes(close[:2], "big") == 1011, (opcodes, close)  # ...then cut
        finally:
            server.terminate()
            server.wait(timeout=10)
