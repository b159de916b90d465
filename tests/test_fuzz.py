"""Fuzzing the envelope decoder and the handler dispatch with Hypothesis (issue 12).

The decoder either returns an envelope that agrees with the JSON it was given, or raises
`ProtocolError` with a documented `ErrorCode` and a short message; nothing else escapes it.

The dispatch fuzz sends random frames (raw text, binary, envelopes of every shape with
payloads that fit and do not fit each handler's annotation) through one in-process
connection, kept open for the whole run. After each batch a probe event must be
acknowledged: the connection survives. Every frame the client receives is an ``ack`` or an
``error`` with a documented code (never ``internal_error``), error replies are bounded in
size, an ``echo`` ack carries back exactly what was sent, and the server logs no ERROR.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from fastapi_orcs_ws import Connection, ErrorCode, WebSocketRouter, WebSocketSettings
from fastapi_orcs_ws.protocol import (
    LARGE_FRAME_CHARS,
    MAX_ID_CHARS,
    MAX_SAFE_INTEGER,
    Envelope,
    ProtocolError,
    decode_envelope,
)
from fastapi_orcs_ws.testing import EventClient, EventSession

from .decoders import needs_msgspec, outcome, outcome_without_msgspec

DOCUMENTED = {code.value for code in ErrorCode}
MAX_ERROR_REPLY = 40_000
"""Characters: 10 validation problems with 16 location parts of 200 characters at most."""

FUZZ = settings(max_examples=300, deadline=None, database=None)

# -- strategies ------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=25,
)
EVENTS = [
    "item",
    "numbers",
    "echo",
    "join",
    "ping",
    "connect",
    "disconnect",
    "error",
    "ack",
    "nope",
]
event_names = st.sampled_from(EVENTS) | st.text(max_size=30) | json_values
ids = (
    st.none()
    | st.integers()
    | st.tuples(
        st.integers(MAX_SAFE_INTEGER - 2, MAX_SAFE_INTEGER + 2), st.sampled_from([1, -1])
    ).map(lambda pair: pair[0] * pair[1])
    | st.text(max_size=12)
    | st.text(min_size=MAX_ID_CHARS - 1, max_size=MAX_ID_CHARS + 1)
    | st.floats()
    | st.booleans()
    | json_values
)
payloads = (
    json_values
    | st.fixed_dictionaries(
        {"name": st.text(max_size=30) | json_values, "qty": st.integers(-5, 5) | json_values}
    )
    | st.lists(st.integers() | json_values, max_size=20)
    | st.text(max_size=300)
)
envelopes = st.fixed_dictionaries(
    {}, optional={"event": event_names, "payload": payloads, "id": ids, "extra": json_values}
)
deep = st.integers(2, 3_000).map(
    lambda n: '{"event": "echo", "payload": ' + "[" * n + "]" * n + ', "id": 1}'
)
texts = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    envelopes.map(json.dumps),
    deep,
    st.sampled_from(
        [
            '{"event": "echo", "payload": NaN, "id": 1}',
            '{"event": "echo", "payload": [Infinity], "id": 1}',
            '{"event": "echo", "payload": -Infinity}',
            '{"event": "echo"',
            "",
            "null",
            '"event"',
            '{"event": "echo", "id": 1} trailing',
        ]
    ),
)

# -- the decoder -----------------------------------------------------------------------------


def check_decoded(text: str) -> Envelope | None:
    """Decode; a refusal must be a documented code with a short message."""
    try:
        return decode_envelope(text)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_ENVELOPE), exc.code
        assert len(exc.message) <= 300
        return None


@FUZZ
@given(texts)
def test_the_decoder_returns_an_envelope_or_a_documented_error(text: str) -> None:
    envelope = check_decoded(text)
    if envelope is not None:
        assert isinstance(envelope.event, str) and envelope.event
        assert valid_id(envelope.id)


def valid_id(value: Any) -> bool:
    """What the protocol accepts as an ``id``: a short string or a safe integer."""
    if type(value) is int:
        return abs(value) <= MAX_SAFE_INTEGER
    return value is None or (type(value) is str and len(value) <= MAX_ID_CHARS)


@FUZZ
@given(envelopes | json_values)
def test_the_decoder_agrees_with_the_json_it_is_given(value: Any) -> None:
    envelope = check_decoded(json.dumps(value))
    valid = (
        isinstance(value, dict)
        and isinstance(value.get("event"), str)
        and value["event"] != ""
        and valid_id(value.get("id"))
    )
    if not valid:
        assert envelope is None
        return
    assert envelope == Envelope(value["event"], value.get("payload"), value.get("id"))


@settings(FUZZ, max_examples=20, suppress_health_check=[HealthCheck.data_too_large])
@given(envelopes, st.text(alphabet="éøß漢字🙂", min_size=1, max_size=4))
def test_large_non_ascii_frames_decode_the_same_way(value: dict[str, Any], unit: str) -> None:
    # Past LARGE_FRAME_CHARS non-ASCII frames go through the stdlib decoder: same answers.
    padding = unit * (LARGE_FRAME_CHARS // len(unit) + 1)
    big = {**value, "pad": padding}
    small = {**value, "pad": unit}
    text = json.dumps(big, ensure_ascii=False)
    assert len(text) > LARGE_FRAME_CHARS and not text.isascii()
    got, expected = check_decoded(text), check_decoded(json.dumps(small, ensure_ascii=False))
    assert (got is None) == (expected is None)
    if got is not None and expected is not None:
        assert (got.event, got.payload, got.id) == (expected.event, expected.payload, expected.id)


# -- the two decoders: msgspec's fast path and pydantic-core's must give the same answers --

numbers = st.one_of(
    st.integers(),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from([2**63, 2**64, 2**53, -(2**63) - 1]).map(str),
    st.floats().map(repr),
    st.sampled_from(
        [
            "1e308",
            "1.7976931348623157e308",
            "1.7976931348623159e308",
            "1e309",
            "-1e400",
            "1E400",
            "1e-400",
            "5e-324",
            "-0",
            "-0.0",
            "0.1e1",
            "1" * 30,
            "-" + "9" * 19,
            "1" + "0" * 308,
            "1" + "0" * 309 + ".5",
            "NaN",
            "Infinity",
            "-Infinity",
            "01",
            "1.",
            ".5",
            "+1",
        ]
    ),
).map(str)
json_ish = st.text(alphabet='{}[]",:0123456789.eE+-truefalsn \\u00e9\ud83d\ude00\x01', max_size=60)
escapes = st.sampled_from(
    ['"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', '"\x01"']
)
decoder_inputs = st.one_of(
    texts,
    json_ish,
    numbers.map(lambda n: '{"event": "e", "payload": [' + n + "]}"),
    numbers.map(lambda n: '{"event": "e", "id": ' + n + "}"),
    escapes.map(lambda e: '{"event": ' + e + ', "payload": ' + e + "}"),
    st.integers(190, 210).map(lambda n: '{"event": "e", "payload": ' + "[" * n + "]" * n + "}"),
    st.integers(1, 120).map(
        lambda n: '{"event": "e", "payload": ' + "[{}," * n + "1" + "]" * n + "}"
    ),
)


@needs_msgspec
@settings(FUZZ, max_examples=1500)
@given(decoder_inputs)
def test_the_msgspec_path_decodes_exactly_as_pydantic_core(text: str) -> None:
    assert outcome(text) == outcome_without_msgspec(text)


@pytest.mark.parametrize("number", ["1e400", "-1e999", "1" + "0" * 400 + ".0"])
def test_a_number_that_overflows_to_infinity_is_refused(number: str) -> None:
    assert check_decoded('{"event": "echo", "payload": ' + number + "}") is None


# -- the dispatch ----------------------------------------------------------------------------


class Item(BaseModel):
    name: str = Field(max_length=20)
    qty: int = Field(ge=0)


def fuzz_app() -> FastAPI:
    router = WebSocketRouter(settings=WebSocketSettings(max_rooms_per_client=5))
    route = router.ws("/ws", rate_limit=False)

    @route.on("item")
    async def item(ws: Connection, payload: Item) -> int:
        return payload.qty

    @route.on("numbers")
    async def numbers(ws: Connection, payload: list[int]) -> int:
        return sum(payload)

    @route.on("echo")
    async def echo(ws: Connection, payload: Any) -> Any:
        return payload

    @route.on("join")
    async def join(ws: Connection, payload: str) -> bool:
        return await ws.data.manager.join_room(ws.data.client_id, payload)

    @route.on("ping")
    async def ping(ws: Connection) -> str:
        return "pong"

    app = FastAPI()
    app.include_router(router)
    return app


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def session() -> Iterator[tuple[EventSession, ErrorLog]]:
    errors = ErrorLog()
    logger = logging.getLogger("fastapi_orcs_ws")
    logger.addHandler(errors)
    with ExitStack() as stack:
        client = stack.enter_context(EventClient(fuzz_app()))
        yield stack.enter_context(client.connect("/ws")), errors
    logger.removeHandler(errors)


probes = itertools.count()


def probe(ws: EventSession) -> list[dict[str, Any]]:
    """Send a ``ping`` with a fresh id; return what came before its ``ack``."""
    probe_id = f"probe-{next(probes)}"
    ws.send("ping", id=probe_id)
    before: list[dict[str, Any]] = []
    while True:
        reply = ws.receive_frame(timeout=10)
        if reply.get("id") == probe_id:
            assert reply == {"event": "ack", "payload": "pong", "id": probe_id}
            return before
        before.append(reply)


@settings(FUZZ, max_examples=150)
@given(st.lists(texts | st.binary(max_size=20), min_size=1, max_size=5))
def test_random_frames_get_documented_answers_and_the_connection_survives(
    session: tuple[EventSession, ErrorLog], frames: list[str | bytes]
) -> None:
    ws, errors = session
    for frame in frames:
        if isinstance(frame, bytes):
            ws._session.send_bytes(frame)
        else:
            ws.send_text(frame)
        # Events are handled in order, one at a time: what comes before the probe's ack
        # answers this frame (nothing for an event without an id that was handled).
        replies = probe(ws)
        assert len(replies) <= 1, replies
        for reply in replies:
            assert reply["event"] in ("ack", "error"), reply
            if reply["event"] == "error":
                assert reply["payload"]["code"] in DOCUMENTED - {"internal_error", "rate_limited"}
                assert len(json.dumps(reply)) <= MAX_ERROR_REPLY
        envelope = check_decoded(frame) if isinstance(frame, str) else None
        if envelope is not None and envelope.event == "echo" and envelope.id is not None:
            assert replies == [{"event": "ack", "payload": envelope.payload, "id": envelope.id}]
    assert ws.close_code is None
    assert not errors.records, [r.getMessage() for r in errors.records]
