"""The one place that reaches beneath Starlette's public ``WebSocket`` API.

Starlette's ``WebSocket.receive`` and ``WebSocket.send`` wrap the ASGI callables the
connection was built with; per message they only check the ``client_state`` /
``application_state`` attributes (public) and the message type, at the cost of one more
coroutine per frame and one held by every idle connection. The session and the outbox call
the ASGI callables themselves while those states say connected, and keep the states as
Starlette would (see ``session._Session._read`` and ``_outbox.Outbox``).

FastAPI gives an endpoint only the ``WebSocket`` (its routes are rebuilt by
``include_router``, so a raw ASGI endpoint would lose router dependencies), and Starlette
keeps the callables in the private ``_receive`` / ``_send`` attributes: that is the
version-sensitive part, pinned here. Each accessor returns ``None`` when the attribute is
missing or is not a coroutine function, and the callers then use Starlette's public methods,
so a change upstream costs speed, never correctness. ``tests/test_starlette_compat.py`` checks
that both are found, on the newest Starlette and on the lowest ``pyproject.toml`` allows
(``scripts/test-lowest.sh``), so such a change fails CI instead of passing unnoticed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, cast

from starlette.websockets import WebSocket

__all__ = ["AsgiReceive", "AsgiSend", "asgi_receive", "asgi_send"]

AsgiReceive = Callable[[], Coroutine[Any, Any, dict[str, Any]]]
AsgiSend = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


def asgi_receive(websocket: WebSocket) -> AsgiReceive | None:
    """The ASGI ``receive`` beneath ``websocket.receive()``, or None (use the public one)."""
    return cast("AsgiReceive | None", _coroutine_function(getattr(websocket, "_receive", None)))


def asgi_send(websocket: WebSocket) -> AsgiSend | None:
    """The ASGI ``send`` beneath ``websocket.send()``, or None (use the public one).

    Only a coroutine function is returned: the outbox runs a send's first step in the
    connection's context, and only a coroutine function is known to run nothing when called.
    """
    return cast("AsgiSend | None", _coroutine_function(getattr(websocket, "_send", None)))


def _coroutine_function(candidate: Any) -> Any:
    return candidate if candidate is not None and inspect.iscoroutinefunction(candidate) else None
