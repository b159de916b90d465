"""Breakers for fa7d361: the reader's direct call of a plain handler, msgspec decoding, the
``closed_by_server`` attribute and ``manager.checks_emits``.

The direct path (a ``(ws, payload)`` handler, an event without an ``id``, no observer) must
behave as the wrapped one (`_Session._handle`): the same event is sent with an ``id`` (the
wrapped path) and with a metrics observer installed (the observed path), and everything the
client and the application can see is compared. The decoder is compared with itself without
msgspec (pydantic-core), on numbers at the edge of the float range, frames around the
400-character fast-path bound and past 65536 characters, nesting around 200 and odd text.

Most session tests run in process (`EventClient`); the ones about a reply that has to wait
drive the ASGI app with a ``send`` the test holds, and two run on a real uvicorn.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI, HTTPException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError
from starlette.exceptions import WebSocketException
from websockets.exceptions import ConnectionClosed

from fastapi_orcs_ws import (
    Connection,
    EventError,
    PrometheusMetrics,
    RateLimit,
    WebSocketRouter,
    WebSocketSettings,
    protocol,
)
from fastapi_orcs_ws.connection import ConnectionData
from fastapi_orcs_ws.errors import AuthenticationError
from fastapi_orcs_ws.protocol import ErrorCode, decode_parts
from fastapi_orcs_ws.testing import EventClient, EventSession, serve

from .decoders import needs_msgspec, outcome, outcome_without_msgspec
from .wsclient import client, expect, recv, send

bound: contextvars.ContextVar[str] = contextvars.ContextVar("direct_bound", default="unset")

# -- the decoder: msgspec's answers against pydantic-core's, and no infinity gets in ---------


def has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(has_non_finite(v) for v in value)
    return False


OVERFLOWING = [
    "18" + "0" * 208 + "e99",  # 1.8e308: 210 digits and a 2-digit exponent
    "-18" + "0" * 208 + "E+99",
    "1" + "0" * 300 + "e9",  # 1e309: 301 digits and a 1-digit exponent
    "1" + "0" * 250 + ".5e60",
    "9" * 250 + "e90",
]


@pytest.mark.parametrize("number", OVERFLOWING, ids=lambda n: f"{len(n)}chars")
@pytest.mark.parametrize("msgspec", [True, False], ids=["msgspec", "pydantic-core"])
def test_a_number_past_the_float_range_without_a_3_digit_exponent_is_refused(
    number: str, msgspec: bool
) -> None:
    # docs/protocol.md: numbers past the float range are refused. The pre-scan looked for a
    # 3-digit exponent or 309 digits in a row; 210 digits and e99 passed it and pydantic-core
    # gave the handler `inf` (msgspec refused it, then its fallback accepted it).
    text = '{"event": "echo", "payload": [' + number + "]}"
    got = outcome(text) if msgspec else outcome_without_msgspec(text)
    assert got[0] == ErrorCode.INVALID_JSON, got
    assert "out of range" in got[1], got


@pytest.mark.parametrize(
    "number",
    [
        "17" + "0" * 208 + "e99",
        "1" + "0" * 209 + ".9e98",
        "1" + "0" * 400,
        "1" + "0" * 400 + "e-100",
    ],
)
def test_numbers_just_inside_the_float_range_still_arrive(number: str) -> None:
    text = '{"event": "echo", "payload": [' + number + "]}"
    got, expected = outcome(text), outcome_without_msgspec(text)
    assert got == expected and got[0] == "ok", (got, expected)
    (value,) = decode_parts(text)[1]
    assert value == json.loads(number)  # the exact int, or the correctly rounded float


digit_runs = st.builds(
    lambda lead, length, frac, exp: lead + "0" * length + frac + exp,
    st.sampled_from(["1", "17", "18", "-1", "-18", "9"]),
    st.integers(150, 320),
    st.sampled_from(["", ".5", ".0"]),
    st.sampled_from(["", "e9", "e99", "E99", "e+99", "e-99", "e09", "e-400", "e0"]),
)


@settings(max_examples=300, deadline=None, database=None)
@given(digit_runs)
def test_long_numbers_decode_the_same_way_and_never_as_infinity(number: str) -> None:
    text = '{"event": "e", "payload": ' + number + "}"
    got = outcome(text)
    assert got == outcome_without_msgspec(text)
    if got[0] == "ok":
        assert not has_non_finite(decode_parts(text)[1]), number
        assert decode_parts(text)[1] == json.loads(number)


def padded(payload: str, total: int) -> str:
    """An envelope of exactly ``total`` characters (padding in a string field)."""
    head = '{"event": "e", "payload": ' + payload + ', "pad": "'
    return head + "x" * (total - len(head) - 2) + '"}'


@needs_msgspec
@pytest.mark.parametrize("total", [398, 399, 400, 401, 402])
@pytest.mark.parametrize(
    "payload",
    [
        "[" * 150 + "]" * 150,
        '"' + "[" * 190 + '"',  # brackets in a string count against the fast path only
        '"\\ud800"',
        '"\\ud83d\\ude00"',
        "1e308",
        "123456789012345678901234567890",
    ],
    ids=["nested", "brackets-in-string", "lone-surrogate", "pair", "edge-float", "big-int"],
)
def test_frames_around_the_fast_path_bound_decode_the_same_way(total: int, payload: str) -> None:
    text = padded(payload, total)
    assert len(text) == total
    assert outcome(text) == outcome_without_msgspec(text)


@needs_msgspec
@pytest.mark.parametrize("depth", [199, 200, 201, 202])
def test_bare_nesting_at_the_limit_is_answered_alike(depth: int) -> None:
    # Up to 400 characters msgspec decodes whatever nests (it allows deeper than 200):
    # depth 200 is exactly 400 characters, 201 is the first that takes the other path.
    for text in (
        "[" * depth + "]" * depth,
        '{"event": "e", "payload": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}",
    ):
        assert outcome(text) == outcome_without_msgspec(text), (depth, len(text))


@needs_msgspec
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow],
)
@given(
    st.sampled_from(["x", "é", "漢", "🙂", "\\u00e9", "\\ud83d\\ude00"]),
    st.integers(-3, 3),
    st.sampled_from(["", "1e308", "e123", '"\\ud800"', "[" * 20 + "]" * 20, "NaN"]),
)
def test_frames_around_65536_characters_decode_the_same_way(
    unit: str, delta: int, extra: str
) -> None:
    body = unit * ((protocol.LARGE_FRAME_CHARS // len(unit)) + delta)
    payload = '["' + body + '"' + ((", " + extra) if extra else "") + "]"
    text = '{"event": "e", "payload": ' + payload + "}"
    assert outcome(text) == outcome_without_msgspec(text)


odd_texts = st.builds(
    lambda bom, ws1, key, value, dup, ws2: bom + ws1 + "{" + key + dup + value + "}" + ws2,
    st.sampled_from(["", "\ufeff"]),
    st.sampled_from(["", " ", "\t\n\r ", "\x0b", "\u00a0", "\u2028"]),
    st.sampled_from(
        ['"event": "e", ', '"event": "e", "event": "f", ', '"event": "", "event": "e", ']
    ),
    st.sampled_from(
        [
            '"payload": "\\ud800\\udc00"',
            '"payload": "\\udc00"',
            '"payload": "\x7f\u2028\ufffe"',
            '"payload": "a\x01"',
            '"payload": -0',
            '"payload": -0.0',
            '"payload": 1E-400',
            '"payload": 4.9406564584124654e-324',
            '"payload": 2.4703282292062328e-324',
            '"payload": 9007199254740993',
            '"payload": 9007199254740993.0',
            '"payload": {"a": 1, "a": 2}',
            '"payload": "\\/\\b\\f"',
        ]
    ),
    st.sampled_from(["", ', "id": 1, "id": "x"', ', "id": 9007199254740992', ', "id": true']),
    st.sampled_from(["", " ", "\n", "\x00", "\ufeff"]),
)


@settings(max_examples=400, deadline=None, database=None)
@given(odd_texts)
def test_odd_frames_decode_the_same_way(text: str) -> None:
    assert outcome(text) == outcome_without_msgspec(text)


# -- the session: the same failing handler, direct, with an id, and observed -----------------


class Doc(BaseModel):
    how: str
    when: str = "now"


def fail_with(how: str) -> None:
    bound.set(f"bound by fail/{how}")
    if how == "ok":
        return
    if how == "runtime":
        raise RuntimeError("boom")
    if how == "cancelled":
        raise asyncio.CancelledError  # raised by the handler, not a cancellation
    if how == "http":
        raise HTTPException(404, "no such thing")
    if how == "event_error":
        raise EventError("not allowed", code="forbidden", level=3)
    if how == "auth":
        raise AuthenticationError("token revoked")
    if how == "ws_exc":
        raise WebSocketException(4003, "go away")
    if how == "bad_code":
        raise WebSocketException(1005, "not sendable")  # closes with 1011 instead
    raise AssertionError(how)


async def tenant_of() -> str:
    return "t1"


HOWS = ["ok", "runtime", "cancelled", "http", "event_error", "auth", "ws_exc", "bad_code"]
CLOSING = {"auth": 4401, "ws_exc": 4003, "bad_code": 1011}
CLIENT_CLOSE = 1000
"""The code the test client closes with at the end, when the server did not close first. After
a server close, `disconnect` gets the server's code, although Starlette's TestClient answers
every close frame with 1000 (a real client echoes the server's code: see the uvicorn tests at
the end)."""
LOGGED = {"runtime", "cancelled", "bad_code"}


class Probe:
    """What the app saw: the disconnect handler's calls, set from the server's thread."""

    def __init__(self) -> None:
        self.disconnects: list[tuple[int, str]] = []
        self.gone = threading.Event()


def session_app(
    kind: str,
    mode: str,
    probe: Probe,
    *,
    route_kind: str = "reader",
    rate_limit: RateLimit | bool = False,
) -> tuple[FastAPI, WebSocketRouter]:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws(
        "/ws", concurrency=2 if route_kind == "concurrency2" else 1, rate_limit=rate_limit
    )

    if route_kind == "connect":

        @route.on("connect")
        async def connect(ws: Connection) -> None:
            await asyncio.sleep(0)  # suspends: the reader is a child task from the start

    if kind == "plain":

        @route.on("fail")
        async def fail(ws: Connection, payload: Any) -> None:
            if payload["when"] == "later":
                await asyncio.sleep(0)
            fail_with(payload["how"])

    elif kind == "typed":

        @route.on("fail")
        async def fail_typed(ws: Connection, payload: Doc) -> None:
            if payload.when == "later":
                await asyncio.sleep(0)
            fail_with(payload.how)

    elif kind == "sync":

        @route.on("fail")
        def fail_sync(ws: Connection, payload: Any) -> None:
            fail_with(payload["how"])

    elif kind == "depends":

        @route.on("fail")
        async def fail_dep(
            ws: Connection, payload: Any, tenant: Annotated[str, Depends(tenant_of)]
        ) -> None:
            assert tenant == "t1"
            if payload["when"] == "later":
                await asyncio.sleep(0)
            fail_with(payload["how"])

    else:
        raise AssertionError(kind)

    @route.on("peek")
    async def peek(ws: Connection, payload: Any) -> None:
        await ws.send("peeked", {"seen": bound.get(), "n": payload})

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        probe.disconnects.append((payload["code"], bound.get()))
        probe.gone.set()

    if mode == "observed":
        PrometheusMetrics(CollectorRegistry()).instrument(router)
    app = FastAPI()
    app.include_router(router)
    return app, router


@contextmanager
def connected(app: FastAPI) -> Iterator[EventSession]:
    with EventClient(app) as events, events.connect("/ws") as ws:
        yield ws


def fail_frame(mode: str, how: str, when: str) -> dict[str, Any]:
    frame: dict[str, Any] = {"event": "fail", "payload": {"how": how, "when": when}}
    if mode == "id":
        frame["id"] = 77
    return frame


def run_case(
    kind: str, mode: str, how: str, when: str, caplog: pytest.LogCaptureFixture, **app_kw: Any
) -> dict[str, Any]:
    """Everything the client and the app saw, with the id of the ``id`` mode taken out."""
    probe = Probe()
    app, router = session_app(kind, mode, probe, **app_kw)
    assert (router.manager.observer is not None) == (mode == "observed")
    caplog.clear()
    frames: list[dict[str, Any]] = []
    close_code = None
    with connected(app) as ws:
        ws.send_text(json.dumps(fail_frame(mode, how, when)))
        if how in CLOSING:
            close_code = ws.expect_close()
        else:
            ws.send("peek", 1)  # after the failure: handled after it, in its own context
            while True:
                frame = ws.receive_frame()
                if frame["event"] == "peeked":
                    peeked = frame["payload"]
                    break
                frames.append(frame)
            ws.close(1000)
    assert probe.gone.wait(10), "the disconnect handler did not run"
    for frame in frames:
        if mode == "id":
            assert frame.pop("id") == 77, frame
        assert "id" not in frame, frame
    if mode == "id" and how == "ok":
        assert frames == [{"event": "ack", "payload": None}]
        frames = []
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name == "fastapi_orcs_ws"
    ]
    return {
        "frames": frames,
        "close": close_code,
        "peeked": None if close_code else peeked,
        "disconnects": probe.disconnects,
        "errors": [re.sub("[0-9a-f]{32}", "<client>", e) for e in errors],
    }


def expected_frames(how: str) -> list[dict[str, Any]]:
    return {
        "ok": [],
        "runtime": [_error("internal_error", "internal server error")],
        "cancelled": [_error("internal_error", "internal server error")],
        "http": [_error("http_error", "no such thing", status=404)],
        "event_error": [_error("forbidden", "not allowed", level=3)],
    }.get(how, [])


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": "error",
        "payload": {"message": message, "code": code, "event": "fail", **extra},
    }


@pytest.mark.parametrize("when", ["now", "later"])
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind", ["plain", "typed", "sync", "depends"])
def test_a_failing_handler_is_answered_alike_direct_with_an_id_and_observed(
    kind: str, how: str, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_orcs_ws")
    seen = {mode: run_case(kind, mode, how, when, caplog) for mode in ("direct", "id", "observed")}
    assert seen["direct"] == seen["id"] == seen["observed"], seen
    got = seen["direct"]
    assert got["frames"] == expected_frames(how), got
    assert got["close"] == CLOSING.get(how), got
    # What the failed handler bound reaches neither the next event nor `disconnect`.
    assert got["peeked"] in (None, {"seen": "unset", "n": 1}), got
    assert got["disconnects"] == [(CLOSING.get(how, CLIENT_CLOSE), "unset")], got
    assert len(got["errors"]) == (1 if how in LOGGED else 0), got


@pytest.mark.parametrize("route_kind", ["connect", "concurrency2"])
@pytest.mark.parametrize("when", ["now", "later"])
@pytest.mark.parametrize("how", ["runtime", "cancelled", "event_error", "ws_exc"])
def test_routes_with_connect_or_concurrency_answer_alike(
    route_kind: str, how: str, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_orcs_ws")
    seen = {
        mode: run_case("plain", mode, how, when, caplog, route_kind=route_kind)
        for mode in ("direct", "id", "observed")
    }
    assert seen["direct"] == seen["id"] == seen["observed"], seen
    assert seen["direct"]["frames"] == expected_frames(how)
    assert seen["direct"]["disconnects"] == [(CLOSING.get(how, CLIENT_CLOSE), "unset")]
    assert seen["direct"]["close"] == CLOSING.get(how)


def test_a_client_cannot_fire_a_plain_disconnect_handler() -> None:
    # `disconnect(ws, payload)` unannotated is `plain`: the direct path must still refuse it.
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/ws")
    probe = Probe()

    @route.on("disconnect")
    async def disconnect(ws, payload):  # type: ignore[no-untyped-def]
        probe.disconnects.append((payload["code"], bound.get()))
        probe.gone.set()

    assert route.handlers["disconnect"].plain
    app = FastAPI()
    app.include_router(router)
    with connected(app) as ws:
        ws.send("disconnect", {"code": 1000, "reason": "forged"})
        frame = ws.receive_frame()
        assert frame["payload"]["code"] == "reserved_event", frame
        assert "id" not in frame
        ws.close(4000)
    assert probe.gone.wait(10)
    assert probe.disconnects == [(4000, "unset")]


# -- order, and what arrives while a direct handler is unfinished -----------------------------


def order_app(mode: str) -> tuple[FastAPI, list[Any]]:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/ws", rate_limit=False)
    log: list[Any] = []
    gate: dict[str, asyncio.Event] = {}

    @route.on("slow")
    async def slow(ws: Connection, payload: Any) -> None:
        bound.set("slow")
        log.append(("slow-start", payload))
        gate["go"] = asyncio.Event()
        await ws.send("waiting", payload)
        await gate["go"].wait()
        log.append(("slow-end", payload, bound.get()))
        if payload == "raise":
            raise RuntimeError("after suspending")

    @route.on("n")
    async def numbered(ws: Connection, payload: Any) -> None:
        log.append(("n", payload, bound.get()))
        await ws.send("n", {"i": payload})

    if mode == "observed":
        PrometheusMetrics(CollectorRegistry()).instrument(router)
    app = FastAPI()
    app.include_router(router)
    app.state.gate = gate
    return app, log


def summary(frame: dict[str, Any]) -> tuple[str, Any]:
    if frame["event"] == "n":
        return "n", frame["payload"]["i"]
    if frame["event"] == "error":
        return "error", frame["payload"]["code"]
    return frame["event"], frame.get("id")


@pytest.mark.parametrize("mode", ["direct", "id", "observed"])
@pytest.mark.parametrize("ending", ["returns", "raise"])
def test_events_queued_behind_a_suspended_handler_run_in_order_in_their_own_context(
    mode: str, ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="fastapi_orcs_ws")
    app, log = order_app(mode)
    with_id = mode == "id"
    with connected(app) as ws:
        ws.send_text(
            json.dumps({"event": "slow", "payload": ending, **({"id": "s"} if with_id else {})})
        )
        assert ws.expect("waiting") == ending
        for i in range(5):
            if i == 2:
                ws.send_text("{not json")
            ws.send_text(json.dumps({"event": "n", "payload": i, **({"id": i} if with_id else {})}))
        # Opened from the app's own loop (a portal call): an event would queue behind `slow`.
        ws._session.portal.call(lambda: app.state.gate["go"].set())
        count = 6 + (1 if ending == "raise" or with_id else 0) + (5 if with_id else 0)
        frames = [summary(ws.receive_frame()) for _ in range(count)]
        ws.assert_nothing_received(0.05)
    first = (
        [("error", "internal_error")] if ending == "raise" else [("ack", "s")] if with_id else []
    )
    rest: list[tuple[str, Any]] = []
    for i in range(5):
        if i == 2:
            rest.append(("error", "invalid_json"))
        rest.append(("n", i))
        if with_id:
            rest.append(("ack", i))
    assert frames == first + rest
    assert log == [
        ("slow-start", ending),
        ("slow-end", ending, "slow"),
        *[("n", i, "unset") for i in range(5)],
    ]


# -- a reply that has to wait: reading goes on, as on the wrapped path ------------------------


class HeldSend:
    """An ASGI ``send`` that holds the first error frame until released, and a ``receive``
    that reports each call: whether the app reads while that write waits."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.receives = 0
        self.reading_again = asyncio.Event()
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self.receives_when_held = 0

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        if self.holding.is_set() and self.receives > self.receives_when_held:
            self.reading_again.set()
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if (
            message["type"] == "websocket.send"
            and '"error"' in message.get("text", "")
            and not self.holding.is_set()
        ):
            self.receives_when_held = self.receives
            self.holding.set()
            await self.release.wait()


SCOPE = {
    "type": "websocket",
    "asgi": {"version": "3.0"},
    "scheme": "ws",
    "http_version": "1.1",
    "path": "/ws",
    "raw_path": b"/ws",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"testserver")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 80),
    "subprotocols": [],
    "state": {},
    "extensions": {},
}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["direct", "id", "observed"])
@pytest.mark.parametrize("how", ["runtime", "event_error", "http"])
async def test_reading_goes_on_while_a_failed_handlers_error_reply_waits(
    mode: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # On the wrapped path the error reply is part of the event's coroutine: when its write
    # has to wait (a client that is behind), a new task reads meanwhile (close frames, the
    # next events). At fa7d361 the direct path awaited the reply in the reader itself.
    caplog.set_level(logging.CRITICAL, logger="fastapi_orcs_ws")
    probe = Probe()
    app, _ = session_app("plain", mode, probe)
    asgi = HeldSend()
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, dict(SCOPE, state={}), asgi.receive, asgi.send)
            await asgi.inbox.put({"type": "websocket.connect"})
            frame = fail_frame(mode, how, "now")
            await asgi.inbox.put({"type": "websocket.receive", "text": json.dumps(frame)})
            with anyio.fail_after(5):
                await asgi.holding.wait()
            reading = False
            with anyio.move_on_after(3):
                await asgi.reading_again.wait()
                reading = True
            # The client closes while the reply is held; then the write goes through.
            await asgi.inbox.put({"type": "websocket.disconnect", "code": 4001})
            asgi.release.set()
    assert reading, "the session stopped reading while the error reply waited"
    assert probe.disconnects == [(4001, "unset")]
    texts = [json.loads(m["text"]) for m in asgi.sent if m["type"] == "websocket.send"]
    assert [t["payload"]["code"] for t in texts] == [expected_frames(how)[0]["payload"]["code"]]


# -- rate limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "id", "observed"])
def test_a_rate_limit_counts_direct_events_as_any_other(mode: str) -> None:
    probe = Probe()
    app, _ = session_app("plain", mode, probe, rate_limit=RateLimit(per_second=0.001, burst=3))
    with connected(app) as ws:
        for _ in range(3):
            ws.send_text(json.dumps(fail_frame(mode, "http", "now")))
        answered = [ws.receive_frame() for _ in range(3)]
        assert [f["payload"]["code"] for f in answered] == ["http_error"] * 3
        ws.send_text(json.dumps(fail_frame(mode, "http", "now")))
        limited = ws.receive_frame()
        assert limited["payload"]["code"] == "rate_limited", limited
        assert ("id" in limited) == (mode == "id")
        for _ in range(3):
            ws.send_text(json.dumps(fail_frame(mode, "http", "now")))
        assert ws.expect_close() == 1008
    assert probe.gone.wait(10)
    assert probe.disconnects == [(1008, "unset")]  # the server's close, not TestClient's 1000


# -- manager.on("disconnect"), kicks and closed_by_server ------------------------------------


@pytest.mark.parametrize("mode", ["direct", "observed"])
def test_a_manager_wide_disconnect_runs_once_after_a_direct_failure(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="fastapi_orcs_ws")
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/ws")
    calls: list[tuple[Any, str]] = []
    done = threading.Event()

    @route.on("fail")
    async def fail(ws: Connection, payload: Any) -> None:
        bound.set("fail")
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    @router.manager.on("disconnect")
    async def gone(ws: Connection, payload: Any) -> None:
        calls.append((payload["code"], bound.get()))
        done.set()

    if mode == "observed":
        PrometheusMetrics(CollectorRegistry()).instrument(router)
    app = FastAPI()
    app.include_router(router)
    with connected(app) as ws:
        ws.send("fail", 1)
        assert ws.receive_frame()["payload"]["code"] == "internal_error"
        ws.close(4321)
    assert done.wait(10)
    assert calls == [(4321, "unset")]


def test_events_after_a_kick_are_not_handled_on_the_direct_path() -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/ws")
    handled: list[Any] = []

    @route.on("kick_me")
    async def kick_me(ws: Connection, payload: Any) -> None:
        handled.append(payload)
        assert ws.closed_by_server is False
        await ws.data.manager.disconnect(ws.client_id, 4003, "kicked")
        assert ws.closed_by_server is True

    app = FastAPI()
    app.include_router(router)
    with connected(app) as ws:
        ws.send("kick_me", 1)
        ws.send("kick_me", 2)  # after the kick: ignored
        assert ws.expect_close() == 4003
    assert handled == [1]


def test_closed_by_server_is_a_plain_attribute_set_by_the_connection() -> None:
    from datetime import UTC, datetime

    from fastapi_orcs_ws import WebSocketManager

    manager = WebSocketManager()
    data = ConnectionData("c1", connected_at=datetime.now(UTC), manager=manager)
    conn = Connection.detached(data)
    assert conn.closed_by_server is False  # ended by the peer's side (node lost), not us
    assert "closed_by_server" in Connection.__slots__
    assert not isinstance(Connection.__dict__.get("closed_by_server"), property)


# -- WS_DEBUG: declared emits are still checked on the direct path ----------------------------


class Out(BaseModel):
    n: int


@pytest.mark.parametrize("mode", ["direct", "id", "observed"])
def test_debug_mode_checks_declared_emits_in_a_direct_handler(
    mode: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WS_DEBUG", "true")
    monkeypatch.setenv("WS_AUTH_ENABLED", "false")
    caplog.set_level(logging.ERROR, logger="fastapi_orcs_ws")
    router = WebSocketRouter()
    assert router.settings.debug
    route = router.ws("/ws", emits={"out": Out})
    assert router.manager.checks_emits

    @route.on("emit")
    async def emit(ws: Connection, payload: Any) -> None:
        try:
            await ws.send("out", {"n": payload})
        except ValidationError as exc:
            await ws.send("refused", exc.errors()[0]["type"])
            if payload == "raise":
                raise

    if mode == "observed":
        PrometheusMetrics(CollectorRegistry()).instrument(router)
    app = FastAPI()
    app.include_router(router)
    extra = {"id": 9} if mode == "id" else {}
    with connected(app) as ws:
        ws.send_text(json.dumps({"event": "emit", "payload": 5, **extra}))
        assert ws.expect("out") == {"n": 5}
        ws.send_text(json.dumps({"event": "emit", "payload": "five", **extra}))
        assert ws.expect("refused") == "int_parsing"
        caplog.clear()
        ws.send_text(json.dumps({"event": "emit", "payload": "raise", **extra}))
        assert ws.expect("refused") == "int_parsing"
        error = ws.expect("error")
        assert error["code"] == "internal_error"
        assert "out" not in [f["event"] for f in ws._buffer]
    assert any("handler for event 'emit' raised" in r.getMessage() for r in caplog.records)


def test_without_debug_emits_are_not_checked() -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False, debug=False))
    route = router.ws("/ws", emits={"out": Out})
    assert router.manager.checks_emits is False

    @route.on("emit")
    async def emit(ws: Connection, payload: Any) -> None:
        await ws.send("out", {"n": payload})

    app = FastAPI()
    app.include_router(router)
    with connected(app) as ws:
        ws.send("emit", "not a number")
        assert ws.expect("out") == {"n": "not a number"}


# -- real uvicorn: a suspended direct handler keeps reading going ------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["direct", "id"])
async def test_a_client_close_is_read_while_a_direct_handler_waits(mode: str) -> None:
    """The handler waits for the server to *read* the client's close frame (an ASGI middleware
    opens its gate when ``receive`` returns the disconnect): it finishes only if reading goes
    on while it waits. The event queued behind it is still handled, after it, in order."""
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/ws")
    gates: list[asyncio.Event] = []
    order: list[Any] = []
    codes: list[int] = []

    @route.on("wait")
    async def wait(ws: Connection, payload: Any) -> None:
        gates.append(asyncio.Event())
        await ws.send("waiting", payload)
        await gates[0].wait()
        order.append(("late send", await ws.send("late", payload)))  # to a closed client

    @route.on("after")
    async def after(ws: Connection, payload: Any) -> None:
        order.append(("after", payload))

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        codes.append(payload["code"])

    app = FastAPI()
    app.include_router(router)

    async def middleware(scope: Any, receive: Any, send_: Any) -> None:
        async def watched() -> Any:
            message = await receive()
            if message["type"] == "websocket.disconnect" and gates:
                gates[0].set()
            return message

        await app(scope, watched, send_)

    extra = {"id": 1} if mode == "id" else {}
    with serve(middleware, settings=router.settings) as server:
        async with client(server.ws_url("/ws")) as ws:
            await send(ws, "wait", 1, **extra)
            assert (await expect(ws, "waiting"))["payload"] == 1
            await send(ws, "after", 2)  # queued behind `wait`
            await ws.close(4005, "bye")
        with anyio.fail_after(10):
            while not codes:
                await anyio.sleep(0.02)
    assert codes == [4005]
    assert order == [("late send", False), ("after", 2)]


@pytest.mark.anyio
async def test_a_direct_handler_failing_after_suspending_on_a_real_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="fastapi_orcs_ws")
    probe = Probe()
    app, router = session_app("plain", "direct", probe)
    with serve(app, settings=router.settings) as server:
        async with client(server.ws_url("/ws")) as ws:
            for how in ("runtime", "cancelled", "http", "event_error"):
                await ws.send(json.dumps(fail_frame("direct", how, "later")))
                await send(ws, "peek", how)
                error = await expect(ws, "error")
                assert "id" not in error
                assert error == expected_frames(how)[0]
                assert (await expect(ws, "peeked"))["payload"] == {"seen": "unset", "n": how}
            await ws.send(json.dumps(fail_frame("direct", "ws_exc", "later")))
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 4003
        with anyio.fail_after(10):
            while not probe.disconnects:
                await anyio.sleep(0.02)
    assert probe.disconnects == [(4003, "unset")]
    logged = [r for r in caplog.records if "handler for event 'fail' raised" in r.getMessage()]
    assert len(logged) == 2
