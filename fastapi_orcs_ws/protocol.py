"""The wire protocol: the JSON envelope, error codes and close codes.

Every frame, in both directions, is a text frame holding
``{"event": name, "payload": value}``; a client may add ``"id"`` to ask for an
acknowledgement. This module is the only place that knows that shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from pydantic_core import from_json, to_json

__all__ = [
    "CloseCode",
    "Envelope",
    "ErrorCode",
    "ProtocolError",
    "decode_envelope",
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


class ProtocolError(Exception):
    """An inbound frame that breaks the protocol; answered with an ``error`` event."""

    def __init__(self, message: str, code: str, *, event: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.event = event


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded inbound frame."""

    event: str
    payload: Any = None
    id: str | int | None = None


def encode(event: str, payload: Any = None, *, id: str | int | None = None) -> str:
    """Encode one outbound frame. Pydantic models, datetimes and dataclasses are welcome."""
    body: dict[str, Any] = {"event": event, "payload": payload}
    if id is not None:
        body["id"] = id
    return to_json(body).decode()


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


def decode_envelope(text: str) -> Envelope:
    """Decode and check one inbound text frame, or raise :class:`ProtocolError`."""
    try:
        # pydantic-core bounds nesting depth (no RecursionError) and we refuse NaN/Infinity.
        data = from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        message = f"frame is not valid JSON: {_short(exc)}"
        raise ProtocolError(message, ErrorCode.INVALID_JSON) from None
    if not isinstance(data, dict):
        raise ProtocolError(
            'frame must be a JSON object {"event": ..., "payload": ...}',
            ErrorCode.INVALID_ENVELOPE,
        )
    event = data.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolError('"event" must be a non-empty string', ErrorCode.INVALID_ENVELOPE)
    msg_id = data.get("id")
    if msg_id is not None and (not isinstance(msg_id, str | int) or isinstance(msg_id, bool)):
        raise ProtocolError('"id" must be a string or an integer', ErrorCode.INVALID_ENVELOPE)
    return Envelope(event=event, payload=data.get("payload"), id=msg_id)


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
