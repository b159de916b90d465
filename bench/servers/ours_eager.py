"""EXPERIMENT, not the shipped library: ``ours`` with an eager write path patched in.

Measures what the core would gain if ``Connection.send_frame`` wrote straight to the
socket when the connection's writer is idle and its queue is empty, instead of
waking the writer task (one future, one task step per delivery). The ASGI send
coroutine is driven synchronously; uvicorn's send completes without suspending while
the transport is writable. If it does suspend (a peer that stopped reading), the rest
runs in a task and later frames queue behind it, so order is kept and the queue bound
and 4429 still apply.

    python -m bench.run --servers ours,ours-eager,plain --only fanout,echo,slow
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.websockets import WebSocketDisconnect

from fastapi_orcs_ws import connection as _c

from .ours import app

__all__ = ["app"]

_Conn: Any = _c.Connection
_orig_send_frame = _Conn.send_frame
_orig_overflow = _Conn._overflow
_GONE = (OSError, RuntimeError, WebSocketDisconnect)
_INFLIGHT: dict[int, asyncio.Task[None]] = {}  # id(conn) -> suspended write (Connection may use __slots__)


def _send_frame(self: Any, frame: str) -> bool:
    if self._closed:
        return False
    inflight = _INFLIGHT.get(id(self))
    if inflight is not None:  # a suspended write is pending: queue behind it, no wake-up
        queue = self._queue
        if len(queue) >= self._max_queue:
            self._overflow()
            return False
        queue.append(frame)
        return True
    if self._waiter is None or self._queue:  # writer busy: keep order, use the queue
        return bool(_orig_send_frame(self, frame))
    coro = self.websocket._send({"type": "websocket.send", "text": frame})
    try:
        fut = coro.send(None)
    except StopIteration:
        return True
    except _GONE:
        self._closed = True
        self._end_receive()
        return False
    _INFLIGHT[id(self)] = asyncio.get_running_loop().create_task(_resume(self, coro, fut))
    return True


async def _resume(self: Any, coro: Any, fut: Any) -> None:
    try:
        while True:
            try:
                if fut is None:
                    await asyncio.sleep(0)
                else:
                    await fut
            except BaseException as exc:  # cancellation goes into the ASGI send
                fut = coro.throw(exc)
                continue
            fut = coro.send(None)
    except StopIteration:
        pass
    except _GONE:
        self._closed = True
        self._queue.clear()
        self._end_receive()
    finally:
        coro.close()
        _INFLIGHT.pop(id(self), None)
        if self._queue and not self._closed:
            self._wake()


def _overflow(self: Any) -> None:
    inflight = _INFLIGHT.get(id(self))
    if inflight is not None:
        inflight.cancel()
    _orig_overflow(self)


if "_in_flight" in getattr(_Conn, "__slots__", ()) or hasattr(_Conn, "_in_flight"):
    # The core has its own eager write path now: measure it as it is.
    logging.getLogger("bench").warning("ours-eager: core already writes eagerly; not patching")
else:
    _Conn.send_frame = _send_frame
    _Conn._overflow = _overflow
