"""Running uvicorn with the settings of the app's WebSocket routers.

ASGI hides pings and pongs from the application, so liveness (the spec's idle timeout), the
frame-size limit and compression are enforced by the server, for every route at once. These
helpers find the [`WebSocketRouter`][fastapi_orcs_ws.WebSocketRouter]s in an app and turn
their [`WebSocketSettings`][fastapi_orcs_ws.WebSocketSettings] into uvicorn's documented
options.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .settings import WebSocketSettings

if TYPE_CHECKING:
    from .routing import EventRoute

__all__ = ["run", "uvicorn_settings"]

logger = logging.getLogger("fastapi_orcs_ws")

SERVER_SETTINGS = ("idle_timeout", "max_payload_length", "compression")
"""The settings uvicorn applies to every connection of the process (one value per server)."""

_MAX_WRAPPERS = 32  # how many middleware layers (``.app``) to look through for the routes


def uvicorn_settings(
    app: Any = None, *, settings: WebSocketSettings | None = None
) -> dict[str, Any]:
    """uvicorn keyword arguments that enforce the WebSocket settings of ``app``.

    Args:
        app: What to read the settings from: a FastAPI/Starlette app (middleware-wrapped apps
            too), a [`WebSocketRouter`][fastapi_orcs_ws.WebSocketRouter], an import string
            ``"module:attribute"`` (imported here, as uvicorn would), or a
            [`WebSocketSettings`][fastapi_orcs_ws.WebSocketSettings]. ``None``: the ``WS_*``
            environment.
        settings: Explicit settings; they win over the routers' (a WARNING names any
            server-level value they override).

    Returns:
        ``ws="websockets-sansio"``; ``ws_ping_interval`` and ``ws_ping_timeout`` each half of
        ``idle_timeout`` (seconds), so a dead peer is dropped within ``idle_timeout`` while a
        live, silent one answers pings and stays; ``ws_max_size`` = ``max_payload_length``
        (bytes; uvicorn closes larger frames with 1009); ``ws_per_message_deflate`` =
        ``compression`` (RFC 7692; off by default: deflate costs CPU on every frame of every
        broadcast); ``http="h11"`` and ``h11_max_incomplete_event_size=16384`` (bytes: a
        request head still unfinished past 16 KiB gets HTTP 400, where httptools would buffer
        any size; see docs/security.md, "Deployment").

    Raises:
        ConfigurationError: the routers in ``app`` disagree on a server-level setting
            (``idle_timeout``, ``max_payload_length``, ``compression``): one server cannot
            honour both. Give the routers the same values (share one ``WebSocketSettings``)
            or pass ``settings=``.

    An app with no event route logs a WARNING and uses the ``WS_*`` environment.

    Example:
        ```python
        router = WebSocketRouter(settings=WebSocketSettings(idle_timeout=60))
        app = FastAPI()
        app.include_router(router)
        uvicorn.run(app, port=42069, **uvicorn_settings(app))  # pings every 30 s, 30 s timeout
        ```
    """
    resolved = _settings_for(app, settings)
    half = resolved.idle_timeout / 2
    return {
        # h11 answers 400 to a request head still unfinished past 16 KiB; httptools buffers a
        # head of any size and never answers it (docs/security.md, "Deployment").
        "http": "h11",
        "h11_max_incomplete_event_size": 16 * 1024,
        "ws": "websockets-sansio",
        "ws_ping_interval": half,
        "ws_ping_timeout": half,
        "ws_max_size": resolved.max_payload_length,
        "ws_per_message_deflate": resolved.compression,
    }


def run(app: Any, *, settings: WebSocketSettings | None = None, **kwargs: Any) -> None:
    """Serve ``app`` with uvicorn: ``uvicorn.run(app, **uvicorn_settings(app), **kwargs)``.

    Args:
        app: The app, a [`WebSocketRouter`][fastapi_orcs_ws.WebSocketRouter], or an import
            string ``"module:app"`` (needed for ``reload=True`` or ``workers``); a string is
            imported here to read its routers' settings (with ``factory=True`` the factory is
            called once for that).
        settings: Explicit settings, winning over the routers' (see
            [`uvicorn_settings`][fastapi_orcs_ws.uvicorn_settings]).
        **kwargs: Any ``uvicorn.run`` option (``host``, ``port``, ``log_level``...); they win
            over the derived ones.

    Raises:
        ConfigurationError: as [`uvicorn_settings`][fastapi_orcs_ws.uvicorn_settings].

    Example:
        ```python
        if __name__ == "__main__":
            fastapi_orcs_ws.run("examples.chat_app.main:app", port=42069)
        ```
    """
    import uvicorn

    target = app
    if isinstance(app, str):
        from uvicorn.importer import import_from_string

        if kwargs.get("app_dir") is not None:  # what uvicorn.run does before importing
            import sys

            sys.path.insert(0, kwargs["app_dir"])
        target = import_from_string(app)
        if kwargs.get("factory"):
            target = target()
            if not kwargs.get("reload") and (kwargs.get("workers") or 1) == 1:
                # Serve the instance just built rather than building a second one.
                app, kwargs = target, {k: v for k, v in kwargs.items() if k != "factory"}
    uvicorn.run(app, **{**uvicorn_settings(target, settings=settings), **kwargs})


def _settings_for(app: Any, explicit: WebSocketSettings | None) -> WebSocketSettings:
    if isinstance(app, WebSocketSettings):
        if explicit is not None and explicit is not app:
            raise TypeError("pass the settings once: as the first argument or as settings=")
        return app
    if isinstance(app, str):
        from uvicorn.importer import import_from_string

        app = import_from_string(app)
    if app is None:
        return explicit if explicit is not None else WebSocketSettings()
    routes = _event_routes(app)
    if explicit is not None:
        for name in SERVER_SETTINGS:
            values = {getattr(route.router.settings, name) for _, route in routes}
            theirs = values - {getattr(explicit, name)}
            if theirs:
                logger.warning(
                    "settings= overrides %s of the app's routers (%s -> %r)",
                    name,
                    ", ".join(repr(v) for v in sorted(theirs, key=repr)),
                    getattr(explicit, name),
                )
        return explicit
    if not routes:
        logger.warning(
            "no WebSocket event route found in %s: the server uses the WS_* environment; "
            "pass the app that includes your WebSocketRouter, or settings=",
            type(app).__name__,
        )
        return WebSocketSettings()
    first = routes[0][1].router.settings
    conflicts = []
    for name in SERVER_SETTINGS:
        by_value: dict[Any, list[str]] = {}
        for path, route in routes:
            by_value.setdefault(getattr(route.router.settings, name), []).append(path)
        if len(by_value) > 1:
            conflicts.append(
                f"{name}: "
                + ", ".join(f"{value!r} at {', '.join(paths)}" for value, paths in by_value.items())
            )
    if conflicts:
        raise ConfigurationError(
            "the WebSocket routers in this app disagree on settings one server applies to "
            f"every connection ({'; '.join(conflicts)}): give them the same values (share one "
            "WebSocketSettings), or pass settings= to run()/uvicorn_settings()"
        )
    return first


def _event_routes(app: Any) -> list[tuple[str, EventRoute]]:
    """The event routes of ``app``, looking through middleware that wraps it as ``.app``."""
    from .routing import event_routes_of

    for _ in range(_MAX_WRAPPERS):
        if hasattr(app, "routes"):
            return event_routes_of(app)
        app = getattr(app, "app", None)
        if app is None:
            break
    return []
