"""Small helpers for end-to-end tests with the `websockets` client."""

from __future__ import annotations

import json
import socket
from base64 import b64encode
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect


@asynccontextmanager
async def client(url: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A real WebSocket client with bounded timeouts and no compression."""
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", 5)
    kwargs.setdefault("close_timeout", 2)
    async with connect(url, **kwargs) as ws:
        yield ws


async def send(ws: ClientConnection, event: str, payload: Any = None, **extra: Any) -> None:
    await ws.send(json.dumps({"event": event, "payload": payload, **extra}))


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        data = json.loads(await ws.recv())
    assert isinstance(data, dict)
    return data


async def expect(ws: ClientConnection, event: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame, which must be ``event``."""
    frame = await recv(ws, timeout)
    assert frame["event"] == event, frame
    return frame


async def wait_for(ws: ClientConnection, event: str, timeout: float = 5.0) -> dict[str, Any]:
    """Skip frames until ``event`` arrives."""
    with anyio.fail_after(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["event"] == event:
                return frame  # type: ignore[no-any-return]


async def numbered(
    ws: ClientConnection, count: int, event: str = "n", timeout: float = 30.0
) -> list[Any]:
    """The ``payload["i"]`` of the next ``count`` ``event`` frames, skipping other frames."""
    seen: list[Any] = []
    with anyio.fail_after(timeout):
        while len(seen) < count:
            frame = json.loads(await ws.recv())
            if frame["event"] == event:
                seen.append(frame["payload"]["i"])
    return seen


def raw_handshake(host: str, port: int, path: str, *, rcvbuf: int | None = None) -> socket.socket:
    """Open a WebSocket at the TCP level and then do nothing: a peer that never reads or pongs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect((host, port))
    key = b64encode(b"0123456789abcdef").decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during handshake")
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock
