"""Helpers for testing apps built on fastapi-orcs-ws.

- [`serve`][fastapi_orcs_ws.testing.serve] runs a real uvicorn server on 127.0.0.1 in a background
  thread, for end-to-end tests with a real WebSocket client.
- [`EventClient`][fastapi_orcs_ws.testing.EventClient] connects to an app in-process (on Starlette's
  ``TestClient``): send events, wait for events with a timeout, make acknowledged requests and check
  what a room received.
- [`mint_token`][fastapi_orcs_ws.testing.mint_token] signs a JWT for tests.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.testclient import TestClient, WebSocketTestSession
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect

from ._context import SCOPE_CONNECTION
from .connection import Connection
from .errors import EventError
from .manager import WebSocketManager
from .protocol import encode
from .routing import managers_of
from .server import uvicorn_settings
from .settings import WebSocketSettings

__all__ = ["EventClient", "EventSession", "LiveServer", "mint_token", "serve"]


@dataclass(frozen=True)
class LiveServer:
    """A running server: its address and URLs."""

    host: str
    port: int
    _stop: Callable[[], None] = field(repr=False, compare=False)

    def stop(self) -> None:
        """Shut the server down now, as on SIGTERM (open WebSockets get 1012)."""
        self._stop()

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ws_url(self, path: str = "/") -> str:
        """``ws://127.0.0.1:PORT/path``."""
        return f"ws://{self.host}:{self.port}{path}"


@contextmanager
def serve(
    app: Any,
    *,
    settings: WebSocketSettings | None = None,
    startup_timeout: float = 10.0,
    **uvicorn_kwargs: Any,
) -> Iterator[LiveServer]:
    """Run ``app`` under a real uvicorn on a free loopback port for the ``with`` block.

    uvicorn gets [`uvicorn_settings`][fastapi_orcs_ws.uvicorn_settings] (of ``settings``, else of
    the settings of the app's event routes) plus ``uvicorn_kwargs``.

    Example:
        ```python
        with serve(app) as server:
            async with websockets.connect(server.ws_url("/ws/chat")) as ws:
                ...
        ```
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on"}
    # The rules run() applies: the routers' settings (a conflict is an error), or `settings`.
    options.update(uvicorn_settings(app, settings=settings))
    options.update(uvicorn_kwargs)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=startup_timeout)

    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield LiveServer("127.0.0.1", port, stop)
    finally:
        stop()
        sock.close()


# -- in-process clients --------------------------------------------------------------------


class EventSession:
    """One in-process WebSocket connection speaking the event protocol.

    Frames that [`expect`][fastapi_orcs_ws.testing.EventSession.expect] skips wait in a buffer, so
    nothing is lost: a later [`receive`][fastapi_orcs_ws.testing.EventSession.receive] or
    [`expect`][fastapi_orcs_ws.testing.EventSession.expect] still sees them. Every read has a
    timeout.
    """

    def __init__(self, session: WebSocketTestSession) -> None:
        self._session = session
        self._buffer: deque[dict[str, Any]] = deque()
        self._ids = itertools.count(1)
        self.received: list[tuple[str, Any]] = []
        """Every ``(event, payload)`` read so far, in order."""
        self.close_code: int | None = None
        """The close code once the server has closed the connection."""

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected on the handshake."""
        return self._session.accepted_subprotocol

    @property
    def connection(self) -> Connection:
        """The server-side [`Connection`][fastapi_orcs_ws.Connection] of this session."""
        deadline = time.monotonic() + 5.0
        while True:
            conn = self._session.scope.get(SCOPE_CONNECTION)
            if isinstance(conn, Connection):
                return conn
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not register this connection")
            self._session.portal.call(anyio.sleep, 0.001)

    @property
    def client_id(self) -> str:
        """The id the server gave this connection (``ws.data.client_id``)."""
        return self.connection.client_id

    def send(self, event: str, payload: Any = None, *, id: str | int | None = None) -> None:
        """Send ``{"event": event, "payload": payload}`` (with ``"id"`` when given)."""
        self._session.send_text(encode(event, payload, id=id))

    def send_text(self, text: str) -> None:
        """Send a raw text frame (for testing malformed input)."""
        self._session.send_text(text)

    def receive_frame(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame as a dict (``event``, ``payload`` and maybe ``id``)."""
        if self._buffer:
            return self._buffer.popleft()
        return self._read(timeout)

    def receive(self, timeout: float = 5.0) -> tuple[str, Any]:
        """The next ``(event, payload)``; raises ``TimeoutError`` after ``timeout`` seconds."""
        frame = self.receive_frame(timeout)
        return frame["event"], frame.get("payload")

    def expect(
        self,
        event: str,
        timeout: float = 5.0,
        *,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Any:
        """Wait for the first ``event`` (matching ``where(frame)``) and return its payload.

        Other frames read on the way are kept for later reads.

        Raises:
            TimeoutError: none came within ``timeout`` seconds; the message lists what did.
        """
        frame = self._take(lambda f: f["event"] == event and (where is None or where(f)), timeout)
        if frame is None:
            seen = [f["event"] for f in self._buffer]
            raise TimeoutError(f"no {event!r} event within {timeout}s; waiting unread: {seen}")
        return frame.get("payload")

    def request(self, event: str, payload: Any = None, timeout: float = 5.0) -> Any:
        """Send ``event`` with a fresh id and return the payload of its ``ack``.

        Raises:
            EventError: the server answered with an ``error`` carrying the id.
            TimeoutError: neither came within ``timeout`` seconds.
        """
        msg_id = f"req-{next(self._ids)}"
        self.send(event, payload, id=msg_id)
        frame = self._take(
            lambda f: f.get("id") == msg_id and f["event"] in ("ack", "error"), timeout
        )
        if frame is None:
            raise TimeoutError(f"no ack for {event!r} within {timeout}s")
        if frame["event"] == "error":
            error = dict(frame.get("payload") or {})
            message = str(error.pop("message", "error"))
            raise EventError(message, str(error.pop("code", "error")), **error)
        return frame.get("payload")

    def assert_nothing_received(self, wait: float = 0.1) -> None:
        """Fail if any frame arrives within ``wait`` seconds."""
        try:
            frame = self.receive_frame(wait)
        except TimeoutError:
            return
        raise AssertionError(f"expected no frame, got {frame}")

    def expect_close(self, timeout: float = 5.0) -> int:
        """Read until the server closes the connection; return the close code."""
        deadline = time.monotonic() + timeout
        while self.close_code is None:
            try:
                self.receive_frame(max(0.0, deadline - time.monotonic()))
            except WebSocketDisconnect:
                break
        assert self.close_code is not None
        return self.close_code

    def close(self, code: int = 1000) -> None:
        """Close from the client side."""
        if self.close_code is None:
            self._session.close(code)

    def _take(
        self, match: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        for frame in self._buffer:
            if match(frame):
                self._buffer.remove(frame)
                return frame
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                frame = self._read(remaining)
            except TimeoutError:
                return None
            if match(frame):
                return frame
            self._buffer.append(frame)

    def _read(self, timeout: float) -> dict[str, Any]:
        if self.close_code is not None:
            raise WebSocketDisconnect(self.close_code)
        # Starlette's receive() has no timeout; wait on its stream inside the portal instead.
        stream = self._session._send_rx

        async def receive() -> Message:
            with anyio.fail_after(timeout):
                return await stream.receive()

        try:
            message = self._session.portal.call(receive)
        except TimeoutError:
            raise TimeoutError(f"no frame within {timeout}s") from None
        if message["type"] == "websocket.close":
            self.close_code = int(message.get("code", 1000))
            raise WebSocketDisconnect(self.close_code, message.get("reason") or "")
        text = message.get("text")
        if text is None:
            text = (message.get("bytes") or b"").decode()
        frame = json.loads(text)
        self.received.append((frame["event"], frame.get("payload")))
        return frame  # type: ignore[no-any-return]


class EventClient:
    """Connect to an app's event routes in-process, on Starlette's ``TestClient``.

    Entering it runs the app's lifespan; every session it opens shares one event loop,
    so rooms and broadcasts work between them.

    Example:
        ```python
        with EventClient(app) as client, \\
                client.connect("/ws/chat") as alice, client.connect("/ws/chat") as bob:
            alice.request("join", {"room": "blue"})
            bob.request("join", {"room": "blue"})
            alice.send("message", {"room": "blue", "text": "hi"})
            assert bob.expect("message")["text"] == "hi"
        ```
    """

    def __init__(self, app: Any, **test_client_kwargs: Any) -> None:
        self.app = app
        self.http = TestClient(app, **test_client_kwargs)
        """The underlying ``TestClient``, for HTTP requests."""
        self._sessions: list[EventSession] = []

    def __enter__(self) -> EventClient:
        self.http.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.__exit__(*exc_info)

    @property
    def manager(self) -> WebSocketManager:
        """The app's [`WebSocketManager`][fastapi_orcs_ws.WebSocketManager]."""
        managers = managers_of(self.app)
        if len(managers) != 1:
            raise RuntimeError(
                f"the app has {len(managers)} WebSocket managers; use the router's manager "
                "(router.manager) directly"
            )
        return next(iter(managers))

    @contextmanager
    def connect(
        self,
        path: str,
        *,
        token: str | None = None,
        token_via: str = "header",
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] | None = None,
    ) -> Iterator[EventSession]:
        """Open a WebSocket to ``path`` for the ``with`` block.

        ``token`` is presented as ``Authorization: Bearer`` (``token_via="header"``), as
        ``?token=`` (``"query"``) or as the subprotocol pair ``["token", token]``
        (``"subprotocol"``).

        A refused token is not an exception here: the server accepts, then closes with
        4401, which [`EventSession.expect_close`][fastapi_orcs_ws.testing.EventSession.expect_close]
        returns.

        Raises:
            starlette.websockets.WebSocketDisconnect: the server closed before accepting
                (for example, a disallowed ``Origin``).
        """
        all_headers = dict(headers or {})
        offered = list(subprotocols or [])
        if token is not None:
            if token_via == "header":
                all_headers["Authorization"] = f"Bearer {token}"
            elif token_via == "query":
                path += ("&" if "?" in path else "?") + urlencode({"token": token})
            elif token_via == "subprotocol":
                offered = ["token", token, *offered]
            else:
                raise ValueError("token_via is 'header', 'query' or 'subprotocol'")
        with self.http.websocket_connect(
            path, headers=all_headers, subprotocols=offered or None
        ) as raw:
            session = EventSession(raw)
            self._sessions.append(session)
            try:
                yield session
            finally:
                self._sessions.remove(session)

    def room_members(self, room: str) -> set[str]:
        """The client ids in ``room``, as the manager sees them."""
        portal = self.http.portal
        if portal is None:
            raise RuntimeError("use EventClient as a context manager")
        return portal.call(self.manager.get_room_clients, room)

    def assert_room_received(
        self, room: str, event: str, payload: Any = None, *, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Assert every open session in ``room`` got ``event`` (with ``payload``, if given).

        Frames a session already read count, so this works after
        [`EventSession.expect`][fastapi_orcs_ws.testing.EventSession.expect]. A dict ``payload``
        checks only its keys. Returns ``{client_id: payload}``. Sessions outside the room are not
        checked: use
        [`EventSession.assert_nothing_received`][fastapi_orcs_ws.testing.EventSession.assert_nothing_received].
        """
        members = self.room_members(room)
        sessions = [s for s in self._sessions if s.client_id in members]
        if not sessions:
            raise AssertionError(f"no open session is in room {room!r}")

        def matches(frame: dict[str, Any]) -> bool:
            return frame["event"] == event and _contains(frame.get("payload"), payload)

        got = {}
        for session in sessions:
            seen = [p for e, p in session.received if matches({"event": e, "payload": p})]
            if seen:
                got[session.client_id] = seen[0]
                continue
            try:
                got[session.client_id] = session.expect(
                    event, timeout, where=lambda f: _contains(f.get("payload"), payload)
                )
            except TimeoutError:
                others = [p for e, p in session.received if e == event]
                raise AssertionError(
                    f"client {session.client_id} in room {room!r} did not receive {event!r}"
                    f" with {payload!r}; it got {others!r}"
                ) from None
        return got


def _contains(actual: Any, expected: Any) -> bool:
    if expected is None:
        return True
    if isinstance(expected, dict) and isinstance(actual, dict):
        return all(k in actual and actual[k] == v for k, v in expected.items())
    return bool(actual == expected)


def mint_token(
    subject: str,
    *,
    secret: str,
    algorithm: str = "HS256",
    expires_in: float | None = 300,
    **claims: Any,
) -> str:
    """A signed JWT for tests: ``sub`` is ``subject``, ``exp`` is ``expires_in`` from now.

    Extra keyword arguments become claims (``aud``, ``iss``, ``roles``...). Pass a negative
    ``expires_in`` for an expired token, ``None`` for none at all.

    Example:
        ```python
        token = mint_token("alice", secret="test-secret", roles=["admin"])
        with client.connect("/ws/private", token=token) as ws: ...
        ```
    """
    from jose import jwt

    now = int(time.time())
    body: dict[str, Any] = {"sub": subject, "iat": now}
    if expires_in is not None:
        body["exp"] = now + int(expires_in)
    body.update(claims)
    return jwt.encode(body, secret, algorithm=algorithm)
