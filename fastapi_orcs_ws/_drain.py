"""Graceful drain: refuse new WebSockets, close the open ones over a window, then stop.

``manager.drain(seconds)`` is the public entry; this module holds its schedule and the one
version-sensitive part, the SIGTERM hook. uvicorn (0.54) closes every WebSocket with 1012
the moment it begins to shut down, before the app's lifespan shutdown runs, so a drain that
waited for the lifespan would find nobody left. With ``WS_DRAIN_SECONDS`` > 0 a started
manager therefore chains a handler in front of the server's own SIGTERM handler (uvicorn's,
gunicorn's worker's...): it drains first, then hands the signal on. A second SIGTERM, or
SIGINT (Ctrl+C), goes straight to the server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

from .protocol import CloseCode, truncate_reason

if TYPE_CHECKING:
    from .manager import WebSocketManager

__all__ = ["drain", "install_sigterm", "refuse_draining", "uninstall_sigterm"]

logger = logging.getLogger("fastapi_orcs_ws")

RETRY_AFTER_SECONDS = 1
"""``Retry-After`` of the HTTP 503 a draining process answers a new WebSocket with."""


async def drain(manager: WebSocketManager, seconds: float, reason: str) -> int:
    """Refuse new WebSockets, close the open ones with 1012 spread over ``seconds``, wait for
    their ``disconnect`` handlers; return how many were closed."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"drain takes a number of seconds >= 0, not {seconds!r}")
    manager._draining = True
    reason = truncate_reason(reason)
    loop = asyncio.get_running_loop()
    conns = [conn for conn in manager._connections.values() if not conn.closed]
    random.shuffle(conns)
    count = len(conns)
    logger.info("draining %d WebSocket connections over %g s", count, seconds)
    start = loop.time()
    # One close per slot of seconds/count, at a random point of its slot: the closes (and
    # the reconnects they cause elsewhere) arrive at a steady rate with no two in lockstep.
    # After a stall of the event loop the overdue closes catch up at twice that rate at
    # most, not all at once; at the end of the window whoever is left is closed (a drain
    # must end in time: an orchestrator's grace period does not wait).
    slot = seconds / count if count else 0.0
    deadline = start + seconds
    last = -math.inf
    for i, conn in enumerate(conns):
        at = max(start + (i + random.random()) * slot, last + slot / 2)
        delay = min(at, deadline) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        conn.close_nowait(CloseCode.SERVICE_RESTART, reason)  # never waits on the client
        last = loop.time()
    late = [conn for conn in manager._connections.values() if not conn.closed]
    for conn in late:  # handshakes that were already past the check when the drain began
        conn.close_nowait(CloseCode.SERVICE_RESTART, reason)
    # Every session ends with its disconnect handler; let them run, for a while.
    wait = manager.settings.close_timeout + manager.settings.slow_consumer_timeout
    try:
        async with asyncio.timeout(wait):
            await manager._drained.wait()
    except TimeoutError:
        logger.warning(
            "drain: %d WebSocket connections had not ended %g s after their close (a "
            "handler still running, or a peer that does not answer)",
            len(manager._connections),
            wait,
        )
    return count + len(late)


async def refuse_draining(websocket: WebSocket) -> None:
    """Refuse a new WebSocket while draining: HTTP 503 before accept, with ``Retry-After``
    (the ASGI denial-response extension, which uvicorn has); else accept and close 1013."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        await websocket.send_denial_response(
            PlainTextResponse(
                "this server is restarting; connect again",
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        )
    else:
        await websocket.accept()
        await websocket.close(CloseCode.TRY_AGAIN_LATER, "server restarting")


# -- SIGTERM ------------------------------------------------------------------------------

Handler = Callable[[int, FrameType | None], Any] | int


class _Hook:
    """The process's one SIGTERM handler in front of the server's, for every manager."""

    def __init__(self, loop: asyncio.AbstractEventLoop, previous: Handler) -> None:
        self.loop = loop
        self.previous = previous
        self.managers: list[WebSocketManager] = []
        self.fired = False
        self.task: asyncio.Task[None] | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.fired:  # a second SIGTERM: no more patience
            self._hand_on(signum, frame)
            return
        self.fired = True
        self.loop.call_soon_threadsafe(self._start, signum)

    def _start(self, signum: int) -> None:
        self.task = self.loop.create_task(self._drain_then_hand_on(signum))

    async def _drain_then_hand_on(self, signum: int) -> None:
        managers = list(self.managers)
        logger.info("SIGTERM: draining %d WebSocket managers before shutting down", len(managers))
        results = await asyncio.gather(
            *(m.drain() for m in managers if m.started), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                logger.error("drain on SIGTERM failed", exc_info=result)
        self._hand_on(signum, None)

    def _hand_on(self, signum: int, frame: FrameType | None) -> None:
        previous = self.previous
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            uninstall_all()
            signal.raise_signal(signum)


_HOOK: _Hook | None = None


def install_sigterm(manager: WebSocketManager) -> None:
    """Drain ``manager`` on SIGTERM before the server shuts down (main thread only)."""
    global _HOOK
    if threading.current_thread() is not threading.main_thread():
        logger.info(
            "WS_DRAIN_SECONDS is set but the server does not run in the main thread: no drain "
            "on SIGTERM; call `await manager.drain()` before stopping it"
        )
        return
    if _HOOK is None:
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None or previous == signal.SIG_IGN:
            logger.warning(
                "WS_DRAIN_SECONDS is set but SIGTERM is %s here: no drain on SIGTERM",
                "ignored" if previous == signal.SIG_IGN else "handled outside Python",
            )
            return
        hook = _Hook(asyncio.get_running_loop(), previous)
        signal.signal(signal.SIGTERM, hook)
        _HOOK = hook
    if manager not in _HOOK.managers:
        _HOOK.managers.append(manager)


def uninstall_sigterm(manager: WebSocketManager) -> None:
    """Forget ``manager``; the last one out restores the server's handler."""
    hook = _HOOK
    if hook is None or manager not in hook.managers:
        return
    hook.managers.remove(manager)
    if not hook.managers:
        uninstall_all()


def uninstall_all() -> None:
    global _HOOK
    hook = _HOOK
    _HOOK = None
    if hook is None or threading.current_thread() is not threading.main_thread():
        return
    previous = hook.previous
    if signal.getsignal(signal.SIGTERM) is hook:  # else someone replaced it: leave theirs
        signal.signal(signal.SIGTERM, previous)
