"""Helpers for testing apps built on fastapi-orcs-ws.

- :func:`serve` runs a real uvicorn server on 127.0.0.1 in a background thread, for
  end-to-end tests with a real WebSocket client.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .server import uvicorn_settings
from .settings import WebSocketSettings

__all__ = ["LiveServer", "serve"]


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


def settings_of(app: Any) -> WebSocketSettings | None:
    """The settings of the first event route mounted in ``app``, if any."""
    from .routing import event_routes_of

    routes = event_routes_of(app)
    return routes[0][1].manager.settings if routes else None


@contextmanager
def serve(
    app: Any,
    *,
    settings: WebSocketSettings | None = None,
    startup_timeout: float = 10.0,
    **uvicorn_kwargs: Any,
) -> Iterator[LiveServer]:
    """Run ``app`` under a real uvicorn on a free loopback port for the ``with`` block.

    uvicorn gets :func:`~fastapi_orcs_ws.uvicorn_settings` (of ``settings``, else of the
    settings of the app's event routes) plus ``uvicorn_kwargs``.

    Example:
        ```python
        with serve(app) as server:
            async with websockets.connect(server.ws_url("/ws/chat")) as ws:
                ...
        ```
    """
    import uvicorn

    if settings is None:
        settings = settings_of(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on"}
    options.update(uvicorn_settings(settings))
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
