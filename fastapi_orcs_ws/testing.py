"""Helpers for testing apps built on fastapi-orcs-ws.

- :func:`serve` runs a real uvicorn server on 127.0.0.1 in a background thread, for
  end-to-end tests with a real WebSocket client.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .server import uvicorn_settings
from .settings import WebSocketSettings

__all__ = ["LiveServer", "serve"]


@dataclass(frozen=True)
class LiveServer:
    """A running server: its address and URLs."""

    host: str
    port: int

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

    uvicorn gets :func:`~fastapi_orcs_ws.uvicorn_settings` plus ``uvicorn_kwargs``.

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
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on", **uvicorn_settings(settings)}
    options.update(uvicorn_kwargs)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield LiveServer("127.0.0.1", port)
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()
