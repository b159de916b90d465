"""Keep tokens out of log records.

uvicorn writes each WebSocket handshake line, query string included, to ``uvicorn.error``
(``--no-access-log`` does not hide it); at DEBUG the ``websockets`` sans-I/O protocol that
uvicorn drives logs every request header (``Authorization``, ``Sec-WebSocket-Protocol``) on
``uvicorn.error`` as well; at TRACE ``uvicorn.asgi`` dumps whole scopes.
`install_log_redaction` rewrites such records before any handler sees them.

Two hooks, both idempotent:

* a `logging.setLogRecordFactory` wrapper (chaining the previous factory) redacts every
  record created on a watched logger *or any child of one* -- it does not depend on handlers,
  so uvicorn's ``dictConfig`` (which runs before the app is imported, and may run again) cannot
  undo it;
* a `logging.Filter` on each watched logger, in case the record factory is later
  replaced without chaining. (Logger filters survive ``dictConfig``.)

What is redacted (message, each argument, ``color_message``, traceback and stack text):
``token=...`` (also ``access_token=``, ``jwt=``), ``Bearer ...``, ``Authorization: ...``, the value
following the ``token`` subprotocol (``token, <jwt>``, ``['token', '<jwt>']``), and anything
shaped like a JWT (``eyJ...``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["REDACTED", "WATCHED_LOGGERS", "install_log_redaction", "redact"]

REDACTED = "[REDACTED]"

WATCHED_LOGGERS: tuple[str, ...] = (
    "uvicorn",  # uvicorn.error (handshake lines, websockets debug headers), uvicorn.access
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",  # TRACE: whole scopes and messages
    "websockets",  # websockets.server / websockets.client when used directly
    "websockets.server",
    "websockets.client",
    "fastapi_orcs_ws",
    "fastapi",
    "starlette",
)
"""Loggers (and, through the record factory, their children) whose records are redacted."""

_WATCHED_ROOTS = tuple(sorted({name.split(".", 1)[0] for name in WATCHED_LOGGERS}))
_NOT_REDACTED = r"(?!\[REDACTED\])"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # JWT-shaped strings anywhere (header and payload are base64url JSON objects: "eyJ").
    (re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Query-string style: token=..., access_token=..., jwt=...
    (re.compile(r"(?i)((?:token|jwt)=)" + _NOT_REDACTED + r"[^&\s'\"#]+"), r"\1" + REDACTED),
    # Authorization / Proxy-Authorization header values, in "Key: value" and repr forms.
    (
        re.compile(
            r"(?i)((?:proxy-)?authorization['\"]?\s*[:=,]\s*+(?>(?:b?['\"])?))"
            + _NOT_REDACTED
            + r"[^'\"\s][^'\"\r\n]*"
        ),
        r"\1" + REDACTED,
    ),
    # Bearer credentials anywhere.
    (re.compile(r"(?i)(\bbearer\s+)" + _NOT_REDACTED + r"[^\s'\",]+"), r"\1" + REDACTED),
    # The value after the "token" subprotocol: "token, <jwt>", "['token', '<jwt>']", b'token,<jwt>'.
    (
        re.compile(
            r"(?i)(\btoken['\"]?\s*,\s*+(?>(?:b?['\"])?))" + _NOT_REDACTED + r"[^\s'\",\]\)]+"
        ),
        r"\1" + REDACTED,
    ),
)


def redact(text: str) -> str:
    """Return ``text`` with every token-like value replaced by ``[REDACTED]``. Idempotent."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_arg(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("latin-1")
        cleaned = redact(text)
        return value if cleaned == text else cleaned
    try:
        text = str(value)
        shown = repr(value)
    except Exception:  # a broken __str__ is the formatter's problem, not ours
        return value
    cleaned = redact(text)
    if cleaned != text or redact(shown) != shown:
        return cleaned
    return value


_MARK = "_fastapi_orcs_ws_redacted"


def _redact_record(record: logging.LogRecord) -> None:
    """Redact ``record`` in place (msg, args, color_message, exc_text, stack_info)."""
    if record.args:
        # Never touch the format string itself: redacting "token=%s" would break "%s".
        if isinstance(record.args, Mapping):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        else:
            record.args = tuple(_redact_arg(a) for a in record.args)
        # uvicorn's access formatter unpacks its five args: access records keep them (they
        # hold no headers, and the path was redacted argument by argument above).
        if record.name != "uvicorn.access":
            # Context-spanning cases ("< %s: %s" % ("Authorization", "Basic ...")): redact the
            # whole message and drop the args.
            try:
                message: str | None = record.getMessage()
            except Exception:  # a broken format string: keep the content, safely
                message = None
            if message is None:
                record.msg = redact(f"{record.msg} {record.args!r}")
                record.args = None
            elif redact(message) != message:
                record.msg, record.args = redact(message), None
        color = record.__dict__.get("color_message")
        if isinstance(color, str):
            try:
                shown = color % record.args if record.args else color
            except Exception:
                shown = None
            if shown is None or redact(shown) != shown or not record.args:
                record.__dict__.pop("color_message", None)  # the plain message suffices
    else:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        elif record.msg is not None and not isinstance(record.msg, bool | int | float):
            cleaned = _redact_arg(record.msg)
            if cleaned is not record.msg:
                record.msg = cleaned
        color = record.__dict__.get("color_message")
        if isinstance(color, str):
            record.__dict__["color_message"] = redact(color)
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        cleaned = redact(record.exc_text)
        if cleaned != record.exc_text:
            # The exception object itself holds the token: keep only the redacted text, which
            # standard formatters print when exc_text is set (exc_info is not needed for that).
            record.exc_text, record.exc_info = cleaned, None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record.__dict__[_MARK] = True


def _safe_redact(record: logging.LogRecord) -> None:
    try:
        _redact_record(record)
    except Exception:  # never let logging raise, never let an unredacted record through
        record.msg, record.args = "<log record dropped: redaction failed>", None
        record.exc_info = record.exc_text = record.stack_info = None
        record.__dict__[_MARK] = True


def _watched(name: str) -> bool:
    root = name.split(".", 1)[0]
    return root in _WATCHED_ROOTS


class RedactingFilter(logging.Filter):
    """A logging filter that redacts tokens from each record and always lets it through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.__dict__.get(_MARK) or "color_message" in record.__dict__:
            # ``extra=`` attributes (uvicorn's color_message) arrive after the record factory.
            _safe_redact(record)
        return True


_FILTER = RedactingFilter()
_LOCK = threading.Lock()


def _make_factory(previous: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _watched(record.name):
            _safe_redact(record)
        return record

    factory.__dict__[_MARK] = True
    return factory


def install_log_redaction() -> None:
    """Redact tokens from the records of uvicorn's, websockets' and this library's loggers.

    Safe to call any number of times, before or after uvicorn configures logging. Call it
    where the app is built (``WebSocketRouter`` does); ``uvicorn --log-config`` files that
    replace the root handlers do not undo it.
    """
    with _LOCK:
        current = logging.getLogRecordFactory()
        if not current.__dict__.get(_MARK, False):
            logging.setLogRecordFactory(_make_factory(current))
        for name in WATCHED_LOGGERS:
            log = logging.getLogger(name)
            if _FILTER not in log.filters:
                log.addFilter(_FILTER)
