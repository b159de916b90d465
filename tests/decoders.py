"""The two decoding paths of ``protocol.decode_parts``, side by side, for the tests that compare
them (msgspec's, when the extra is installed, and pydantic-core's / the stdlib's)."""

from __future__ import annotations

from typing import Any

import pytest

from fastapi_orcs_ws import protocol
from fastapi_orcs_ws.protocol import ProtocolError, decode_parts

needs_msgspec = pytest.mark.skipif(
    protocol._fast_decode is None, reason="the msgspec extra is not installed"
)


def outcome(text: str) -> tuple[Any, ...]:
    """``decode_parts``'s answer as text that tells 1 from 1.0 and -0.0 from 0.0."""
    try:
        return ("ok", repr(decode_parts(text)))
    except ProtocolError as exc:
        return (exc.code, exc.message)


def outcome_without_msgspec(text: str) -> tuple[Any, ...]:
    """`outcome` with the msgspec path switched off (what an install without the extra gives)."""
    fast = protocol._fast_decode
    protocol._fast_decode = None
    try:
        return outcome(text)
    finally:
        protocol._fast_decode = fast
