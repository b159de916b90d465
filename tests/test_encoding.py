"""Strict outbound JSON: `encode` never emits NaN/Infinity or anything `JSON.parse` rejects.

Unit tests of `protocol.encode` and, as an attack on a real uvicorn (issue 12, item 6), a client
that sends `1e999` (which JSON parsers, pydantic-core's included, read as infinity) to handlers
that echo it back: the client must never receive `Infinity` or `NaN`, it gets an
`internal_error` event instead, and the connection keeps serving it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, computed_field, field_serializer, model_serializer
from pydantic_core import from_json

from fastapi_orcs_ws import (
    Connection,
    EncodeError,
    ErrorCode,
    WebSocketError,
    WebSocketRouter,
    WebSocketSettings,
)
from fastapi_orcs_ws.protocol import decode_envelope, encode, encode_error
from fastapi_orcs_ws.testing import LiveServer, serve
from tests.wsclient import client

INF, NAN = float("inf"), float("nan")


def strict(text: str) -> Any:
    """Parse as a browser's JSON.parse would: NaN/Infinity refused."""
    return from_json(text, allow_inf_nan=False)


class Price(BaseModel):
    amount: float
    currency: str = "EUR"
    note: str | None = None


class Basket(BaseModel):
    items: list[Price]


class NullForNonFinite(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="null")  # the model's own, explicit choice
    x: float
    inner: Price | None = None


class ConstantsForNonFinite(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")  # invalid JSON: still refused
    x: float


class Serialised(BaseModel):
    x: float

    @field_serializer("x")
    def _x(self, value: float) -> float | str:
        return value if math.isfinite(value) else "out of range"


class Shaped(BaseModel):
    x: float

    @model_serializer
    def _shape(self) -> dict[str, Any]:
        return {"value": self.x}


class Computed(BaseModel):
    a: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ratio(self) -> float:
        return self.a * INF


class Extra(BaseModel):
    model_config = ConfigDict(extra="allow")


@dataclasses.dataclass
class Point:
    x: float
    y: float


REFUSED: list[tuple[str, Any, str]] = [
    ("nan", NAN, "payload is nan"),
    ("inf", INF, "payload is inf"),
    ("-inf", -INF, "payload is -inf"),
    ("1e999", float("1e999"), "payload is inf"),
    ("nested dict", {"a": {"b": [1.0, -INF]}}, "payload.a.b[1] is -inf"),
    ("tuple", (1, NAN), "payload[1] is nan"),
    ("set", {NAN}, "payload[0] is nan"),
    ("model", Price(amount=NAN), "payload.amount is nan"),
    ("nested model", Basket(items=[Price(amount=1), Price(amount=INF)]), "payload.items[1]"),
    ("model in a dict", {"basket": Basket(items=[Price(amount=-INF)])}, "payload.basket"),
    ("constants config", ConstantsForNonFinite(x=NAN), "payload.x is nan"),
    ("explicit null model, inner default", NullForNonFinite(x=1, inner=Price(amount=INF)), "inner"),
    ("model_serializer", Shaped(x=INF), "payload.value is inf"),
    ("computed field", Computed(a=1.0), "payload.ratio is inf"),
    ("extra field", Extra(big=NAN), "payload.big is nan"),  # type: ignore[call-arg]
    ("dataclass", Point(1.0, NAN), "payload.y is nan"),
    ("Decimal NaN", Decimal("NaN"), "Decimal('NaN')"),
    ("Decimal sNaN", {"d": Decimal("sNaN")}, "payload.d is Decimal('sNaN')"),
    ("Decimal -Infinity", [Decimal("-Infinity")], "payload[0] is Decimal('-Infinity')"),
]


@pytest.mark.parametrize(
    ("payload", "where"), [(p, w) for _, p, w in REFUSED], ids=[n for n, _, _ in REFUSED]
)
def test_non_finite_numbers_are_refused_with_their_place(payload: Any, where: str) -> None:
    with pytest.raises(EncodeError) as exc:
        encode("price", payload, id=7)
    message = str(exc.value)
    assert "'price'" in message and where in message, message
    assert "NaN or Infinity" in message
    assert exc.value.event == "price"
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, WebSocketError)
    assert len(message) < 400


class Unencodable:
    pass


@pytest.mark.parametrize(
    "payload",
    [Unencodable(), {"a": [1, Unencodable()]}, object(), {"fn": len}],
    ids=["object", "nested", "bare object", "function"],
)
def test_objects_json_cannot_hold_are_refused(payload: Any) -> None:
    with pytest.raises(EncodeError) as exc:
        encode("thing", payload)
    assert "'thing'" in str(exc.value) and "serialize" in str(exc.value)
    assert exc.value.event == "thing"


ACCEPTED: list[tuple[str, Any, Any]] = [
    ("strings that spell constants", {"t": "NaN, Infinity and -Infinity", "n": None}, None),
    ("nulls and finite floats", {"a": None, "b": [None, 1.5, -0.0], "c": 1e308}, None),
    (
        "model with a null field",
        Price(amount=2.5),
        {"amount": 2.5, "currency": "EUR", "note": None},
    ),
    ("explicit null config", NullForNonFinite(x=NAN), {"x": None, "inner": None}),
    ("field serializer", Serialised(x=INF), {"x": "out of range"}),
    ("finite Decimal", Decimal("1.10"), "1.10"),
    ("finite dataclass", Point(1.0, 2.0), {"x": 1.0, "y": 2.0}),
    ("nan as a dict key", {NAN: 1}, {"nan": 1}),  # a key is a string in JSON: valid
]


@pytest.mark.parametrize(
    ("payload", "expected"), [(p, e) for _, p, e in ACCEPTED], ids=[n for n, _, _ in ACCEPTED]
)
def test_valid_payloads_encode_as_strict_json(payload: Any, expected: Any) -> None:
    text = encode("e", payload, id="r1")
    frame = strict(text)
    assert frame["event"] == "e" and frame["id"] == "r1"
    assert frame["payload"] == (payload if expected is None else expected)
    assert decode_envelope(text).payload == frame["payload"]  # what we send, we would accept


SAME_TEXT: list[Any] = [
    {"a": 1, "b": [1.5, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308], "c": "é\u2028\x00"},
    {"t": True, "f": False, "n": None, "s": "<>&'\"\\/", "nested": {"": [[], {}]}},
    [2**63 - 1, -(2**63), 2**64, 2**70],  # past 64 bits: pydantic's (orjson refuses them)
    {1: "int key", "k": (1, 2), "set": {3}},  # not plain JSON: pydantic's
    {"when": datetime(2024, 1, 1, tzinfo=UTC)},
    {"d": Decimal("1.10"), "p": Point(1.0, 2.0), "model": Price(amount=2.5)},
    {"lone surrogate": "\ud800"},
    {"deep": functools.reduce(lambda inner, _: [inner], range(300), 1)},  # orjson's limit
]


@pytest.mark.parametrize("payload", SAME_TEXT, ids=range(len(SAME_TEXT)))
def test_orjson_path_writes_what_pydantic_writes(payload: Any) -> None:
    """With orjson installed, `encode` uses it for plain JSON values: the text is the same."""
    from pydantic_core import to_json

    from fastapi_orcs_ws import protocol

    try:
        expected: str | None = to_json({"event": "e", "payload": payload}).decode()
    except ValueError:
        expected = None  # pydantic cannot write it: neither may the fast path
    if expected is None:
        with pytest.raises(EncodeError):
            encode("e", payload)
    else:
        assert encode("e", payload) == expected
    if protocol._orjson is not None:
        saved = protocol._orjson
        protocol._orjson = None  # type: ignore[assignment]
        try:
            if expected is not None:
                assert encode("e", payload) == expected
        finally:
            protocol._orjson = saved


def test_error_events_are_strict_too() -> None:
    assert strict(encode_error("bad", "bad_request", id=1, detail={"x": 1})) == {
        "event": "error",
        "payload": {"message": "bad", "code": "bad_request", "detail": {"x": 1}},
        "id": 1,
    }
    with pytest.raises(EncodeError, match=r"payload\.limit is inf"):
        encode_error("too big", "too_big", limit=INF)


def test_encode_error_is_exported_and_documented() -> None:
    import fastapi_orcs_ws
    from fastapi_orcs_ws import errors

    assert "EncodeError" in fastapi_orcs_ws.__all__
    assert "EncodeError" in (errors.__doc__ or "")


# -- the attack, on a real uvicorn ------------------------------------------------------


class Reading(BaseModel):
    value: float  # pydantic reads the string "1e999" (and the number 1e999) as inf


def attack_app() -> FastAPI:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/ws/echo")

    @route.on("echo")
    async def echo(ws: Connection, payload: Any) -> Any:
        return payload  # the ack carries whatever came in

    @route.on("reading")
    async def reading(ws: Connection, payload: Reading) -> Reading:
        return payload

    @route.on("send")
    async def send(ws: Connection, payload: Any) -> None:
        await ws.send("echoed", payload)

    @route.on("broadcast")
    async def broadcast(ws: Connection, payload: Any) -> None:
        await ws.data.manager.broadcast("echoed", payload)

    app = FastAPI()
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def echo_server() -> Iterator[LiveServer]:
    with serve(attack_app()) as server:
        yield server


ATTACKS = [
    ("echo", '{"x": 1e999}'),
    ("echo", "[1e999, -1e999]"),
    ("echo", '{"deep": [[[{"x": -1e999}]]]}'),
    ("reading", '{"value": 1e999}'),
    ("reading", '{"value": "1e999"}'),
    ("reading", '{"value": "-inf"}'),
    ("reading", '{"value": "nan"}'),
    ("send", '{"x": 1e999}'),
    ("broadcast", '{"x": 1e999}'),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("event", "payload"), ATTACKS, ids=[f"{e}:{p}" for e, p in ATTACKS])
async def test_echoed_infinity_never_reaches_the_client(
    echo_server: LiveServer, event: str, payload: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="fastapi_orcs_ws")
    async with client(echo_server.ws_url("/ws/echo")) as ws:
        await ws.send(f'{{"event": "{event}", "payload": {payload}, "id": "attack"}}')
        await ws.send('{"event": "echo", "payload": {"ok": 1.5}, "id": "after"}')
        frames: list[dict[str, Any]] = []
        while not any(f.get("id") == "after" for f in frames):
            text = await _recv_text(ws)
            # The text itself: no bare constant, and valid for JSON.parse.
            assert "Infinity" not in text and "NaN" not in text, text
            frames.append(strict(text))
    by_id = {f.get("id"): f for f in frames}
    if "1e999" in payload and '"1e999"' not in payload:
        # A number literal past the float range is refused at the door, before any handler:
        # the frame is not valid JSON for us (no JSON value is infinite), so it has no id.
        refused = by_id[None]
        assert refused["event"] == "error", refused
        assert refused["payload"]["code"] == ErrorCode.INVALID_JSON
        assert "out of range" in refused["payload"]["message"]
        assert by_id["after"] == {"event": "ack", "payload": {"ok": 1.5}, "id": "after"}
        return
    refused = by_id["attack"]
    assert refused["event"] == "error", refused
    assert refused["payload"]["code"] == ErrorCode.INTERNAL_ERROR
    assert refused["payload"]["event"] == event
    # The connection survived the fault and still serves its client.
    assert by_id["after"] == {"event": "ack", "payload": {"ok": 1.5}, "id": "after"}
    assert not [f for f in frames if f["event"] == "echoed"]
    # The fault is logged for the developer, with the reason.
    logged = "\n".join(
        r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records
    )
    assert "inf" in logged or "nan" in logged, logged


async def _recv_text(ws: Any, timeout: float = 5.0) -> str:
    import anyio

    with anyio.fail_after(timeout):
        text = await ws.recv()
    assert isinstance(text, str)
    return text


def test_json_dumps_would_have_sent_infinity() -> None:
    """The attack is real: the standard library writes what browsers refuse."""
    assert json.dumps({"x": float("1e999")}) == '{"x": Infinity}'
    assert from_json("1e999", allow_inf_nan=False) == INF  # and parsers let 1e999 in
