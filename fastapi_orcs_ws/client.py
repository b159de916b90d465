"""A Python client for event routes, on ``websockets`` (``pip install fastapi-orcs-ws[client]``).

The same surface as the JavaScript client (``orcs-client.js``), for services, scripts and
tests against a real server:

- [`Client.emit`][fastapi_orcs_ws.client.Client.emit] sends an event;
  [`Client.request`][fastapi_orcs_ws.client.Client.request] sends it with an id and returns the
  ``ack`` payload, raising [`EventError`][fastapi_orcs_ws.EventError] on an ``error`` answer and
  [`RequestTimeoutError`][fastapi_orcs_ws.client.RequestTimeoutError] when none comes in time;
- [`Client.on`][fastapi_orcs_ws.client.Client.on] /
  [`Client.off`][fastapi_orcs_ws.client.Client.off] register handlers for server events and for the
  client's own ``open``, ``close``, ``reconnect`` and ``recovery`` events;
- it reconnects by itself with capped exponential backoff and full jitter
  ([`Backoff`][fastapi_orcs_ws.client.Backoff]), stops on
  [`Client.close`][fastapi_orcs_ws.client.Client.close], on close codes 1000 and 4403, and on 4401
  unless the ``token`` callback (asked before each reconnect) gives a new token;
- it remembers the last room position (``room``, ``offset``, ``epoch`` at the envelope's top
  level) per room and sends it as ``since`` when it rejoins the room after a reconnect;
- emits and requests made while disconnected wait in a buffer of ``buffer_size`` frames (100);
  one more raises [`BufferFullError`][fastapi_orcs_ws.client.BufferFullError].

Errors::

    WebSocketError
    ├── EventError               the server answered a request with an ``error`` event
    └── ClientError              a failure on the client's side (``code``)
        ├── RequestTimeoutError  no answer in time (also a ``TimeoutError``); code "timeout"
        ├── BufferFullError      too many frames wait for a connection; code "buffer_full"
        ├── DisconnectedError    the connection dropped before the answer; code "disconnected"
        └── ClientClosedError    the client is closed for good; code "closed"

Example:
    ```python
    async with connect("ws://127.0.0.1:8000/ws/chat") as chat:
        chat.on("message", lambda payload: print(payload["text"]))
        await chat.request("join", {"room": "blue"})
        await chat.emit("message", {"room": "blue", "text": "hi"})
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .errors import EventError, WebSocketError
from .protocol import CloseCode

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_TIMEOUT",
    "LIFECYCLE_EVENTS",
    "Backoff",
    "BufferFullError",
    "Client",
    "ClientClosedError",
    "ClientError",
    "DisconnectedError",
    "RequestTimeoutError",
    "connect",
]

logger = logging.getLogger("fastapi_orcs_ws.client")

DEFAULT_BUFFER_SIZE = 100
"""Emits and requests kept while disconnected."""
DEFAULT_TIMEOUT = 10.0
"""Seconds a request waits for its ack."""
LIFECYCLE_EVENTS = ("open", "close", "reconnect", "recovery")
"""Events the client emits itself; a server event with one of these names is refused."""

Token = str | Callable[[], "str | Awaitable[str | None] | None"] | None
Handler = Callable[..., Any]


class ClientError(WebSocketError):
    """A failure on the client's side; ``code`` says which."""

    code = "client_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestTimeoutError(ClientError, TimeoutError):
    """No ``ack`` or ``error`` answered the request within its timeout."""

    code = "timeout"


class BufferFullError(ClientError):
    """``buffer_size`` frames already wait for the connection."""

    code = "buffer_full"


class DisconnectedError(ClientError):
    """The connection dropped after the request was sent and before it was answered."""

    code = "disconnected"


class ClientClosedError(ClientError):
    """The client is closed for good (``close()``, or the server refused it)."""

    code = "closed"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnection delays: full jitter, ``uniform(0, min(maximum, initial * factor ** n))``.

    ``n`` counts failed attempts in a row (0 for the first retry); a successful connection
    resets it. After ``retries`` failed attempts in a row the client gives up (``None``:
    never). Seconds throughout. See "Exponential Backoff And Jitter" (AWS architecture blog).
    """

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0
    retries: int | None = None

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.maximum >= self.initial and self.factor >= 1):
            raise ValueError("Backoff needs initial > 0, maximum >= initial and factor >= 1")
        if self.retries is not None and self.retries < 0:
            raise ValueError("Backoff.retries must be >= 0 or None")

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0-based), in seconds."""
        bound = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return random.uniform(0, bound)


@dataclass(slots=True)
class _Pending:
    event: str
    payload: Any
    future: asyncio.Future[Any]
    auto: bool = False
    sent: bool = False


@dataclass(slots=True)
class _Queued:
    text: str
    event: str
    payload: Any
    id: int | None
    done: asyncio.Future[None]


def connect(url: str, **options: Any) -> Client:
    """A [`Client`][fastapi_orcs_ws.client.Client] for ``url``; ``async with connect(url) as c:``
    waits until it is open."""
    return Client(url, **options)


class Client:
    """One logical connection to an event route, reconnecting by itself until closed.

    Args:
        url: ``ws://`` or ``wss://`` URL of the route.
        token: a JWT, or a callable (sync or async) asked for one before the first
            connection and before each reconnect. Sent as the ``["token", JWT]``
            subprotocol, or as ``?token=`` with ``token_in="query"`` (which ends up in logs).
        subprotocols: more subprotocols to offer, after ``"token", JWT``.
        reconnect: a [`Backoff`][fastapi_orcs_ws.client.Backoff], ``True`` for the default one,
            ``False`` for none.
        buffer_size: emits and requests kept while disconnected (default 100).
        timeout: default request timeout in seconds (10).
        open_timeout: seconds for one connection attempt, handshake included (10).
        rooms: the ``(join, leave)`` event names whose ``{"room": ...}`` payloads the client
            tracks to rejoin after a reconnect; ``None`` tracks nothing.
        **connect_options: passed to ``websockets.asyncio.client.connect`` (``max_size``,
            ``additional_headers``, ``ping_interval``...).

    Handlers get the payload (and, when they take two parameters, the whole frame); they may
    be ``async``. Lifecycle handlers get a dict: ``open`` ``{"reconnected"}``, ``close``
    ``{"code", "reason", "will_reconnect"}``, ``reconnect`` ``{"attempt", "delay"}``,
    ``recovery`` the rejoin's ack ``{"room", "recovered", "offset", "epoch"}``. An exception
    in a handler is logged with its traceback and does not stop the others.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Token = None,
        token_in: str = "subprotocol",
        subprotocols: Sequence[str] = (),
        reconnect: Backoff | bool = True,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        open_timeout: float = 10.0,
        rooms: tuple[str, str] | None = ("join", "leave"),
        **connect_options: Any,
    ) -> None:
        try:
            parse_uri(url)
        except InvalidURI:
            raise ValueError(f"url must be a ws:// or wss:// URL, not {url!r}") from None
        if token_in not in ("subprotocol", "query"):
            raise ValueError('token_in is "subprotocol" or "query"')
        if buffer_size < 0 or timeout <= 0 or open_timeout <= 0:
            raise ValueError("buffer_size must be >= 0; timeout and open_timeout > 0")
        self.url = url
        self._token = token
        self._token_in = token_in
        self._subprotocols = list(subprotocols)
        self._backoff = Backoff() if reconnect is True else (reconnect or None)
        self._buffer_size = buffer_size
        self._timeout = timeout
        self._open_timeout = open_timeout
        self._join: str | None = rooms[0] if rooms is not None else None
        self._leave: str | None = rooms[1] if rooms is not None else None
        self._connect_options = connect_options
        self._handlers: dict[str, list[tuple[Handler, bool]]] = {}
        self._pending: dict[int, _Pending] = {}
        self._buffer: deque[_Queued] = deque()
        self._ids = itertools.count(1)
        self._positions: dict[str, tuple[int, str]] = {}
        self._rooms: dict[str, None] = {}
        self._ws: ClientConnection | None = None
        self._state = "idle"
        self._task: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Future[Any]] = set()
        self._opened = 0
        self._closing: tuple[int, str] | None = None
        self._open_event = asyncio.Event()
        self._final: tuple[int, str] | None = None

    # -- public surface ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``idle`` (not started), ``connecting``, ``open``, ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def positions(self) -> dict[str, dict[str, Any]]:
        """The last position seen per room: ``{room: {"offset": int, "epoch": str}}``."""
        return {room: {"offset": o, "epoch": e} for room, (o, e) in self._positions.items()}

    @property
    def buffered(self) -> int:
        """Frames waiting for a connection."""
        return len(self._buffer)

    async def start(self, *, wait: bool = True) -> None:
        """Start connecting (reconnecting thereafter); with ``wait``, until the first open.

        Raises:
            ClientClosedError: the client stopped before it could open (e.g. 4401).
            TimeoutError: not open within ``open_timeout`` seconds (the client keeps trying).
        """
        if self._task is None:
            self._state = "connecting"
            self._task = asyncio.create_task(self._run(), name=f"orcs-client {self.url}")
            self._task.add_done_callback(self._run_done)
        if wait:
            await self.wait_open(self._open_timeout)

    async def wait_open(self, timeout: float | None = None) -> None:
        """Wait until the client is open (``timeout`` seconds; ``None`` waits for ever)."""
        async with asyncio.timeout(timeout):
            while self._state != "open":
                if self._final is not None:
                    raise ClientClosedError(_closed_text(self._final))
                self._open_event.clear()
                await self._open_event.wait()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def emit(self, event: str, payload: Any = None) -> None:
        """Send ``event`` without asking for an ack; returns once it is written.

        Raises:
            BufferFullError: disconnected, and ``buffer_size`` frames already wait.
            ClientClosedError: the client is closed (or closes before the frame is sent).
            DisconnectedError: the connection dropped while the frame was being written.
        """
        _check_event(event)
        payload = self._outgoing(event, payload)
        done = self._queue(event, payload, None)
        await done

    async def request(
        self, event: str, payload: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send ``event`` with an id and return the payload of its ``ack``.

        Raises:
            EventError: the server answered with an ``error`` event (``code``, ``message``,
                the rest of its payload in ``extra``).
            RequestTimeoutError: no answer within ``timeout`` seconds (the client's default).
            DisconnectedError: the connection dropped before the answer.
            BufferFullError, ClientClosedError: as for [`emit`][fastapi_orcs_ws.client.Client.emit].
        """
        _check_event(event)
        return await self._request(event, self._outgoing(event, payload), timeout, auto=False)

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Call ``handler(payload)`` for each ``event``; also a decorator. Returns the handler."""
        _check_event(event)

        def register(func: Handler) -> Handler:
            self._handlers.setdefault(event, []).append((func, _takes_two(func)))
            return func

        return register(handler) if handler is not None else register

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` for ``event``, or every handler of ``event``."""
        if handler is None:
            self._handlers.pop(event, None)
        else:
            kept = [(h, two) for h, two in self._handlers.get(event, []) if h is not handler]
            self._handlers[event] = kept

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close for good: no reconnection; waiting frames fail with
        [`ClientClosedError`][fastapi_orcs_ws.client.ClientClosedError]."""
        if self._final is not None or self._task is None:
            self._stop((code, reason))
            return
        if self._closing is None:
            self._closing = (code, reason)
        ws = self._ws
        if ws is not None:
            await ws.close(code, reason)
        task = self._task
        if not task.done():
            task.cancel()  # wakes a backoff sleep; a reading loop ends on the close above
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stop(self._closing)
        if self._handler_tasks:
            await asyncio.wait(self._handler_tasks, timeout=self._timeout)

    # -- sending -------------------------------------------------------------------------------

    def _outgoing(self, event: str, payload: Any) -> Any:
        if event == self._join and _is_room(payload) and "since" not in payload:
            position = self._positions.get(payload["room"])
            if position is not None:
                return {**payload, "since": {"offset": position[0], "epoch": position[1]}}
        if event == self._leave and _is_room(payload):
            self._rooms.pop(payload["room"], None)
            self._positions.pop(payload["room"], None)
        return payload

    def _request(
        self, event: str, payload: Any, timeout: float | None, *, auto: bool
    ) -> Coroutine[Any, Any, Any]:
        """Queue the request now (frames keep their order); the coroutine waits for the answer."""
        msg_id = next(self._ids)
        pending = _Pending(event, payload, asyncio.get_running_loop().create_future(), auto=auto)
        self._pending[msg_id] = pending
        try:
            done = self._queue(event, payload, msg_id)
        except BaseException:
            self._pending.pop(msg_id, None)
            raise
        limit = self._timeout if timeout is None else timeout
        return self._answer(event, msg_id, pending, done, limit)

    async def _answer(
        self, event: str, msg_id: int, pending: _Pending, done: asyncio.Future[None], limit: float
    ) -> Any:
        try:
            async with asyncio.timeout(limit):
                await done
                return await pending.future
        except TimeoutError:
            raise RequestTimeoutError(f"no answer to {event!r} within {limit} s") from None
        finally:
            self._pending.pop(msg_id, None)
            self._unqueue(msg_id)

    def _queue(self, event: str, payload: Any, msg_id: int | None) -> asyncio.Future[None]:
        if self._final is not None or self._closing is not None:
            raise ClientClosedError("the client is closed")
        body: dict[str, Any] = {"event": event, "payload": payload}
        if msg_id is not None:
            body["id"] = msg_id
        text = json.dumps(body, allow_nan=False, separators=(",", ":"))
        item = _Queued(text, event, payload, msg_id, asyncio.get_running_loop().create_future())
        if self._state == "open" and not self._buffer:
            self._write_soon(item)
            return item.done
        if len(self._buffer) >= self._buffer_size:
            raise BufferFullError(
                f"{len(self._buffer)} frames already wait for the connection (buffer_size)"
            )
        self._buffer.append(item)
        return item.done

    def _unqueue(self, msg_id: int) -> None:
        for item in self._buffer:
            if item.id == msg_id:
                self._buffer.remove(item)
                return

    def _write_soon(self, item: _Queued) -> None:
        ws = self._ws
        assert ws is not None
        if item.id is not None and item.id in self._pending:
            self._pending[item.id].sent = True
        if item.event == self._join and item.id is None and _is_room(item.payload):
            self._rooms[item.payload["room"]] = None

        def written(task: asyncio.Task[None]) -> None:
            if item.done.done():
                return
            if task.cancelled() or task.exception() is not None:
                item.done.set_exception(
                    DisconnectedError(f"the connection closed before {item.event!r} was written")
                )
            else:
                item.done.set_result(None)

        task = asyncio.ensure_future(ws.send(item.text))
        task.add_done_callback(written)

    def _flush(self) -> None:
        while self._buffer and self._state == "open":
            self._write_soon(self._buffer.popleft())

    # -- the connection ------------------------------------------------------------------------

    async def _token_now(self) -> str | None:
        token = self._token
        if callable(token):
            value = token()
            if inspect.isawaitable(value):
                value = await value
            return value
        return token

    async def _run(self) -> None:
        attempt = 0
        try:
            token = await self._token_now()
        except Exception as exc:
            logger.error("token callback failed; not connecting", exc_info=True)
            self._stop((CloseCode.UNAUTHORIZED, f"token callback failed: {exc}"))
            return
        while True:
            self._state = "reconnecting" if self._opened else "connecting"
            code, reason, opened = await self._connect_once(token)
            if self._closing is not None:
                self._stop(self._closing)
                return
            if opened:
                attempt = 0
            self._state = "reconnecting"
            will, token = await self._decide(code, reason, token, attempt)
            if not will:
                self._stop((code, reason))
                return
            assert self._backoff is not None
            delay = self._backoff.delay(attempt)
            attempt += 1
            self._fire("close", {"code": code, "reason": reason, "will_reconnect": True})
            self._fire("reconnect", {"attempt": attempt, "delay": delay})
            await asyncio.sleep(delay)

    def _run_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("the client's connection task failed", exc_info=task.exception())
            self._stop((1006, f"client failure: {task.exception()!r}"))

    async def _decide(
        self, code: int, reason: str, token: str | None, attempt: int
    ) -> tuple[bool, str | None]:
        """Whether to reconnect after ``code``, and with which token."""
        backoff = self._backoff
        if backoff is None or code in (CloseCode.NORMAL, CloseCode.FORBIDDEN):
            return False, token
        if backoff.retries is not None and attempt >= backoff.retries:
            return False, token
        if callable(self._token):
            try:
                fresh = await self._token_now()
            except Exception:
                logger.error("token callback failed; not reconnecting", exc_info=True)
                return False, token
            if code == CloseCode.UNAUTHORIZED and (not fresh or fresh == token):
                return False, token
            return True, fresh
        return code != CloseCode.UNAUTHORIZED, token

    async def _connect_once(self, token: str | None) -> tuple[int, str, bool]:
        """One connection, from handshake to close: ``(code, reason, opened)``."""
        url = self.url
        offered = list(self._subprotocols)
        if token:
            if self._token_in == "query":
                parts = urlsplit(url)
                query = [*parse_qsl(parts.query), ("token", token)]
                url = urlunsplit(parts._replace(query=urlencode(query)))
            else:
                offered = ["token", token, *offered]
        options: dict[str, Any] = {"open_timeout": self._open_timeout, **self._connect_options}
        try:
            ws = await ws_connect(
                url, subprotocols=[Subprotocol(p) for p in offered] or None, **options
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            logger.info("connecting to %s failed: %s", self.url, exc)
            return 1006, f"connection failed: {exc}", False
        if token and self._token_in == "subprotocol" and ws.subprotocol != "token":
            # Browsers fail such a handshake; do the same rather than run unauthenticated.
            await ws.close(CloseCode.POLICY_VIOLATION, "token subprotocol not selected")
            logger.error("%s did not select the 'token' subprotocol; closing", self.url)
            self._closing = (
                CloseCode.POLICY_VIOLATION,
                "server did not select the token subprotocol",
            )
            return (*self._closing, False)
        self._ws = ws
        self._opened += 1
        self._state = "open"
        self._open_event.set()
        try:
            if self._opened > 1:
                # Rejoins go first (recovery before anything new), then what waited.
                waiting, self._buffer = self._buffer, deque()
                self._rejoin()
                self._buffer.extend(waiting)
            self._flush()
            self._fire("open", {"reconnected": self._opened > 1})
            async for message in ws:
                self._on_message(message)
        except ConnectionClosed:
            pass  # the close code and reason are read below
        finally:
            self._ws = None
            self._state = "reconnecting"
            self._fail_sent(ws.close_code or 1006)
        return ws.close_code or 1006, ws.close_reason or "", True

    def _fail_sent(self, code: int) -> None:
        for msg_id, pending in list(self._pending.items()):
            if pending.sent and not pending.future.done():
                pending.future.set_exception(
                    DisconnectedError(
                        f"the connection closed ({code}) before {pending.event!r} was answered"
                    )
                )
                self._pending.pop(msg_id, None)

    def _rejoin(self) -> None:
        if self._join is None:
            return
        rooms = dict.fromkeys([*self._rooms, *self._positions])
        for room in rooms:
            payload = self._outgoing(self._join, {"room": room})
            task = asyncio.ensure_future(self._request(self._join, payload, None, auto=True))
            task.add_done_callback(functools.partial(self._rejoined, room))

    def _rejoined(self, room: str, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            ack = task.result()
            self._fire("recovery", {"room": room, **(ack if isinstance(ack, dict) else {})})
            return
        message = f"rejoining {room!r} failed: {exc}"
        self._report(
            "error", {"code": getattr(exc, "code", "error"), "message": message, "room": room}
        )

    def _stop(self, final: tuple[int, str]) -> None:
        if self._final is not None:
            return
        self._final = final
        self._state = "closed"
        self._open_event.set()
        error = ClientClosedError(_closed_text(final))
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        for item in self._buffer:
            if not item.done.done():
                item.done.set_exception(error)
        self._buffer.clear()
        self._fire("close", {"code": final[0], "reason": final[1], "will_reconnect": False})

    # -- receiving -----------------------------------------------------------------------------

    def _on_message(self, message: str | bytes) -> None:
        frame: Any = None
        if isinstance(message, str):
            with contextlib.suppress(ValueError):
                frame = json.loads(message)
        if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
            self._report(
                "error",
                {
                    "code": "invalid_frame",
                    "message": "the server sent a frame that is not an event",
                },
            )
            return
        event = frame["event"]
        payload = frame.get("payload")
        self._remember(frame)
        msg_id = frame.get("id")
        if event in ("ack", "error") and msg_id is not None:
            pending = self._pending.pop(msg_id, None) if isinstance(msg_id, int) else None
            if pending is not None and not pending.future.done():
                if event == "ack":
                    self._joined(pending, payload)
                    pending.future.set_result(payload)
                else:
                    error = dict(payload) if isinstance(payload, dict) else {}
                    message = str(error.pop("message", "error"))
                    code = str(error.pop("code", "error"))
                    pending.future.set_exception(EventError(message, code, **error))
                return
        if event in LIFECYCLE_EVENTS:
            logger.warning(
                "the server sent %r, a name the client keeps for its own events; dropped", event
            )
            return
        self._report(event, payload, frame)

    def _remember(self, frame: Mapping[str, Any]) -> None:
        room, offset, epoch = frame.get("room"), frame.get("offset"), frame.get("epoch")
        if not isinstance(room, str) or not isinstance(epoch, str):
            return
        if not isinstance(offset, int) or isinstance(offset, bool):
            return
        self._advance(room, offset, epoch)

    def _advance(self, room: str, offset: int, epoch: str) -> None:
        # Within one epoch a position only moves forward: a live frame that overtook the join's
        # ack (or came during its replay) is already behind us and must not be replayed again.
        known = self._positions.get(room)
        if known is None or known[1] != epoch or offset > known[0]:
            self._positions[room] = (offset, epoch)

    def _joined(self, pending: _Pending, ack: Any) -> None:
        if pending.event != self._join or not _is_room(pending.payload):
            return
        room = pending.payload["room"]
        self._rooms[room] = None
        if isinstance(ack, dict):
            offset, epoch = ack.get("offset"), ack.get("epoch")
            if isinstance(offset, int) and not isinstance(offset, bool) and isinstance(epoch, str):
                self._advance(room, offset, epoch)

    def _report(self, event: str, payload: Any, frame: Mapping[str, Any] | None = None) -> None:
        if event == "error" and not self._handlers.get("error"):
            logger.warning("unhandled error event from %s: %s", self.url, payload)
            return
        self._fire(event, payload, frame)

    def _fire(self, event: str, payload: Any, frame: Mapping[str, Any] | None = None) -> None:
        for handler, two in list(self._handlers.get(event, ())):
            try:
                result = handler(payload, frame) if two else handler(payload)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._handler_tasks.add(task)
                    task.add_done_callback(self._handler_done)
            except Exception:
                logger.exception("handler for %r raised", event)

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("async handler raised", exc_info=task.exception())


def _takes_two(handler: Handler) -> bool:
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)


def _check_event(event: str) -> None:
    if not isinstance(event, str) or not event:
        raise ValueError("event names are non-empty strings")


def _is_room(payload: Any) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("room"), str)


def _closed_text(final: tuple[int, str]) -> str:
    code, reason = final
    return f"the client is closed ({code}{': ' + reason if reason else ''})"
