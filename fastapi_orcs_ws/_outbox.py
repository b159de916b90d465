"""One connection's way out: a bounded queue, the task that writes it, the slow-consumer rule.

Rules (docs/lifecycle.md states them for users):

- Every ASGI ``send`` call runs from start to finish in one task and one context: the
  connection's own send context (a copy of its session's context). A frame for an idle
  connection is written in the sender's task (no task switch: this is what keeps fan-out as
  fast as a plain loop); if that write cannot finish at once, the *sender's* task finishes it
  (see :func:`settle`), never another task. Otherwise frames wait in the queue and one writer
  task, started on demand and gone when the queue is empty, writes them in order.
- The queue is bounded in frames and in bytes. A frame that would pass either bound closes the
  client with 4429 (it is not keeping up), as does a write that makes no progress for
  ``stall_timeout`` seconds.
- Above half of either bound the connection is *behind*: ``await ws.send(...)`` and the
  broadcasts that reached it wait until it is below again (flow control), so a producer is
  slowed to its reader's pace, and never waits longer than ``stall_timeout`` for a reader
  that makes no progress.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

__all__ = [
    "PENDING",
    "AsgiSend",
    "Message",
    "Outbox",
    "Resume",
    "SendPolicy",
    "eager_fan_out",
    "settle",
]

logger = logging.getLogger("fastapi_orcs_ws")

Message = dict[str, Any]
AsgiSend = Callable[[Message], Coroutine[Any, Any, None]]

# What a failed write to a vanished peer raises (uvicorn's ClientDisconnected is an OSError).
PEER_GONE = (OSError, RuntimeError, WebSocketDisconnect)

PENDING: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "fastapi_orcs_ws_pending", default=None
)
"""Set by a sender that will :func:`settle` what its deliveries left unfinished."""


_CONNECTED = WebSocketState.CONNECTED
_SEND = "websocket.send"
_DONE = object()

EAGER_PATIENCE = 0.05
"""Seconds a sender waits on an unfinished write before fan-out turns cautious (below)."""
CONGESTION_HOLD = 5.0
"""Seconds fan-out stays cautious after such a wait."""
_congested_until = 0.0


def eager_fan_out() -> bool:
    """Whether fan-out may write in the sender's task now.

    A write that does not finish within ``EAGER_PATIENCE`` means some client stopped reading;
    the sender must finish it itself (up to the stall timeout). So that several such clients
    cost a sender one wait, not one each in turn, fan-out then queues every frame for
    ``CONGESTION_HOLD`` seconds: each stalled client is found by its own writer, all at once.
    """
    return time.monotonic() >= _congested_until


def _congest() -> None:
    global _congested_until
    if time.monotonic() >= _congested_until:
        logger.info(
            "a client stopped reading mid-broadcast: fan-out queues frames for %g s",
            CONGESTION_HOLD,
        )
    _congested_until = time.monotonic() + CONGESTION_HOLD


@dataclass(frozen=True, slots=True)
class SendPolicy:
    """The outbound bounds of one connection (from :class:`WebSocketSettings`)."""

    max_frames: int
    max_bytes: int
    stall_timeout: float
    close_timeout: float
    high_frames: int = field(init=False, repr=False, compare=False)
    """Above this many queued frames the connection is *behind* (half the bound)."""
    high_bytes: int = field(init=False, repr=False, compare=False)
    """Above this many queued bytes the connection is *behind* (half the bound)."""

    def __post_init__(self) -> None:
        # Here, not on each connection's outbox: policies are shared (two ints less each).
        object.__setattr__(self, "high_frames", max(1, self.max_frames // 2))
        object.__setattr__(self, "high_bytes", max(1, self.max_bytes // 2))


class Resume:
    """Awaitable finishing a send coroutine that took its first step and blocked.

    Every later step runs in ``context`` (the connection's send context), in the task
    that awaits this, which is the task that took the first step.
    """

    __slots__ = ("_context", "_coro", "_value")

    def __init__(
        self, coro: Coroutine[Any, Any, None], value: Any, context: contextvars.Context | None
    ) -> None:
        self._coro = coro
        self._value = value
        self._context = context

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value, ctx = self._coro, self._value, self._context
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation and errors go into the send
                try:
                    value = ctx.run(coro.throw, exc) if ctx is not None else coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                value = ctx.run(coro.send, sent) if ctx is not None else coro.send(sent)
            except StopIteration:
                return


class _Blocked:
    """A write that an eager sender started and must finish in its own task."""

    __slots__ = ("coro", "outbox", "value")

    def __init__(self, outbox: Outbox, coro: Coroutine[Any, Any, None], value: Any) -> None:
        self.outbox = outbox
        self.coro = coro
        self.value = value

    async def finish(self) -> None:
        outbox = self.outbox
        patience = asyncio.get_running_loop().call_later(EAGER_PATIENCE, _congest)
        try:
            done = await outbox._complete(self.coro, self.value, outbox._context)
        finally:
            patience.cancel()
        outbox._busy = False
        if done and outbox._queue:
            outbox._start_writer()
        elif not outbox._queue:
            outbox._wake()


async def settle(pending: list[Any]) -> None:
    """Finish, in the calling task, what deliveries left: the blocked write, then flow control."""
    for item in pending:
        if type(item) is _Blocked:
            await item.finish()
        else:
            await item.wait_for_room()


class Outbox:
    """The outbound queue and writer of one connection. Owned by its :class:`Connection`."""

    __slots__ = (
        "_busy",
        "_bytes",
        "_context",
        "_on_gone",
        "_on_stalled",
        "_open",
        "_policy",
        "_queue",
        "_raw_send",
        "_room",
        "_send",
        "_websocket",
        "_writer",
    )

    def __init__(
        self,
        send: AsgiSend,
        policy: SendPolicy,
        *,
        context: contextvars.Context,
        on_stalled: Callable[[str], None],
        on_gone: Callable[[BaseException], None] | None = None,
        direct: tuple[WebSocket, AsgiSend] | None = None,
    ) -> None:
        self._send = send
        # `send` is Starlette's `WebSocket.send`; `direct` its WebSocket and the ASGI send
        # beneath it. A frame (not the close) goes to the ASGI send itself while Starlette's
        # state says connected, which is all `WebSocket.send` checks for it: a coroutine less
        # per frame. Starlette would also record a failed write (an OSError) as disconnected;
        # `on_gone` does (`Connection._peer_gone`).
        self._websocket: WebSocket | None = None
        self._raw_send = send
        if direct is not None:
            self._websocket, self._raw_send = direct
        self._policy = policy
        self._context = context
        self._on_stalled = on_stalled
        self._on_gone = on_gone
        # A list, not a deque: an empty deque costs ~600 bytes on every idle connection; the
        # queue is short (bounded) and only used while a client is behind.
        self._queue: list[Message] = []
        self._bytes = 0
        self._busy = False
        """An ASGI send is under way (eager, left to a sender, or the writer's)."""
        self._open = True
        self._writer: asyncio.Task[None] | None = None
        self._room: asyncio.Event | None = None

    @property
    def open(self) -> bool:
        return self._open

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def behind(self) -> bool:
        policy = self._policy
        return len(self._queue) > policy.high_frames or self._bytes > policy.high_bytes

    # -- sending ---------------------------------------------------------------------------

    def offer(self, message: Message, pending: list[Any] | None, eager: bool = True) -> bool:
        """Write ``message`` now or queue it; False if the connection no longer takes frames.

        With ``pending`` (a list the caller will :func:`settle`), an idle connection's frame
        is written in the caller's task; without it, it is always queued.
        """
        if not self._open:
            return False
        # At most one unfinished write per sender: a middleware's cancel scopes, entered by
        # a write's first step, must be left in the order they were entered.
        if (
            eager
            and pending is not None
            and not self._busy
            and not (pending and type(pending[0]) is _Blocked)
        ):
            ws = self._websocket
            if ws is not None and ws.application_state is _CONNECTED and message["type"] == _SEND:
                coro = self._raw_send(message)  # the ASGI send itself (see __init__)
            else:
                coro = self._send(message)
            try:
                # `next` with a default: a write that finishes at once raises nothing.
                value = self._context.run(next, coro.__await__(), _DONE)
            except PEER_GONE as exc:
                self._gone(exc)
                return False
            if value is _DONE:
                return True
            self._busy = True
            pending.insert(0, _Blocked(self, coro, value))
            return True
        queue = self._queue
        size = _size(message)
        if queue and (
            len(queue) >= self._policy.max_frames or self._bytes + size > self._policy.max_bytes
        ):
            self._stalled(
                f"its send queue is full ({len(queue)} frames, {self._bytes} bytes queued)"
            )
            return False
        queue.append(message)
        self._bytes += size
        if not self._busy:
            self._start_writer()
        elif pending is not None and self.behind:
            pending.append(self)
        return True

    def offer_close(self, message: Message, pending: list[Any] | None) -> None:
        """Queue the close frame after what is queued; nothing is taken after it."""
        if self._open:
            self.offer(message, pending)
            self._open = False

    async def wait_for_room(self) -> None:
        """Wait while the connection is behind (bounded: a stalled writer closes it)."""
        while self._open and self.behind:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    # -- the writer --------------------------------------------------------------------------

    def _start_writer(self) -> None:
        self._busy = True
        # Its own copy of the connection's send context: what a middleware wrapping `send`
        # set up for this connection is what its sends see, whichever task queued them.
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), context=self._context.copy()
        )

    async def _write_loop(self) -> None:
        queue = self._queue
        send = self._send
        try:
            while queue:
                message = queue.pop(0)
                self._bytes -= _size(message)
                if self._room is not None and not self.behind:
                    self._room.set()
                ws = self._websocket
                if (
                    ws is not None
                    and ws.application_state is _CONNECTED
                    and message["type"] == _SEND
                ):
                    coro = self._raw_send(message)
                else:
                    coro = send(message)
                value = next(coro.__await__(), _DONE)
                if value is _DONE:
                    continue
                if not await self._complete(coro, value, None):
                    return
        except PEER_GONE as exc:
            self._gone(exc)
        finally:
            self._writer = None
            self._busy = False
            self._wake()

    async def _complete(
        self, coro: Coroutine[Any, Any, None], value: Any, context: contextvars.Context | None
    ) -> bool:
        """Finish a started write in this task; False if the peer stalled or vanished."""
        try:
            async with asyncio.timeout(self._policy.stall_timeout):
                await Resume(coro, value, context)
        except TimeoutError:
            self._stalled(f"a write made no progress for {self._policy.stall_timeout:g} s")
            return False
        except PEER_GONE as exc:
            self._gone(exc)
            return False
        return True

    # -- ending ------------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._room is not None:
            self._room.set()

    def drop(self) -> None:
        self._open = False
        self._queue.clear()
        self._bytes = 0
        self._wake()

    def _gone(self, exc: BaseException) -> None:
        # The reader learns how it ended (the peer's close frame or a lost transport).
        logger.debug("write failed, peer gone: %r", exc)
        self.drop()
        if self._on_gone is not None:
            self._on_gone(exc)

    def _stalled(self, why: str) -> None:
        was_open = self._open
        self.drop()
        if was_open or self._writer is not None:
            self._on_stalled(why)

    async def aclose(self, close: Message | None) -> None:
        """End the outbox: let the writer finish (bounded), cancel it, then send ``close``.

        Runs in the session's task. ``close`` is a ``websocket.close`` message still owed to
        the peer (a 4429 that could not be written while the writer was stuck), or None.
        """
        self._open = False
        writer = self._writer
        if writer is not None and not writer.done():
            try:
                async with asyncio.timeout(self._policy.close_timeout):
                    await asyncio.shield(writer)
            except TimeoutError:
                writer.cancel()
                await asyncio.wait([writer])
        self._queue.clear()
        self._bytes = 0
        self._wake()
        if close is not None and not self._busy:
            try:
                async with asyncio.timeout(self._policy.close_timeout):
                    await self._send(close)
            except (TimeoutError, *PEER_GONE):
                logger.debug("close frame not written: the peer is gone or stalled")


def _size(message: Message) -> int:
    body = message.get("text")
    if body is None:
        body = message.get("bytes")
    return len(body) if body is not None else 0
