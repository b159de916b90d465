"""Tokens never reach logs: unit tests of the redactor, then a real uvicorn at DEBUG/TRACE."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastapi_orcs_ws._redact import REDACTED, _redact_record, redact
from fastapi_orcs_ws.auth import install_log_redaction

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0"
    ".c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
)


# -- the redactor ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '127.0.0.1:5000 - "WebSocket /ws?a=1&token=abc.def&b=2" [accepted]',
            '127.0.0.1:5000 - "WebSocket /ws?a=1&token=[REDACTED]&b=2" [accepted]',
        ),
        ("GET /x?access_token=s3cr3t HTTP/1.1", "GET /x?access_token=[REDACTED] HTTP/1.1"),
        ("< Authorization: Bearer s3cr3t", "< Authorization: [REDACTED]"),
        ("< authorization: Basic dXNlcjpwYXNz", "< authorization: [REDACTED]"),
        ("header Bearer s3cr3t, more", "header Bearer [REDACTED], more"),
        ("< Sec-WebSocket-Protocol: token, s3cr3t", "< Sec-WebSocket-Protocol: token, [REDACTED]"),
        ("< Sec-WebSocket-Protocol: token,s3cr3t", "< Sec-WebSocket-Protocol: token,[REDACTED]"),
        ("'subprotocols': ['token', 's3cr3t']", "'subprotocols': ['token', '[REDACTED]']"),
        (
            "(b'authorization', b'Bearer s3cr3t'), (b'sec-websocket-protocol', b'token, s3cr3t')",
            "(b'authorization', b'[REDACTED]'), (b'sec-websocket-protocol', b'token, [REDACTED]')",
        ),
        ("'query_string': b'token=s3cr3t'", "'query_string': b'token=[REDACTED]'"),
        (f"claims from {JWT} ok", f"claims from {REDACTED} ok"),
        ("nothing to see here", "nothing to see here"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


def make_record(name: str, msg: Any, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_record_args_are_redacted_and_access_args_keep_their_shape() -> None:
    record = make_record(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:1",
        "GET",
        "/x?token=s3cr3t",
        "1.1",
        200,
    )
    _redact_record(record)
    assert record.args == ("127.0.0.1:1", "GET", "/x?token=[REDACTED]", "1.1", 200)
    assert "s3cr3t" not in record.getMessage()


def test_context_spanning_args_are_collapsed() -> None:
    record = make_record("uvicorn.error", "< %s: %s", "Authorization", "Basic s3cr3t")
    _redact_record(record)
    assert record.getMessage() == "< Authorization: [REDACTED]"


def test_non_string_args_messages_color_and_tracebacks() -> None:
    scope = {"query_string": b"token=s3cr3t", "headers": [(b"authorization", b"Bearer s3cr3t")]}
    record = make_record("uvicorn.asgi", "Started scope=%s", scope)
    _redact_record(record)
    assert "s3cr3t" not in record.getMessage()

    record = make_record("fastapi_orcs_ws", ValueError("/ws?token=s3cr3t"))
    _redact_record(record)
    assert "s3cr3t" not in record.getMessage()

    record = make_record("uvicorn.error", "url %s", "/ws?token=s3cr3t", color_message="u %s")
    _redact_record(record)
    assert "s3cr3t" not in str(record.__dict__)

    try:
        raise RuntimeError("bad /ws?token=s3cr3t")
    except RuntimeError:
        record = logging.LogRecord(
            "uvicorn.error", logging.ERROR, "", 1, "boom", (), sys.exc_info()
        )
    _redact_record(record)
    assert "s3cr3t" not in logging.Formatter().format(record)


def test_install_is_idempotent_and_covers_child_loggers() -> None:
    install_log_redaction()
    factory = logging.getLogRecordFactory()
    filters = list(logging.getLogger("uvicorn.error").filters)
    install_log_redaction()
    assert logging.getLogRecordFactory() is factory
    assert logging.getLogger("uvicorn.error").filters == filters
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    child = logging.getLogger("fastapi_orcs_ws.some.child")
    handler = Keep()
    child.addHandler(handler)
    try:
        child.warning("connect %s", "/ws?token=s3cr3t")
        logging.getLogger("someone.else").addHandler(handler)
        logging.getLogger("someone.else").warning("untouched token=visible")
    finally:
        child.removeHandler(handler)
        logging.getLogger("someone.else").removeHandler(handler)
    assert records[0].getMessage() == "connect /ws?token=[REDACTED]"
    assert records[1].getMessage() == "untouched token=visible"  # only watched loggers


# -- a real uvicorn --------------------------------------------------------------------------

APP_SOURCE = """
import logging

from fastapi import FastAPI, WebSocket

from fastapi_orcs_ws.auth import install_log_redaction

install_log_redaction()  # at import: after uvicorn's dictConfig, before any request

app = FastAPI()
log = logging.getLogger("fastapi_orcs_ws.example")


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    log.info("handshake %s headers=%s", websocket.url, dict(websocket.headers))
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="token" if "token" in offered else None)
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


@app.websocket("/refuse")
async def refuse(websocket: WebSocket) -> None:
    await websocket.close(4401)  # before accept: uvicorn logs the path with a 403


@app.websocket("/boom")
async def boom(websocket: WebSocket) -> None:
    raise RuntimeError(f"cannot serve {websocket.url}")


@app.get("/http")
async def plain(token: str | None = None) -> dict[str, bool]:
    log.info("plain request token=%s", token)
    return {"ok": True}
"""

WATCHED = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "websockets")
TIMEOUT = 10.0


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.lines: list[str] = []
        self.formatter_ = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))
        self.lines.append(f"{record.msg!r} {record.args!r} {record.__dict__!r}")


@contextmanager
def saved_logging() -> Iterator[None]:
    names = (*WATCHED, "fastapi_orcs_ws")
    saved = {
        n: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
        for n in names
        for lg in [logging.getLogger(n or None)]
    }
    try:
        yield
    finally:
        for n, (level, handlers, propagate, disabled) in saved.items():
            lg = logging.getLogger(n or None)
            lg.setLevel(level)
            lg.handlers = handlers
            lg.propagate = propagate
            lg.disabled = disabled


@contextmanager
def running(config: uvicorn.Config, capture: Capture, access_log: bool) -> Iterator[int]:
    # uvicorn.Config() has just run dictConfig; attach our handler after it.
    for name in WATCHED:
        if name == "uvicorn.access" and not access_log:
            continue  # a handler here would switch the access log back on
        logging.getLogger(name or None).addHandler(capture)
    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("websockets").setLevel(logging.DEBUG)  # the client, in this process
    logging.getLogger("fastapi_orcs_ws").setLevel(logging.DEBUG)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


async def exercise(port: int, secret: str) -> None:
    base = f"ws://127.0.0.1:{port}"
    async with connect(
        f"{base}/ws?token={secret}q&x=1",
        additional_headers={"Authorization": f"Bearer {secret}h"},
        subprotocols=["token", f"{secret}s"],  # type: ignore[list-item]
        open_timeout=TIMEOUT,
        close_timeout=2,
    ) as ws:
        assert ws.subprotocol == "token"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "token"
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
    for path in ("refuse", "boom"):
        with pytest.raises(InvalidStatus):
            async with connect(
                f"{base}/{path}?token={secret}r",
                additional_headers={"Authorization": f"Bearer {secret}r"},
                open_timeout=TIMEOUT,
                close_timeout=2,
            ):
                pass


def plain_request(port: int, secret: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(
            "GET", f"/http?token={secret}p", headers={"Authorization": f"Bearer {secret}p"}
        )
        assert conn.getresponse().status == 200
    finally:
        conn.close()


@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
@pytest.mark.parametrize("ws_impl", ["websockets-sansio", "websockets", "wsproto"])
@pytest.mark.parametrize("log_level", ["debug", "trace"])
@pytest.mark.parametrize("access_log", [True, False], ids=["access-log", "no-access-log"])
def test_no_token_in_uvicorn_logs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    ws_impl: str,
    log_level: str,
    access_log: bool,
) -> None:
    module = f"redaction_app_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(APP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    secret = f"SECRET{uuid.uuid4().hex}"
    capture = Capture()
    with saved_logging():
        config = uvicorn.Config(
            f"{module}:app",
            log_level=log_level,
            access_log=access_log,
            ws=ws_impl,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        with running(config, capture, access_log) as port:
            asyncio.run(asyncio.wait_for(exercise(port, secret), 3 * TIMEOUT))
            plain_request(port, secret)
    sys.modules.pop(module, None)
    out, err = capfd.readouterr()
    everything = "\n".join([out, err, *capture.lines])

    leaks = [line for line in everything.splitlines() if secret in line]
    assert not leaks, "\n".join(x[:600] for x in leaks)
    # The lines that would have leaked were logged, redacted:
    assert '"WebSocket /ws?token=[REDACTED]' in everything  # uvicorn.error, even w/o access log
    assert '"WebSocket /refuse?token=[REDACTED]' in everything
    assert "cannot serve ws://127.0.0.1" in everything  # the traceback, redacted
    assert "plain request token=[REDACTED]" in everything
    if access_log:
        assert "GET /http?token=[REDACTED]" in everything
    else:
        assert "GET /http" not in everything
    if ws_impl != "wsproto":  # the websockets protocols log request headers at DEBUG
        # "<" lines are the server's (received headers); the client logs ">" lines.
        assert "< authorization: [redacted]" in everything.lower()
        assert "< sec-websocket-protocol: token, [redacted]" in everything.lower()
    if log_level == "trace":
        assert "Started scope=" in everything
