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

The outbound writer is the connection's :class:`~fastapi_orcs_ws._outbox.Outbox`, which
starts and ends its own task on demand; the session stops it at clean-up.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from starlette.exceptions import HTTPException, WebSocketException
from starlette.websockets import WebSocket

from ._context import (
    SCOPE_ASGI_RECEIVE,
    SCOPE_ASGI_SEND,
    SCOPE_AUTHENTICATOR,
    SCOPE_CONNECTION,
    SCOPE_MANAGER,
    SCOPE_ROUTE,
)
from ._outbox import SendPolicy
from .connection import Connection, ConnectionData
from .errors import AuthenticationError, EventError
from .handlers import EventHandler, InvalidPayload
from .protocol import (
    RESERVED_EVENTS,
    CloseCode,
    ErrorCode,
    ProtocolError,
    decode_envelope,
    encode,
    encode_error,
    truncate_reason,
)

if TYPE_CHECKING:
    from .routing import EventRoute

__all__ = ["MAX_DETAIL_CHARS", "MAX_REPORTED_ERRORS", "run_session", "run_vanished"]

logger = logging.getLogger("fastapi_orcs_ws")

MAX_REPORTED_ERRORS = 10
"""A ``validation_error`` reply lists at most this many problems (and counts the rest)."""
MAX_DETAIL_CHARS = 2000
"""An ``http_error`` reply's detail is cut to this many characters of JSON."""

_END = object()


async def run_session(route: EventRoute, websocket: WebSocket) -> None:
    """Serve one WebSocket on ``route``: handshake, the connection's life, clean-up."""
    authenticator = route.authenticator
    scope = websocket.scope
    scope[SCOPE_AUTHENTICATOR] = authenticator
    scope[SCOPE_ROUTE] = route
    manager = route.manager
    scope[SCOPE_MANAGER] = manager
    if not authenticator.origin_allowed(websocket):
        # Refused before accept: the browser sees an HTTP 403.
        logger.info("refused WebSocket handshake from a disallowed origin")
        await websocket.close(CloseCode.POLICY_VIOLATION)
        return
    offered = [p for p in scope.get("subprotocols") or [] if isinstance(p, str)]
    try:
        auth = await authenticator.authenticate(websocket)
    except AuthenticationError as exc:
        logger.info("refused WebSocket connection: %s", exc)
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
        await websocket.close(CloseCode.POLICY_VIOLATION)
        return
    if not route.subprotocols and _app_protocols(offered):
        logger.warning(
            "refused WebSocket handshake on %s: the client offered subprotocols %s; declare "
            "them with router.ws(..., subprotocols=[...]) to accept them",
            route.path,
            _app_protocols(offered)[:8],
        )
        await websocket.close(CloseCode.POLICY_VIOLATION)
        return
    problems = await route.handshake_problems(websocket)
    await websocket.accept(subprotocol=subprotocol)
    if problems:
        logger.info("refused WebSocket connection on %s: %s", route.path, problems)
        await websocket.close(CloseCode.POLICY_VIOLATION, truncate_reason(problems))
        return
    settings = manager.settings
    data = ConnectionData(
        client_id=uuid.uuid4().hex,
        connected_at=datetime.now(UTC),
        manager=manager,
        authenticated=auth.authenticated,
        user=auth.user,
        claims=auth.claims,
    )
    send = scope.get(SCOPE_ASGI_SEND) or websocket.send
    conn = Connection(
        websocket,
        data,
        send=send,
        policy=SendPolicy(
            max_frames=settings.send_queue_size,
            max_bytes=settings.send_queue_bytes,
            stall_timeout=settings.slow_consumer_timeout,
            close_timeout=settings.close_timeout,
        ),
        context=contextvars.copy_context(),
        on_slow=manager._count_slow_consumer,
    )
    scope[SCOPE_CONNECTION] = conn
    session = _Session(route, conn, scope.get(SCOPE_ASGI_RECEIVE) or websocket.receive)
    await manager._register(conn, route.path)
    try:
        await session.run(auth.expires_at)
    finally:
        with anyio.CancelScope(shield=True):
            await session.finish()


def _app_protocols(offered: list[str]) -> list[str]:
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
    __slots__ = ("_reader_scope", "conn", "inbound", "limit", "receive", "route")

    def __init__(self, route: EventRoute, conn: Connection, receive: Callable[[], Any]) -> None:
        self.route = route
        self.conn = conn
        self.receive = receive
        settings = route.manager.settings
        self.limit = settings.max_payload_length
        self.inbound: asyncio.Queue[Any] = asyncio.Queue(settings.inbound_queue_size)
        self._reader_scope: anyio.CancelScope | None = None
        conn.on_stalled(self._stop_reading)

    async def run(self, expires_at: datetime | None) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read)
            if expires_at is not None:
                tg.start_soon(self._expire, expires_at)
            await self._dispatch_all()
            tg.cancel_scope.cancel()  # the expiry timer; the reader has ended already

    def _stop_reading(self) -> None:
        if self._reader_scope is not None:
            self._reader_scope.cancel()

    # -- the reader ----------------------------------------------------------------------------

    async def _read(self) -> None:
        conn, receive, inbound, limit = self.conn, self.receive, self.inbound, self.limit
        try:
            with anyio.CancelScope() as scope:
                self._reader_scope = scope
                while True:
                    message = await receive()
                    kind = message["type"]
                    if kind == "websocket.receive":
                        text = message.get("text")
                        if text is None:
                            size = len(message.get("bytes") or b"")
                            if size > limit:
                                await conn.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                            else:
                                await inbound.put(_BINARY)
                            continue
                        # Characters never outnumber bytes, so only long frames pay for this.
                        if len(text) > limit // 4 and len(text.encode()) > limit:
                            await conn.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                            continue
                        await inbound.put(text)
                    elif kind == "websocket.disconnect":
                        code = message.get("code", CloseCode.NORMAL)
                        if code == 1005 and "reason" not in message:
                            # uvicorn's report of a transport lost with no close frame.
                            code = CloseCode.ABNORMAL
                        conn.ended(code, message.get("reason") or "")
                        return
        finally:
            if conn.close_code is None:
                conn.ended(CloseCode.ABNORMAL, "")
            # Never blocks for long: the dispatcher drains the queue until it sees the end.
            with anyio.CancelScope(shield=True):
                await inbound.put(_END)

    async def _expire(self, expires_at: datetime) -> None:
        await anyio.sleep(max(0.0, expires_at.timestamp() - time.time()))
        logger.info("token of client %s expired; closing", self.conn.client_id)
        await self.conn.close(CloseCode.UNAUTHORIZED, "Unauthorized")

    # -- the dispatcher ------------------------------------------------------------------------

    async def _dispatch_all(self) -> None:
        route, conn, inbound = self.route, self.conn, self.inbound
        connect = route.handler_for("connect")
        if connect is not None:
            await self._connect(connect)
        dropped = 0
        concurrency = route.concurrency
        async with anyio.create_task_group() as handlers:
            limiter = anyio.Semaphore(concurrency)
            while (item := await inbound.get()) is not _END:
                if conn.closed_by_server:
                    # Refused, expired or kicked: what it sent after that is not handled.
                    dropped += 1
                elif concurrency == 1:
                    await self._dispatch(item)
                else:
                    await limiter.acquire()
                    handlers.start_soon(self._dispatch_released, item, limiter)
        if dropped:
            logger.info(
                "%d events of client %s not handled: the server had closed it (%s)",
                dropped,
                conn.client_id,
                conn.close_code,
            )

    async def _dispatch_released(self, item: Any, limiter: anyio.Semaphore) -> None:
        try:
            await self._dispatch(item)
        finally:
            limiter.release()

    async def _connect(self, handler: EventHandler) -> None:
        conn = self.conn
        try:
            await handler(conn, None)
        except WebSocketException as exc:
            logger.info("connect of %s refused: %s %s", conn.client_id, exc.code, exc.reason)
            await conn.close(exc.code, exc.reason or "")
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

    async def _dispatch(self, text: Any) -> None:
        conn = self.conn
        if text is _BINARY:
            await conn.send_frame_async(
                encode_error(
                    "binary frames are not supported; send JSON text frames",
                    ErrorCode.UNSUPPORTED_FRAME,
                )
            )
            return
        try:
            envelope = decode_envelope(text)
        except ProtocolError as exc:
            await conn.send_frame_async(encode_error(exc.message, exc.code))
            return
        event = envelope.event
        msg_id = envelope.id
        if event in RESERVED_EVENTS:
            await conn.send_frame_async(
                encode_error(
                    f"{event!r} is a reserved event and cannot be sent by clients",
                    ErrorCode.RESERVED_EVENT,
                    id=msg_id,
                    event=event,
                )
            )
            return
        handler = self.route.handler_for(event)
        if handler is None:
            await conn.send_frame_async(
                encode_error(
                    f"unknown event {_short(event)!r}",
                    ErrorCode.UNKNOWN_EVENT,
                    id=msg_id,
                    event=_short(event),
                )
            )
            return
        reply = await _call(conn, handler, envelope.payload, msg_id)
        if reply is not None:
            await conn.send_frame_async(reply)

    async def finish(self) -> None:
        """Clean-up: the disconnect handler once, membership, the writer."""
        route, conn = self.route, self.conn
        try:
            handler = route.handler_for("disconnect")
            if handler is not None:
                ended = {"code": conn.close_code, "reason": conn.close_reason}
                await _call(conn, handler, ended, None)
        finally:
            await route.manager._unregister(conn)
            await conn.aclose()


async def _call(conn: Connection, handler: EventHandler, payload: Any, msg_id: Any) -> str | None:
    """Run a handler; return the frame to answer with (ack or error), or None."""
    event = handler.event
    try:
        result = await handler(conn, payload)
    except InvalidPayload as exc:
        return _validation_error(exc.error.errors(**_ERR_OPTS), event, msg_id)
    except (WebSocketRequestValidationError, RequestValidationError) as exc:
        return _validation_error(list(exc.errors()), event, msg_id)
    except EventError as exc:
        return encode_error(exc.message, exc.code, id=msg_id, event=event, **exc.extra)
    except HTTPException as exc:
        logger.info("handler for %r answered HTTP %s", event, exc.status_code)
        return encode_error(
            _detail_text(exc.detail),
            ErrorCode.HTTP_ERROR,
            id=msg_id,
            event=event,
            status=exc.status_code,
        )
    except WebSocketException as exc:
        logger.info("handler for %r closed the connection: %s %s", event, exc.code, exc.reason)
        await conn.close(exc.code, exc.reason or "")
        return None
    except AuthenticationError:
        await conn.close(CloseCode.UNAUTHORIZED, "Unauthorized")
        return None
    except Exception:
        logger.exception("handler for event %r raised (client %s)", event, conn.client_id)
        return _internal_error(event, msg_id)
    if msg_id is None:
        return None
    try:
        return encode("ack", result, id=msg_id)
    except ValueError:  # EncodeError and pydantic's serialization errors
        logger.exception(
            "the result of the %r handler cannot be sent as JSON (client %s)", event, conn.client_id
        )
        return _internal_error(event, msg_id)


async def run_vanished(route: EventRoute, client_id: str) -> None:
    """Run ``route``'s disconnect handler for a client whose process died (shared backends)."""
    handler = route.handler_for("disconnect")
    if handler is None:
        return
    data = ConnectionData(client_id, connected_at=datetime.now(UTC), manager=route.manager)
    conn = Connection.detached(data, path=route.path)
    await _call(conn, handler, {"code": CloseCode.ABNORMAL, "reason": "node lost"}, None)


_BINARY = object()
_ERR_OPTS: dict[str, Any] = {"include_url": False, "include_input": False, "include_context": False}


def _internal_error(event: str, msg_id: Any) -> str:
    return encode_error("internal server error", ErrorCode.INTERNAL_ERROR, id=msg_id, event=event)


def _validation_error(errors: list[Any], event: str, msg_id: Any) -> str:
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
    first = shown[0] if shown else {"loc": [], "msg": "invalid"}
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    return encode_error(
        f"invalid payload for {event!r}: {where}: {first['msg']}",
        ErrorCode.VALIDATION_ERROR,
        id=msg_id,
        errors=shown,
        error_count=len(errors),
        event=event,
    )


def _detail_text(detail: Any) -> str:
    return (detail if isinstance(detail, str) else repr(detail))[:MAX_DETAIL_CHARS]


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
