"""What every bench server sends in the tight-loop case, so that all of them send the same."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

FLOOD_MAX_FRAMES = 100_000
FLOOD_MAX_SIZE = 64 * 1024


def flood_payloads(request: Any) -> Iterator[dict[str, Any]]:
    """``{"i": 0..n-1, "data": "x" * size}`` for a ``flood`` request ``{"n": .., "size": ..}``.

    One ``data`` string is shared by every payload; each frame is about ``size`` + 30 bytes.
    """
    n = min(int(request.get("n", 20_000)), FLOOD_MAX_FRAMES)
    data = "x" * min(int(request.get("size", 1000)), FLOOD_MAX_SIZE)
    for i in range(n):
        yield {"i": i, "data": data}
