"""The wire protocol: the JSON envelope, error codes and close codes.

Every frame, in both directions, is a text frame holding
``{"event": name, "payload": value}``; a client may add ``"id"`` to ask for an
acknowledgement. This module is the only place that knows that shape.
"""

from __future__ import annotations

import dataclasses
import json as _json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any

from pydantic import BaseModel
from pydantic_core import from_json, to_json

from .errors import EncodeError

try:  # optional (the `orjson` extra): a faster encoder for plain JSON values
    import orjson as _orjson
except ImportError:  # pragma: no cover - the suite runs with and without it
    _orjson = None  # type: ignore[assignment]

try:  # optional (the `msgspec` extra): a faster decoder for inbound frames
    import msgspec as _msgspec
except ImportError:  # pragma: no cover - the suite runs with and without it
    _msgspec = None  # type: ignore[assignment]

__all__ = [
    "CloseCode",
    "Envelope",
    "ErrorCode",
    "ProtocolError",
    "decode_envelope",
    "decode_parts",
    "encode",
    "encode_error",
    "truncate_reason",
    "validate_close_code",
]

RESERVED_EVENTS = frozenset({"connect", "disconnect", "error", "ack"})
"""Event names a client may not send: lifecycle events and the server's replies."""

MAX_CLOSE_REASON_BYTES = 123


class CloseCode(IntEnum):
    """Close codes this library sends (RFC 6455 plus application codes 4xxx)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006
    """Never sent: reported when the peer vanished without a close frame."""
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4401
    """Missing, invalid or expired token (mirrors HTTP 401)."""
    FORBIDDEN = 4403
    """Authenticated but not allowed (mirrors HTTP 403)."""
    SLOW_CONSUMER = 4429
    """The client stopped reading and its outbound queue overflowed."""


class ErrorCode(StrEnum):
    """Machine-readable codes carried by ``error`` events."""

    INVALID_JSON = "invalid_json"
    INVALID_ENVELOPE = "invalid_envelope"
    UNSUPPORTED_FRAME = "unsupported_frame"
    UNKNOWN_EVENT = "unknown_event"
    RESERVED_EVENT = "reserved_event"
    VALIDATION_ERROR = "validation_error"
    INTERNAL_ERROR = "internal_error"
    HTTP_ERROR = "http_error"
    """A handler raised FastAPI's ``HTTPException``; the event carries its ``status``."""
    RATE_LIMITED = "rate_limited"
    """The client sent events faster than its rate limit; the event was not handled."""
    ROOM_LIMIT = "room_limit"
    """A handler's ``join_room`` was refused (``RoomLimitError``): too many rooms for the
    client, or a room name too long; the event carries the ``limit``."""


class ProtocolError(Exception):
    """An inbound frame that breaks the protocol; answered with an ``error`` event."""

    def __init__(self, message: str, code: str, *, event: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.event = event


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us per inbound frame
class Envelope:
    """A decoded inbound frame."""

    event: str
    payload: Any = None
    id: str | int | None = None


def encode(
    event: str,
    payload: Any = None,
    *,
    id: str | int | None = None,
    room: str | None = None,
    offset: int | None = None,
    epoch: str | None = None,
) -> str:
    """Encode one outbound frame as strict JSON (RFC 8259), the rules the decoder applies.

    A frame of a room that keeps history carries its position beside the event, at the top
    level: ``{"event", "payload", "room", "offset", "epoch"}`` (docs/rooms.md); clients that
    read only ``event`` and ``payload`` ignore it.

    ``payload`` may hold anything pydantic serialises: models, dataclasses, datetimes,
    ``Decimal``, UUIDs, enums, sets... (pydantic's JSON mode).

    Returns:
        ``{"event": event, "payload": payload}`` (plus ``"id"`` when given) as text.

    Raises:
        EncodeError: the payload holds a float or ``Decimal`` that is NaN or infinite
            (``1e999`` is infinite), anywhere (nested models included; pydantic would write
            them as ``NaN``/``Infinity``, which ``JSON.parse`` rejects, or as ``null``), or an
            object pydantic cannot serialise. The message names the event and the place
            (``payload.items[2].price is inf``). A model that sets ``ser_json_inf_nan`` to
            ``"null"`` or ``"strings"`` in its config chose a valid JSON form for its own
            floats, and gets it.
    """
    body: dict[str, Any] = {"event": event, "payload": payload}
    if id is not None:
        body["id"] = id
    if room is not None:
        body["room"] = room
    if offset is not None:
        body["offset"] = offset
    if epoch is not None:
        body["epoch"] = epoch
    if _orjson is not None:
        try:
            data = _orjson.dumps(body, default=_not_plain, option=_ORJSON_PLAIN)
        except TypeError:  # orjson.JSONEncodeError too: not plain JSON, left to pydantic
            pass
        else:
            # orjson writes exactly what pydantic writes for plain JSON values, except NaN and
            # infinities, which it writes as null: a frame with a null takes pydantic's path.
            if data.find(b"null") < 0:
                return data.decode()
    try:
        data = to_json(body)
    except (ValueError, TypeError, RecursionError) as exc:  # PydanticSerializationError too
        raise EncodeError(f"cannot encode event {event!r:.80}: {_short(exc)}", event=event) from exc
    # Fast path: no constant, and no null that could be a model's NaN/Infinity in disguise
    # (pydantic models write them as null by default). bytes.find beats `in` here.
    constant = data.find(b"NaN") >= 0 or data.find(b"Infinity") >= 0
    if constant or data.find(b"null") >= 0:
        problem = _non_finite(payload)
        if problem is None and constant:
            try:  # a bare constant the walk could not see (a custom serializer's output)
                from_json(data, allow_inf_nan=False)
            except ValueError:
                problem = "payload holds NaN or Infinity"
        if problem is not None:
            raise EncodeError(
                f"cannot encode event {event!r:.80}: {problem} (JSON has no NaN or Infinity; "
                "send null or a string)",
                event=event,
            )
    return data.decode()


# orjson serialises these itself, differently from pydantic (datetimes, dataclasses,
# subclasses of str, int, dict and list): handed to `_not_plain`, which gives them to pydantic.
_ORJSON_PLAIN = (
    (
        _orjson.OPT_PASSTHROUGH_DATETIME
        | _orjson.OPT_PASSTHROUGH_DATACLASS
        | _orjson.OPT_PASSTHROUGH_SUBCLASS
    )
    if _orjson is not None
    else 0
)


def _not_plain(value: Any) -> Any:
    raise TypeError("not a plain JSON value")


_OFFSET_KEY = ',"offset":'


def encode_room_head(event: str, payload: Any, room: str) -> str:
    """The frame of a room with history up to its offset, encoded once per broadcast.

    The frame is ``head + str(offset) + position_tail(epoch)``: the backend that assigns the
    position (atomically with the write to history) completes it without re-encoding.
    Raises ``EncodeError`` as [`encode`][fastapi_orcs_ws.protocol.encode].
    """
    return encode(event, payload, room=room)[:-1] + _OFFSET_KEY


def position_tail(epoch: str) -> str:
    """What follows the offset in a positioned frame: ``,"epoch":"..."}``."""
    return ',"epoch":' + _json.dumps(epoch) + "}"


def unpositioned(head: str) -> str:
    """The frame of ``encode_room_head`` without a position (history could not be written)."""
    return head[: -len(_OFFSET_KEY)] + "}"


def frame_position(frame: str) -> tuple[str, int] | None:
    """``(room, offset)`` of a positioned frame; None for any other frame."""
    if _OFFSET_KEY not in frame:
        return None
    try:
        body = from_json(frame)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    room, offset = body.get("room"), body.get("offset")
    if isinstance(room, str) and type(offset) is int:
        return room, offset
    return None


def encode_error(
    message: str,
    code: str,
    *,
    id: str | int | None = None,
    **extra: Any,
) -> str:
    """Encode an ``error`` event: ``{"message": ..., "code": ..., **extra}``."""
    payload: dict[str, Any] = {"message": message, "code": code}
    payload.update((k, v) for k, v in extra.items() if v is not None)
    return encode("error", payload, id=id)


_SAFE_NON_FINITE = ("null", "strings")  # ser_json_inf_nan values that give valid JSON
_LEAF, _FLOAT, _DECIMAL, _MAPPING, _SEQUENCE, _MODEL, _DATACLASS = range(1, 8)  # all truthy
_KINDS: dict[type, int] = {
    str: _LEAF,
    int: _LEAF,
    bool: _LEAF,
    type(None): _LEAF,
    bytes: _LEAF,
    float: _FLOAT,
    Decimal: _DECIMAL,
    dict: _MAPPING,
    list: _SEQUENCE,
    tuple: _SEQUENCE,
}
_MODELS: dict[type, tuple[bool, bool, tuple[str, ...], tuple[str, ...]]] = {}
_CACHE_LIMIT = 4096  # types and model classes remembered (dynamic models must not leak)


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is None:
        if issubclass(cls, str | int | bytes) or cls is type(None):
            kind = _LEAF
        elif issubclass(cls, float):
            kind = _FLOAT
        elif issubclass(cls, Decimal):
            kind = _DECIMAL
        elif issubclass(cls, Mapping):
            kind = _MAPPING
        elif issubclass(cls, list | tuple | set | frozenset):
            kind = _SEQUENCE
        elif issubclass(cls, BaseModel):
            kind = _MODEL
        elif dataclasses.is_dataclass(cls):
            kind = _DATACLASS
        else:  # pydantic writes it as a string (datetime, UUID...) or refused it already
            kind = _LEAF
        if len(_KINDS) > _CACHE_LIMIT:
            _KINDS.clear()
            _KINDS.update({str: _LEAF, float: _FLOAT, dict: _MAPPING, list: _SEQUENCE})
        _KINDS[cls] = kind
    return kind


def _non_finite(value: Any) -> str | None:
    """Where ``value`` holds a NaN or infinite float/Decimal that would be sent, if anywhere."""
    try:
        found = _find(value, False)
    except RecursionError:
        return "the payload is nested too deeply to check"
    if found is None:
        return None
    parts, problem = found
    return f"{('payload' + ''.join(reversed(parts)))[:200]} is {problem}"


def _find(value: Any, allowed: bool) -> tuple[list[str], str] | None:
    """``(reversed path parts, problem)`` of the first non-finite number in ``value``."""
    kind = _KINDS.get(type(value)) or _kind(type(value))
    if kind == _MAPPING:
        for key, item in value.items():
            # Leaves are skipped inline: this walk runs on the broadcast path.
            if _KINDS.get(type(item)) == _LEAF:
                continue
            found = _find(item, allowed)
            if found is not None:
                found[0].append(f".{key}")
                return found
        return None
    if kind == _SEQUENCE:
        for index, item in enumerate(value):
            if _KINDS.get(type(item)) == _LEAF:
                continue
            found = _find(item, allowed)
            if found is not None:
                found[0].append(f"[{index}]")
                return found
        return None
    if kind == _FLOAT:
        return None if allowed or math.isfinite(value) else ([], repr(value))
    if kind == _LEAF:
        return None
    if kind == _DECIMAL:
        return None if value.is_finite() else ([], f"Decimal({str(value)!r})")
    if kind == _MODEL:
        return _find_in_model(value)
    fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return _find(fields, allowed)


def _find_in_model(model: BaseModel) -> tuple[list[str], str] | None:
    cls = type(model)
    info = _MODELS.get(cls)
    if info is None:
        allowed = cls.model_config.get("ser_json_inf_nan") in _SAFE_NON_FINITE
        decorators = cls.__pydantic_decorators__
        custom = {name for d in decorators.field_serializers.values() for name in d.info.fields}
        names = tuple(
            name
            for name, field in cls.model_fields.items()
            if not field.exclude and name not in custom
        )
        info = (
            allowed,
            bool(decorators.model_serializers),
            names,
            tuple(cls.model_computed_fields),
        )
        if len(_MODELS) > _CACHE_LIMIT:
            _MODELS.clear()
        _MODELS[cls] = info
    allowed, own_shape, names, computed = info
    if own_shape:  # a model_serializer decides the model's shape
        return _find(model.model_dump(mode="python"), allowed)
    fields = model.__dict__
    for name in names:
        item = fields.get(name)
        if _KINDS.get(type(item)) == _LEAF:
            continue
        found = _find(item, allowed)
        if found is not None:
            found[0].append(f".{name}")
            return found
    extra = dict(model.__pydantic_extra__ or {})
    extra.update((name, getattr(model, name)) for name in computed)
    return _find(extra, allowed) if extra else None


MAX_ID_CHARS = 128
"""The longest string ``id`` a client may send."""
MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer ``id`` (JavaScript's ``Number.MAX_SAFE_INTEGER``, so browsers read it
back exactly)."""
LARGE_FRAME_CHARS = 1 << 16
"""Non-ASCII frames longer than this are decoded by the stdlib (less memory, see below)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_EXPONENT = re.compile(r"e\+?\d{3}")  # a literal first char: re's fast scan
_EXPONENT_ANY = re.compile(r"[eE]\+?\d{3}")
# 210, not 309: a number overflows when its integer digits plus its exponent pass 308, and an
# exponent without 3 digits is at most 99, so 210 integer digits with e99 (``18`` and 208 zeros
# then ``e99``: 1.8e308) overflow too; with \d{309} pydantic-core read such a number as inf.
_LONG_NUMBER = re.compile(r"\d{210}")
_LONG_NUMBER_CHARS = 210
# Together: whether a frame may hold a number past the float range (a 3-digit exponent, or
# 210+ digits). Cheap on the usual frame (well under a microsecond for a small one).


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(
            f"the number {literal[:24]}... is out of range (no JSON value is infinite)"
        )
    return value


# msgspec reads what pydantic-core reads (big integers exactly, no NaN or Infinity) and refuses
# numbers past the float range (1e400) itself, at about half the cost with no pre-scan. Its
# nesting limit is deeper than pydantic-core's (about 200, which the protocol keeps), so a frame
# that could nest deeper than that takes the pydantic-core path below. Anything msgspec refuses
# is decoded again on that path, which words the error: the fast path changes only the speed
# (tests/test_fuzz.py compares the two paths on generated frames).
_fast_decode = _msgspec.json.Decoder().decode if _msgspec is not None else None
# UnicodeEncodeError: a str holding a lone surrogate (never from a socket; from Python code).
_FAST_ERRORS = (_msgspec.MsgspecError, UnicodeEncodeError) if _msgspec is not None else ()
MAX_FAST_DEPTH_CHARS = 400
"""Frames up to this many characters nest at most 200 deep (as pydantic-core allows)."""
MAX_DEPTH = 200
"""How deep a frame's JSON may nest (pydantic-core's limit, kept with either decoder)."""


def decode_envelope(text: str) -> Envelope:
    """Decode and check one inbound text frame, or raise `ProtocolError`.

    A frame is a JSON object (RFC 8259) with a non-empty string ``event``, any ``payload``
    (default ``None``) and an optional ``id``: a string of at most `MAX_ID_CHARS` characters
    or an integer within ±`MAX_SAFE_INTEGER`. Numbers past the float range, ``NaN`` and
    ``Infinity`` are refused, as is nesting deeper than about 200.

    Raises:
        ProtocolError: with ``code`` ``invalid_json`` (not JSON, or refused as above) or
            ``invalid_envelope`` (JSON, but not the shape above).
    """
    return Envelope(*decode_parts(text))


def decode_parts(text: str) -> tuple[str, Any, str | int | None]:
    """`decode_envelope` as a tuple ``(event, payload, id)``: what the session's reader uses
    on every frame (no object to build). Raises `ProtocolError` as `decode_envelope` does.
    """
    if _fast_decode is not None and (
        len(text) <= MAX_FAST_DEPTH_CHARS
        or (
            (len(text) <= LARGE_FRAME_CHARS or text.isascii())
            and text.count("[") + text.count("{") <= MAX_DEPTH
        )
    ):
        try:
            data = _fast_decode(text)
        except _FAST_ERRORS:
            data = _decode_json(text)  # refused: the error, in this module's words
    else:
        data = _decode_json(text)
    if type(data) is not dict:
        raise ProtocolError(
            'frame must be a JSON object {"event": ..., "payload": ...}',
            ErrorCode.INVALID_ENVELOPE,
        )
    event = data.get("event")
    if type(event) is not str or not event:
        raise ProtocolError('"event" must be a non-empty string', ErrorCode.INVALID_ENVELOPE)
    msg_id = data.get("id")
    if msg_id is not None:  # most frames have none: no checks to pay for
        if not isinstance(msg_id, (str, int)) or isinstance(msg_id, bool):
            raise ProtocolError('"id" must be a string or an integer', ErrorCode.INVALID_ENVELOPE)
        if isinstance(msg_id, int) and abs(msg_id) > MAX_SAFE_INTEGER:
            raise ProtocolError(
                '"id" must be a safe integer (at most 2**53 - 1 either way)',
                ErrorCode.INVALID_ENVELOPE,
            )
        if isinstance(msg_id, str) and len(msg_id) > MAX_ID_CHARS:
            # Every reply repeats the id: a huge one would be echoed back in full.
            raise ProtocolError(
                f'"id" is at most {MAX_ID_CHARS} characters', ErrorCode.INVALID_ENVELOPE
            )
    return event, data.get("payload"), msg_id


def _decode_json(text: str) -> Any:
    """The JSON value of ``text`` by pydantic-core (or the stdlib), or raise `ProtocolError`."""
    try:
        # A number that may be past the float range (the patterns above), or a long non-ASCII frame.
        if (
            (len(text) > LARGE_FRAME_CHARS and not text.isascii())
            or _EXPONENT.search(text) is not None
            or ("E" in text and _EXPONENT_ANY.search(text) is not None)
            or (len(text) >= _LONG_NUMBER_CHARS and _LONG_NUMBER.search(text) is not None)
        ):
            # pydantic-core copies non-ASCII text to UTF-8 first: a 16 MiB frame would cost
            # 3-4x its size. The stdlib decoder builds only the result, and lets us refuse a
            # number past the float range (1e400), which would otherwise become infinity.
            return _json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        # pydantic-core bounds nesting depth and we refuse NaN/Infinity.
        return from_json(text, allow_inf_nan=False)
    except RecursionError:
        raise ProtocolError(
            "frame is not valid JSON: nested too deeply", ErrorCode.INVALID_JSON
        ) from None
    except ValueError as exc:
        message = f"frame is not valid JSON: {_short(exc)}"
        raise ProtocolError(message, ErrorCode.INVALID_JSON) from None
    except TypeError:
        # pydantic-core's answer to a str it cannot make UTF-8 of: one holding a lone
        # surrogate (never read from a socket, where frames are UTF-8; built in Python).
        raise ProtocolError(
            "frame is not valid JSON: it holds a lone surrogate, which UTF-8 cannot carry",
            ErrorCode.INVALID_JSON,
        ) from None


def validate_close_code(code: int) -> int:
    """Return ``code`` if an application may send it, else raise ``ValueError``."""
    if code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    raise ValueError(f"{code} is not a close code an application may send")


def truncate_reason(reason: str) -> str:
    """Cut a close reason to the 123 bytes of UTF-8 a close frame allows."""
    raw = reason.encode()
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return raw[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]
