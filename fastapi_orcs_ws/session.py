"""One connection's life, from handshake to clean-up, as one supervised unit.

::

    handshake   origin, token, subprotocol -> accept (or refuse)
    task group  reader      receive() without pause: pongs and close frames are always read;
                            text frames go to a bounded inbound queue (full: the reader
                            waits, which is TCP backpressure on a client that floods)
                dispatcher  `connect`, then each event in receive order (``concurrency``
                            at a time, default 1); a started handler always runs to the end
                expiry      closes with 4401 when the token expires
    clean-up    `disconnect` once, with the close code either side sent (1006 only when no
                close frame was seen), membership removed, the writer stopped (bounded)

The outbound writer is the connection's `_outbox.Outbox`, which
starts and ends its own task on demand; the session stops it at clean-up.

While nothing else needs to run (no `connect` handler, no token expiry, ``concurrency=1``), the
connection's own task is the reader and no task group exists yet: the first handler that
suspends opens it (an idle connection costs one task, not two).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from starlette.exceptions import HTTPException, WebSocketException
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketState

from ._context import (
    SCOPE_AUTHENTICATOR,
    SCOPE_CONNECTION,
    SCOPE_MANAGER,
    SCOPE_ROUTE,
)
from ._drain import refuse_draining
from ._observer import utf8_size
from ._outbox import Resume, SendPolicy
from ._starlette_compat import asgi_receive, asgi_send
from .auth import User
from .connection import Connection, ConnectionData
from .errors import AuthenticationError, EventError
from .handlers import EventHandler, InvalidPayload
from .limits import TokenBucket
from .manager import user_key_of
from .protocol import (
    RESERVED_EVENTS,
    CloseCode,
    ErrorCode,
    ProtocolError,
    decode_envelope,
    decode_parts,
    encode,
    encode_error,
    truncate_reason,
)

if TYPE_CHECKING:
    from .auth import AuthResult
    from .routing import EventRoute

__all__ = [
    "MAX_DETAIL_CHARS",
    "MAX_LISTED_ERRORS",
    "MAX_REPORTED_ERRORS",
    "run_session",
    "run_vanished",
]

logger = logging.getLogger("fastapi_orcs_ws")

MAX_REPORTED_ERRORS = 10
"""A ``validation_error`` reply lists at most this many problems (and counts the rest)."""
MAX_LISTED_ERRORS = 200
"""Past this many validation problems, only their count is reported (listing costs CPU)."""
MAX_DETAIL_CHARS = 2000
"""An ``http_error`` reply's detail is cut to this many characters of JSON."""

_END = object()
_DONE = object()
_CONNECTED = WebSocketState.CONNECTED
_DISCONNECTED = WebSocketState.DISCONNECTED
_T = TypeVar("_T")


async def run_session(route: EventRoute, websocket: WebSocket) -> None:
    """Serve one WebSocket on ``route``: handshake, the connection's life, clean-up."""
    authenticator = route.authenticator
    scope = websocket.scope
    scope[SCOPE_AUTHENTICATOR] = authenticator
    scope[SCOPE_ROUTE] = route
    manager = route.manager
    scope[SCOPE_MANAGER] = manager
    obs = manager.observer
    if manager.draining:
        if obs is not None:
            obs.refused(route.path, "draining")
        await refuse_draining(websocket)
        return
    if not authenticator.origin_allowed(websocket):
        # Refused before accept: the browser sees an HTTP 403.
        logger.info("refused WebSocket handshake from a disallowed origin")
        if obs is not None:
            obs.refused(route.path, "origin")
        await websocket.close(CloseCode.POLICY_VIOLATION)
        return
    # A tuple: the frame keeps it for the connection's life, and most offer none (the empty
    # tuple is shared).
    offered = tuple(p for p in scope.get("subprotocols") or () if isinstance(p, str))
    try:
        auth = await authenticator.authenticate(websocket)
    except AuthenticationError as exc:
        logger.info("refused WebSocket connection: %s", exc)
        if obs is not None:
            obs.refused(route.path, "auth")
        # Accept first so the client gets 4401, not an HTTP 403 it cannot read.
        await websocket.accept(subprotocol=route.select_subprotocol(offered))
        await websocket.close(CloseCode.UNAUTHORIZED, "Unauthorized")
        return
    subprotocol = route.select_subprotocol(offered)
    if route.subprotocols and subprotocol in (None, "token") and _app_protocols(offered):
        logger.warning(
            "refused WebSocket handshake on %s: the client offered subprotocols %s, the route "
            "speaks %s",
            route.path,
            _app_protocols(offered)[:8],
            list(route.subprotocols),
        )
        if obs is not None:
            obs.refused(route.path, "subprotocol")
        await websocket.close(CloseCode.POLICY_VIOLATION)
        return
    if not route.subprotocols and _app_protocols(offered):
        logger.warning(
            "refused WebSocket handshake on %s: the client offered subprotocols %s; declare "
            "them with router.ws(..., subprotocols=[...]) to accept them",
            route.path,
            _app_protocols(offered)[:8],
        )
        if obs is not None:
            obs.refused(route.path, "subprotocol")
        await websocket.close(CloseCode.POLICY_VIOLATION)
        return
    problems = await route.handshake_problems(websocket)
    ip = websocket.client.host if websocket.client is not None else None
    user_key = user_key_of(auth.user, auth.claims) if auth.authenticated else None
    full = manager._admission.admit(ip, user_key)
    if full is not None:
        manager._count_refusal(full, route.path)
        await _deny(websocket, full)
        return
    try:
        await websocket.accept(subprotocol=subprotocol)
        if problems:
            logger.info("refused WebSocket connection on %s: %s", route.path, problems)
            if obs is not None:
                obs.refused(route.path, "handshake")
            await websocket.close(CloseCode.POLICY_VIOLATION, truncate_reason(problems))
            return
        # Served in this frame, not a coroutine of its own: it lives as long as the connection.
        session = _open(route, websocket, auth)
        await manager._register(session.conn, route.path)
        if manager.observer is not None:
            manager.observer.opened(session.conn, route)
        try:
            await session.run(auth.expires_at)
        finally:
            with anyio.CancelScope(shield=True):
                await session.finish()
    finally:
        manager._admission.release(ip, user_key)


async def _deny(websocket: WebSocket, cap: str) -> None:
    """Refuse before accept with HTTP 429 (or, without the ASGI denial extension, 1013)."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        body = f"too many connections ({cap}); try again later"
        await websocket.send_denial_response(
            PlainTextResponse(body, status_code=429, headers={"Retry-After": "5"})
        )
    else:
        await websocket.accept()
        await websocket.close(CloseCode.TRY_AGAIN_LATER, f"too many connections ({cap})")


def _open(route: EventRoute, websocket: WebSocket, auth: AuthResult) -> _Session:
    """The connection and its session, for an accepted WebSocket."""
    scope = websocket.scope
    manager = route.manager
    settings = manager.settings
    # The context as it is before any handler runs: the connection's send context, and what
    # each event's handler gets a copy of.
    base = contextvars.copy_context()
    data = ConnectionData(
        client_id=uuid.uuid4().hex,
        connected_at=datetime.now(UTC),
        manager=manager,
        authenticated=auth.authenticated,
        user=auth.user,
        claims=auth.claims,
    )
    conn = Connection(
        websocket,
        data,
        send=websocket.send,
        policy=_send_policy(
            settings.send_queue_size,
            settings.send_queue_bytes,
            settings.slow_consumer_timeout,
            settings.close_timeout,
        ),
        context=base,
        on_slow=manager._on_slow_consumer,  # one bound method per manager, not per connection
        direct_send=asgi_send(websocket),
    )
    scope[SCOPE_CONNECTION] = conn
    return _Session(route, conn, base)


@functools.lru_cache(maxsize=32)
def _send_policy(frames: int, size: int, stall: float, close: float) -> SendPolicy:
    """One (immutable) policy shared by the connections with the same settings."""
    return SendPolicy(max_frames=frames, max_bytes=size, stall_timeout=stall, close_timeout=close)


async def _in_context(ctx: contextvars.Context, coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to the end with every step in ``ctx``, in the calling task."""
    step = ctx.run(next, coro.__await__(), _DONE)
    if step is not _DONE:
        await Resume(coro, step, ctx)


def _app_protocols(offered: Sequence[str]) -> list[str]:
    """Offered subprotocols other than the token transport (``token`` and the JWT after it)."""
    found = []
    skip = False
    for proto in offered:
        if skip:
            skip = False
            continue
        if proto == "token":
            skip = True
            continue
        found.append(proto)
    return found


class _Session:
    """One connection's reading and dispatching.

    Exactly one task at a time is the *reader*: it calls ``receive()`` and, while no handler
    is unfinished, runs each event's handler itself. A handler that finishes without
    suspending (most do: an echo, a broadcast to clients that keep up) costs no task switch.
    When a handler suspends, that task keeps it (a handler starts and ends in one task, so
    its cancel scopes and context variables hold), hands reading to a new task at once (so
    pings, pongs and close frames are read while the handler runs), finishes the handler, and
    then handles, in order, what the new reader queued meanwhile.
    """

    __slots__ = (
        "_expiry",
        "_receiver",
        "_room",
        "_stop",
        "base",
        "bucket",
        "conn",
        "finishing",
        "ignored",
        "inbound",
        "inbound_bytes",
        "inbound_max_bytes",
        "inbound_max_items",
        "limit",
        "manager",
        "refused",
        "route",
        "tg",
    )

    def __init__(self, route: EventRoute, conn: Connection, base: contextvars.Context) -> None:
        self.route = route
        self.manager = route.manager
        self.conn = conn
        self.base = base
        """Each event's handler runs in a copy of this, as each HTTP request gets its own:
        what one sets (a request id, a tenant, a span) never reaches another event, the
        `disconnect` handler or the server's code after the app returns."""
        settings = route.manager.settings
        self.limit = settings.max_payload_length
        self.inbound: list[Any] = []  # a list: an empty deque costs ~600 bytes per connection
        """Events received while a handler is unfinished, handled after it, in order."""
        self.inbound_bytes = 0
        self.inbound_max_items = settings.inbound_queue_size
        self.inbound_max_bytes = settings.inbound_queue_bytes
        self.finishing = False
        """A task is finishing a handler (or `connect`): the reader queues, never runs."""
        self.refused = False
        self.ignored = 0
        self.tg: asyncio.TaskGroup | None = None
        self._room: asyncio.Event | None = None  # made when the inbound queue is first full
        self._receiver: asyncio.Task[Any] | None = None
        self._stop = False
        self._expiry: anyio.CancelScope | None = None
        limit = route.effective_rate_limit
        self.bucket = TokenBucket(limit) if limit is not None else None
        conn.on_stalled(self._stop_reading)

    def run(self, expires_at: datetime | None) -> Awaitable[None]:
        """The connection's life, in the calling task."""
        route = self.route
        connect = route.handler_for("connect")
        if expires_at is None and connect is None and route.concurrency == 1:
            # Nothing to run beside the reader: this task reads (one task fewer per idle
            # connection, and no frame of its own). A handler that suspends makes `_read`
            # open the task group then.
            return self._read()
        return self._supervised(expires_at, connect)

    async def _supervised(self, expires_at: datetime | None, connect: EventHandler | None) -> None:
        conn = self.conn
        self.finishing = True  # `connect` first: what arrives meanwhile waits for it
        # asyncio's task group: per connection it costs about 2 KiB less than anyio's.
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            if expires_at is not None:
                tg.create_task(self._expire(expires_at))
            tg.create_task(self._read())
            if connect is not None:
                # A refused `connect` is an authorization gate: nothing sent is handled.
                ok = await self._observed("connect", self._connect(connect))
                self.refused = not ok or conn.closed_by_server
            await self._finish_queued()

    def _stop_reading(self) -> None:
        """The client is dropped (slow consumer): stop waiting for its frames."""
        self._stop = True
        receiver = self._receiver
        if receiver is not None:
            receiver.cancel()

    def _ended(self) -> None:
        """No more events will be handled: let the task group end."""
        if self._expiry is not None:
            self._expiry.cancel()

    # -- the reader ----------------------------------------------------------------------------

    async def _read(self) -> None:
        """Read until the connection ends; run handlers inline while nothing is unfinished."""
        conn, limit = self.conn, self.limit
        websocket = conn.websocket
        # The ASGI receive itself while Starlette's state says connected (_starlette_compat).
        raw_receive = asgi_receive(websocket)
        obs, path = self.manager.observer, self.route.path
        handlers = self.route.handlers
        concurrency = self.route.concurrency
        limiter = anyio.Semaphore(concurrency) if concurrency > 1 else None
        task = asyncio.current_task()
        message: Any
        item: Any
        text: Any
        coro: Any
        step: Any
        while True:
            if self._stop:
                return self._end_of_input()
            self._receiver = task
            # Nothing of the last event is kept while waiting (memory of an idle connection).
            message = item = text = coro = step = None
            try:
                if raw_receive is not None and websocket.client_state is _CONNECTED:
                    message = await raw_receive()
                else:
                    message = await websocket.receive()
            except asyncio.CancelledError:
                if not self._stop or task is None or not task.cancelling():
                    raise
                task.uncancel()  # our own stop (slow consumer), not a cancellation from above
                return self._end_of_input()
            finally:
                self._receiver = None
            kind = message["type"]
            if kind == "websocket.disconnect":
                websocket.client_state = _DISCONNECTED  # as Starlette's receive would
                code = message.get("code", CloseCode.NORMAL)
                if code == 1005 and "reason" not in message:
                    # uvicorn's report of a transport lost with no close frame.
                    code = CloseCode.ABNORMAL
                conn.ended(code, message.get("reason") or "")
                return self._end_of_input()
            if kind != "websocket.receive":
                raise RuntimeError(  # as Starlette's receive would
                    'Expected ASGI message "websocket.receive" or "websocket.disconnect", '
                    f"but got {kind!r}"
                )
            text = message.get("text")
            if text is None:
                if len(message.get("bytes") or b"") > limit:
                    await conn.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                    continue
                item = _BINARY
            else:
                item = text
                if obs is not None:
                    obs.frame_received(path, utf8_size(text))
                # Characters never outnumber bytes, so only long frames pay for this.
                if len(text) > limit // 4 and _utf8_length(text) > limit:
                    await conn.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                    continue
            if conn.closed_by_server or self.refused:
                # Kicked, expired, over its rate, refused: what comes after is not handled.
                self.ignored += 1
                continue
            if self.bucket is not None and not self.bucket.take():
                self._over_rate(item)
                continue
            if self.finishing and await self._queue(item):
                continue
            if limiter is not None:
                await limiter.acquire()
                assert self.tg is not None
                self.tg.create_task(self._dispatch_released(item, limiter))
                continue
            direct = None
            if type(item) is str:
                try:
                    event, payload, msg_id = decode_parts(item)
                except ProtocolError as exc:
                    coro = self._refuse(exc)
                else:
                    handler = handlers.get(event)
                    if (
                        handler is not None
                        and handler.plain
                        and msg_id is None
                        and obs is None
                        and event not in RESERVED_EVENTS
                    ):
                        # The common case: the application's coroutine itself, no layer of
                        # ours around it (its failure is handled below).
                        direct = event
                        coro = handler.func(conn, payload)
                    else:
                        coro = self._handle(event, payload, msg_id)
            else:
                coro = self._dispatch(item)
            # Its first step, in the event's own context; `next` with a default ends a
            # coroutine that returns without an exception (cheaper, and no frame kept).
            ctx = self.base.copy()
            try:
                step = ctx.run(next, coro.__await__(), _DONE)
            except (Exception, asyncio.CancelledError) as exc:
                if direct is None or (isinstance(exc, asyncio.CancelledError) and _cancelled()):
                    raise
                # The answer is the event's coroutine now, as it is inside `_handle`: its error
                # reply (or close) may wait for a client that is behind, and reading must go on
                # meanwhile (awaited here, this task read nothing until the write finished).
                coro, direct = self._failed_direct(direct, exc), None
                step = ctx.run(next, coro.__await__(), _DONE)
            if step is _DONE:
                continue
            # The handler suspended: it stays in this task; reading moves to a new one.
            self.finishing = True
            if self.tg is None:  # the session's own task was the reader: supervise from now on
                async with asyncio.TaskGroup() as tg:
                    self.tg = tg
                    tg.create_task(self._read(), context=self.base.copy())
                    await self._resume(coro, step, ctx, direct)
                    await self._finish_queued()
                return None
            self.tg.create_task(self._read(), context=self.base.copy())
            await self._resume(coro, step, ctx, direct)
            await self._finish_queued()
            return None

    async def _resume(
        self, coro: Coroutine[Any, Any, Any], step: Any, ctx: contextvars.Context, direct: Any
    ) -> None:
        """Finish a handler that suspended in its first step (in ``ctx``, in this task)."""
        try:
            await Resume(coro, step, ctx)
        except (Exception, asyncio.CancelledError) as exc:
            if direct is None or (isinstance(exc, asyncio.CancelledError) and _cancelled()):
                raise
            await _in_context(ctx, self._failed_direct(direct, exc))

    async def _failed_direct(self, event: str, exc: BaseException) -> None:
        """What `_handle` does when a handler raises, for one the reader called directly."""
        reply = await _failed(self.conn, event, exc, None)
        if reply is not None:
            await self.conn.send_frame_async(reply)

    def _end_of_input(self) -> None:
        if self.conn.close_code is None:
            self.conn.ended(CloseCode.ABNORMAL, "")
        if self.finishing:
            self.inbound.append(_END)  # the finishing task ends the session after the queue
        else:
            self._ended()

    async def _queue(self, item: Any) -> bool:
        """Queue for the finishing task; while the queue is full, stop reading (backpressure).

        False if the finishing task is gone meanwhile: the reader handles ``item`` itself.
        """
        size = len(item) if type(item) is str else 0
        while self.inbound and (
            len(self.inbound) >= self.inbound_max_items
            or self.inbound_bytes + size > self.inbound_max_bytes
        ):
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        if not self.finishing:
            return False
        self.inbound_bytes += size
        self.inbound.append(item)
        return True

    async def _finish_queued(self) -> None:
        """Handle, in order, what was queued while this task finished a handler."""
        inbound = self.inbound
        while inbound:
            item = inbound.pop(0)
            if type(item) is str:
                self.inbound_bytes -= len(item)
            if self._room is not None:
                self._room.set()
            if item is _END:
                self._ended()
                return
            if self.refused:
                self.ignored += 1
                continue
            await _in_context(self.base.copy(), self._dispatch(item))
        # Nothing queued and no await since: the reader runs handlers itself again.
        self.finishing = False

    def _over_rate(self, item: Any) -> None:
        """An event over the rate limit: not handled; its request (if any) is answered."""
        bucket, conn, route = self.bucket, self.conn, self.route
        assert bucket is not None
        route.manager._count_rate_limited(conn, bucket.overdraft)
        if bucket.overdraft > bucket.burst:
            conn.close_nowait(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
            return
        msg_id = None
        if type(item) is str:
            # At most `burst` frames are decoded for this before the close: bounded.
            with contextlib.suppress(ProtocolError):
                msg_id = decode_envelope(item).id
        if bucket.overdraft > 1 and msg_id is None:
            return  # told once already; a request with an id is told, so it fails fast
        warning = encode_error(
            "rate limit exceeded: slow down",
            ErrorCode.RATE_LIMITED,
            id=msg_id,
            retry_after=round(bucket.retry_after, 3),
        )
        if self.finishing:
            self.inbound.append(_Reply(warning))  # after the replies to earlier events
        else:
            conn.send_frame(warning)

    async def _expire(self, expires_at: datetime) -> None:
        with anyio.CancelScope() as scope:
            self._expiry = scope
            await anyio.sleep(max(0.0, expires_at.timestamp() - time.time()))
            logger.info("token of client %s expired; closing", self.conn.client_id)
            await self.conn.close(CloseCode.UNAUTHORIZED, "Unauthorized")

    # -- the dispatcher ------------------------------------------------------------------------

    async def _dispatch_released(self, item: Any, limiter: anyio.Semaphore) -> None:
        try:
            await self._dispatch(item)
        finally:
            limiter.release()

    async def _connect(self, handler: EventHandler) -> bool:
        """Run `connect`; False if it refused or failed (the connection is being closed)."""
        conn = self.conn
        try:
            await handler(conn, None)
        except WebSocketException as exc:
            logger.info("connect of %s refused: %s %s", conn.client_id, exc.code, exc.reason)
            await _close_as_asked(conn, exc)
        except HTTPException as exc:
            code = 4000 + exc.status_code if 400 <= exc.status_code < 500 else 1011
            logger.info("connect of %s refused with HTTP %s", conn.client_id, exc.status_code)
            await conn.close(code, _detail_text(exc.detail))
        except AuthenticationError:
            await conn.close(CloseCode.UNAUTHORIZED, "Unauthorized")
        except EventError as exc:
            await conn.close(CloseCode.POLICY_VIOLATION, exc.message)
        except Exception:
            logger.exception(
                "connect handler raised (client %s); closing with 1011", conn.client_id
            )
            await conn.close(CloseCode.INTERNAL_ERROR, "internal error")
        else:
            return True
        return False

    async def _dispatch(self, text: Any) -> None:
        conn = self.conn
        if type(text) is _Reply:
            await conn.send_frame_async(text.frame)
            return
        if text is _BINARY:
            self._protocol_error(ErrorCode.UNSUPPORTED_FRAME)
            await conn.send_frame_async(
                encode_error(
                    "binary frames are not supported; send JSON text frames",
                    ErrorCode.UNSUPPORTED_FRAME,
                )
            )
            return
        try:
            event, payload, msg_id = decode_parts(text)
        except ProtocolError as exc:
            await self._refuse(exc)
            return
        await self._handle(event, payload, msg_id)

    async def _refuse(self, exc: ProtocolError) -> None:
        """Answer a frame that breaks the protocol."""
        self._protocol_error(exc.code)
        await self.conn.send_frame_async(encode_error(exc.message, exc.code))

    async def _handle(self, event: str, payload: Any, msg_id: str | int | None) -> None:
        """Run the handler of a decoded event and answer it (ack or error), as the protocol
        says."""
        conn = self.conn
        if event in RESERVED_EVENTS:
            self._protocol_error(ErrorCode.RESERVED_EVENT)
            await conn.send_frame_async(
                encode_error(
                    f"{event!r} is a reserved event and cannot be sent by clients",
                    ErrorCode.RESERVED_EVENT,
                    id=msg_id,
                    event=event,
                )
            )
            return
        route = self.route
        handler = route.handlers.get(event) or route.handler_for(event)
        if handler is None:
            self._protocol_error(ErrorCode.UNKNOWN_EVENT)
            await conn.send_frame_async(
                encode_error(
                    f"unknown event {_short(event)!r}",
                    ErrorCode.UNKNOWN_EVENT,
                    id=msg_id,
                    event=_short(event),
                )
            )
            return
        if self.manager.observer is None:
            # `_call`, inlined: no coroutine of its own for the common case.
            try:
                if handler.plain:  # `handler.start`, inlined
                    result = await handler.func(conn, payload)
                else:
                    result = await handler.start(conn, payload)
            except Exception as exc:
                reply = await _failed(conn, event, exc, msg_id)
            except asyncio.CancelledError as exc:
                if _cancelled():
                    raise
                reply = await _failed(conn, event, exc, msg_id)
            else:
                reply = None if msg_id is None else _ack(conn, event, result, msg_id)
        else:
            reply = await self._observed(event, _call(conn, handler, payload, msg_id))
        if reply is not None:
            await conn.send_frame_async(reply)

    def _observed(self, event: str, call: Awaitable[_T]) -> Awaitable[_T]:
        """``call``, timed and traced when the manager is observed (metrics, tracing)."""
        obs = self.manager.observer
        return call if obs is None else obs.handle(self.route, self.conn, event, call)

    def _protocol_error(self, code: str) -> None:
        obs = self.manager.observer
        if obs is not None:
            obs.protocol_error(self.route.path, code)

    async def finish(self) -> None:
        """Clean-up: the disconnect handler once, membership, the writer."""
        route, conn = self.route, self.conn
        if conn.close_code is None:  # the session ended without a word from either side
            conn.ended(CloseCode.ABNORMAL, "")
        if self.ignored:
            logger.info(
                "%d events of client %s arrived after the server closed it (%s); not handled",
                self.ignored,
                conn.client_id,
                conn.close_code,
            )
        try:
            # Recorded first: if this process dies now, no survivor runs the handler again.
            await route.manager._client_closing(conn.client_id)
            handler = route.handler_for("disconnect")
            if handler is not None:
                ended = {"code": conn.close_code, "reason": conn.close_reason}
                _unheard(await _call(conn, handler, ended, None), conn)
        finally:
            await route.manager._unregister(conn)
            if route.manager.observer is not None:
                route.manager.observer.closed(conn, route)
            await conn.aclose()


async def _call(conn: Connection, handler: EventHandler, payload: Any, msg_id: Any) -> str | None:
    """Run a handler; return the frame to answer with (ack or error), or None."""
    try:
        result = await handler.start(conn, payload)
    except Exception as exc:
        return await _failed(conn, handler.event, exc, msg_id)
    except asyncio.CancelledError as exc:
        if _cancelled():
            raise
        return await _failed(conn, handler.event, exc, msg_id)
    return None if msg_id is None else _ack(conn, handler.event, result, msg_id)


def _cancelled() -> bool:
    """Whether this task is being cancelled: a CancelledError that a handler raised while it
    is not (it awaited a cancelled future or task) is the handler's failure, not a shutdown."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def _failed(conn: Connection, event: str, exc: BaseException, msg_id: Any) -> str | None:
    """The answer to a handler that raised ``exc`` (called in its ``except`` block)."""
    if isinstance(exc, InvalidPayload):
        count = exc.error.error_count()
        # pydantic builds every error's dict at once: for a million bad items that is seconds
        # of CPU and a gigabyte. Past a few hundred, report the count alone.
        errors = exc.error.errors(**_ERR_OPTS) if count <= MAX_LISTED_ERRORS else []
        return _validation_error(errors, event, msg_id, count=count)
    if isinstance(exc, WebSocketRequestValidationError | RequestValidationError):
        return _validation_error(list(exc.errors()), event, msg_id)
    if isinstance(exc, EventError):
        return encode_error(exc.message, exc.code, id=msg_id, event=event, **exc.extra)
    if isinstance(exc, HTTPException):
        logger.info("handler for %r answered HTTP %s", event, exc.status_code)
        return encode_error(
            _detail_text(exc.detail),
            ErrorCode.HTTP_ERROR,
            id=msg_id,
            event=event,
            status=exc.status_code,
        )
    if isinstance(exc, WebSocketException):
        logger.info("handler for %r closed the connection: %s %s", event, exc.code, exc.reason)
        await _close_as_asked(conn, exc)
        return None
    if isinstance(exc, AuthenticationError):
        await conn.close(CloseCode.UNAUTHORIZED, "Unauthorized")
        return None
    logger.error("handler for event %r raised (client %s)", event, conn.client_id, exc_info=exc)
    return _internal_error(event, msg_id)


def _ack(conn: Connection, event: str, result: Any, msg_id: Any) -> str:
    try:
        return encode("ack", result, id=msg_id)
    except ValueError:  # EncodeError and pydantic's serialization errors
        logger.exception(
            "the result of the %r handler cannot be sent as JSON (client %s)", event, conn.client_id
        )
        return _internal_error(event, msg_id)


async def run_vanished(
    route: EventRoute, client_id: str, *, info: Mapping[str, Any] | None = None
) -> None:
    """Run ``route``'s disconnect handler for a client whose process died (shared backends).

    ``info`` is what the client was registered with: its user, when it was authenticated,
    becomes ``ws.data.user`` (a [`User`][fastapi_orcs_ws.User] with the public info it was
    registered with as its claims), so the handler knows whose connection ended.
    """
    handler = route.handler_for("disconnect")
    if handler is None:
        return
    info = info or {}
    user_id = info.get("user_id")
    user = None
    if isinstance(user_id, str):
        public = info.get("user")
        user = User(id=user_id, claims=dict(public) if isinstance(public, Mapping) else {})
    data = ConnectionData(
        client_id,
        connected_at=datetime.now(UTC),
        manager=route.manager,
        authenticated=user is not None,
        user=user,
    )
    conn = Connection.detached(data, path=route.path)
    ended = {"code": CloseCode.ABNORMAL, "reason": "node lost"}
    _unheard(await _call(conn, handler, ended, None), conn)


def _unheard(reply: str | None, conn: Connection) -> None:
    """A disconnect handler's error has nobody to go to: it must reach the log."""
    if reply is not None:
        logger.warning(
            "disconnect handler of client %s failed and nobody can be told: %s",
            conn.client_id,
            reply[:500],
        )


_BINARY = object()


class _Reply:
    """A reply the reader decided on, sent by the dispatcher in its turn."""

    __slots__ = ("frame",)

    def __init__(self, frame: str) -> None:
        self.frame = frame


_ERR_OPTS: dict[str, Any] = {"include_url": False, "include_input": False, "include_context": False}


async def _close_as_asked(conn: Connection, exc: WebSocketException) -> None:
    """Close with a ``WebSocketException``'s code, or 1011 if no application may send it."""
    try:
        await conn.close(exc.code, exc.reason or "")
    except ValueError:
        logger.error(
            "WebSocketException(code=%r) cannot be sent: RFC 6455 allows applications 1000-1003, "
            "1007-1014 and 3000-4999; closing client %s with 1011 instead",
            exc.code,
            conn.client_id,
        )
        await conn.close(CloseCode.INTERNAL_ERROR, "internal error")


def _internal_error(event: str, msg_id: Any) -> str:
    return encode_error("internal server error", ErrorCode.INTERNAL_ERROR, id=msg_id, event=event)


def _validation_error(
    errors: list[Any], event: str, msg_id: Any, *, count: int | None = None
) -> str:
    """A bounded ``validation_error`` reply: the first few problems and how many there were."""
    shown = [
        {
            "loc": [
                p if isinstance(p, int) else _short(str(p)) for p in list(err.get("loc", ()))[:16]
            ],
            "msg": _short(str(err.get("msg", "invalid"))),
            "type": _short(str(err.get("type", "value_error"))),
        }
        for err in errors[:MAX_REPORTED_ERRORS]
    ]
    total = len(errors) if count is None else count
    if shown:
        first = shown[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        message = f"invalid payload for {event!r}: {where}: {first['msg']}"
    else:
        message = f"invalid payload for {event!r}: {total} problems (too many to list)"
    return encode_error(
        message,
        ErrorCode.VALIDATION_ERROR,
        id=msg_id,
        errors=shown,
        error_count=total,
        event=event,
    )


def _detail_text(detail: Any) -> str:
    return (detail if isinstance(detail, str) else repr(detail))[:MAX_DETAIL_CHARS]


def _utf8_length(text: str) -> int:
    """The UTF-8 size of ``text`` without a copy of the whole of it."""
    if text.isascii():
        return len(text)
    step = 1 << 16
    return sum(len(text[i : i + step].encode()) for i in range(0, len(text), step))


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
