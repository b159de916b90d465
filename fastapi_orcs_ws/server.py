"""Running uvicorn with settings derived from ours.

ASGI hides pings and pongs from the application, so liveness (the spec's idle
timeout) and the frame-size limit are enforced by the server. These helpers turn
:class:`WebSocketSettings` into uvicorn's documented settings.
"""

from __future__ import annotations

from typing import Any

from .settings import WebSocketSettings

__all__ = ["run", "uvicorn_settings"]


def uvicorn_settings(settings: WebSocketSettings | None = None) -> dict[str, Any]:
    """uvicorn keyword arguments that enforce ``settings``.

    - ``ws_ping_interval`` and ``ws_ping_timeout`` are half the idle timeout each, so a
      dead peer is dropped within ``idle_timeout`` while a live, silent one answers
      pings and stays;
    - ``ws_max_size`` is ``max_payload_length`` (the server closes with 1009);
    - ``ws_per_message_deflate`` follows ``compression`` (off by default: deflate costs
      CPU on every frame of every broadcast, and with ``--ws wsproto`` it is unbounded).

    Example:
        ```python
        uvicorn.run("app:app", port=42069, **uvicorn_settings())
        ```
    """
    settings = settings if settings is not None else WebSocketSettings()
    half = settings.idle_timeout / 2
    return {
        "ws": "websockets-sansio",
        "ws_ping_interval": half,
        "ws_ping_timeout": half,
        "ws_max_size": settings.max_payload_length,
        "ws_per_message_deflate": settings.compression,
    }


def run(app: Any, *, settings: WebSocketSettings | None = None, **kwargs: Any) -> None:
    """``uvicorn.run(app, **uvicorn_settings(settings), **kwargs)``; ``kwargs`` win.

    Example:
        ```python
        if __name__ == "__main__":
            fastapi_orcs_ws.run("examples.chat_app.main:app", port=42069)
        ```
    """
    import uvicorn

    uvicorn.run(app, **{**uvicorn_settings(settings), **kwargs})
