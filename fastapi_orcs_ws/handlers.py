"""Turning handler functions into typed, validated callables.

A handler is called as the spec calls it, ``handler(ws, payload)``. Its signature says what
else it wants:

- ``payload`` (by name, or the second parameter; ``connect`` has none): the event's payload,
  validated against the annotation;
- the first parameter when unannotated, or any parameter annotated ``Connection``,
  ``WebSocketManager``, ``WebSocket`` or ``HTTPConnection``: injected;
- every other parameter is FastAPI's (``Depends``, ``Security``, ``Header``, ``Query``,
  ``Cookie``, ``Path``, plain query/path parameters), solved for each event by FastAPI's own
  machinery against the handshake request (see `fastapi_orcs_ws.dependencies`).

Everything is inspected once, at registration; a handler without FastAPI parameters never
touches the solver.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from pydantic import TypeAdapter, ValidationError
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from ._context import SCOPE_CONNECTION
from .connection import Connection
from .dependencies import EventDependencies, is_fastapi_parameter
from .errors import ConfigurationError
from .manager import WebSocketManager

__all__ = ["EventHandler", "InvalidPayload", "compile_handler", "get_connection"]

_EMPTY = inspect.Parameter.empty
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

# What an injected parameter receives.
_CONN, _PAYLOAD, _MANAGER, _WEBSOCKET = range(4)
_CONN_PAYLOAD = (_CONN, _PAYLOAD)


class InvalidPayload(Exception):
    """The client's payload failed validation (unlike a ValidationError inside a handler)."""

    def __init__(self, error: ValidationError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class EventHandler:
    """A compiled handler: what it validates and how it is called.

    ``await handler(conn, raw_payload)`` validates the payload (raising
    `InvalidPayload`), solves the FastAPI parameters if it has any, calls the handler
    (a sync one in a worker thread) and returns its result. ``HTTPException``,
    ``WebSocketException`` and FastAPI's ``WebSocketRequestValidationError`` propagate.
    """

    event: str
    func: Callable[..., Any]
    payload_type: Any
    """The payload annotation, or ``None`` when the payload is passed through."""
    adapter: TypeAdapter[Any] | None
    dependencies: EventDependencies | None
    """The FastAPI parameters, or ``None`` when there are none (the solver is never used)."""
    is_async: bool
    positional: tuple[int, ...]
    """Injected values passed by position, in order."""
    keywords: tuple[tuple[str, int], ...]
    """Injected values passed by name."""
    direct: bool = False
    """An ``async def`` handler without FastAPI parameters: `start` calls it directly."""
    plain: bool = False
    """A `direct` handler taking ``(conn, payload)`` with the payload passed through
    (``Any``/unannotated): the session calls ``func(conn, payload)`` itself."""

    def start(self, conn: Connection, raw_payload: Any) -> Awaitable[Any]:
        """What ``await handler(conn, raw_payload)`` awaits, without a coroutine of its own
        for a ``direct`` handler (most handlers): the payload is validated here (raising
        `InvalidPayload`) and the handler's own coroutine is returned."""
        if not self.direct:
            return self(conn, raw_payload)
        payload = raw_payload if self.adapter is None else self._validated(raw_payload)
        if self.positional == _CONN_PAYLOAD and not self.keywords:
            return self.func(conn, payload)  # type: ignore[no-any-return]
        args, kwargs = self._arguments(conn, payload)
        return self.func(*args, **kwargs)  # type: ignore[no-any-return]

    async def __call__(self, conn: Connection, raw_payload: Any) -> Any:
        payload = raw_payload if self.adapter is None else self._validated(raw_payload)
        args, kwargs = self._arguments(conn, payload)
        if self.dependencies is None:
            if self.is_async:
                return await self.func(*args, **kwargs)
            return await anyio.to_thread.run_sync(functools.partial(self.func, *args, **kwargs))
        return await self._call_solved(conn, args, kwargs)

    def _validated(self, raw_payload: Any) -> Any:
        """The payload as the handler's annotation wants it, or raise `InvalidPayload`."""
        assert self.adapter is not None
        try:
            return self.adapter.validate_python(raw_payload)
        except ValidationError as exc:
            raise InvalidPayload(exc) from None

    def _arguments(self, conn: Connection, payload: Any) -> tuple[list[Any], dict[str, Any]]:
        # The hot path (every message of every client): no per-kind function calls.
        args = [
            conn if kind == _CONN else payload if kind == _PAYLOAD else _value(kind, conn)
            for kind in self.positional
        ]
        return args, {name: _value(kind, conn, payload) for name, kind in self.keywords}

    async def _call_solved(self, conn: Connection, args: list[Any], kwargs: dict[str, Any]) -> Any:
        assert self.dependencies is not None
        returned = False
        raised: BaseException | None = None
        # The order FastAPI uses: "request"-scoped yield dependencies close last.
        async with AsyncExitStack() as request_stack, AsyncExitStack() as function_stack:
            kwargs.update(await self.dependencies.solve(conn, request_stack, function_stack))
            try:
                if self.is_async:
                    result = await self.func(*args, **kwargs)
                else:
                    call = functools.partial(self.func, *args, **kwargs)
                    result = await anyio.to_thread.run_sync(call)
            except BaseException as exc:
                raised = exc
                raise
            returned = True
        if not returned:
            # A yield dependency caught the handler's exception and did not re-raise it.
            raise RuntimeError(
                f"{self.dependencies.label}: a dependency with yield swallowed the exception "
                "the handler raised; re-raise it in the dependency's except block"
            ) from raised
        return result


def _value(kind: int, conn: Connection, payload: Any = None) -> Any:
    if kind == _PAYLOAD:
        return payload
    if kind == _CONN:
        return conn
    if kind == _MANAGER:
        return conn.data.manager
    return conn.websocket


def compile_handler(event: str, func: Callable[..., Any], *, path: str = "") -> EventHandler:
    """Inspect ``func`` once, at registration, so nothing is inspected per message.

    Args:
        event: the event name; ``connect`` handlers take no payload.
        func: the handler, ``async def`` or plain ``def``.
        path: the route's path (e.g. ``"/ws/{room}"``), for FastAPI's path parameters.

    Raises:
        ConfigurationError: a parameter cannot be supplied to a WebSocket event (an HTTP body,
            ``Form``, ``File``, ``Request``, ``Response``, ``BackgroundTasks``), the payload
            type is not one pydantic validates, or the signature cannot be read.
    """
    label = f"handler {_name(func)!r} for event {event!r}"
    if not callable(func):
        raise ConfigurationError(f"{label} is not callable")
    try:
        # As FastAPI reads signatures: string annotations resolved, Annotated extras kept.
        signature = inspect.signature(func, eval_str=True)
    except (NameError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot read the signature of {label}: {exc} (annotations must name things "
            "defined at module level)"
        ) from exc
    positional: list[int] = []
    keywords: list[tuple[str, int]] = []
    fastapi_params: list[inspect.Parameter] = []
    payload_type: Any = None
    index = -1
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        index += 1
        annotation = param.annotation
        kind: int | None
        if is_fastapi_parameter(annotation, param.default):
            kind = None
        elif _is(annotation, Connection):
            kind = _CONN
        elif _is(annotation, WebSocketManager):
            kind = _MANAGER
        elif _is(annotation, WebSocket) or _is(annotation, HTTPConnection):
            kind = _WEBSOCKET
        elif event != "connect" and (param.name == "payload" or index == 1):
            kind = _PAYLOAD
            payload_type = annotation
        elif index == 0 and annotation is _EMPTY:
            kind = _CONN
        else:
            kind = None
        if kind is None:
            if param.kind is param.POSITIONAL_ONLY:
                raise ConfigurationError(
                    f"{label}: FastAPI passes parameter {param.name!r} by name, so it cannot be "
                    "positional-only; make it a normal parameter"
                )
            fastapi_params.append(param)
        elif param.kind in _POSITIONAL and len(positional) == index:
            positional.append(kind)
        elif param.kind is param.POSITIONAL_ONLY:
            raise ConfigurationError(
                f"{label}: positional-only parameter {param.name!r} comes after a FastAPI "
                "parameter, so it cannot be passed; make it a normal parameter"
            )
        else:
            keywords.append((param.name, kind))
    if payload_type in (_EMPTY, Any, object):
        payload_type = None
    try:
        adapter = TypeAdapter(payload_type) if payload_type is not None else None
    except Exception as exc:  # any type pydantic cannot build a validator for
        raise ConfigurationError(f"{label}: payload type {payload_type!r}: {exc}") from exc
    dependencies = (
        EventDependencies(fastapi_params, path=path, label=label) if fastapi_params else None
    )
    is_async = _is_async(func)
    return EventHandler(
        event=event,
        func=func,
        payload_type=payload_type,
        adapter=adapter,
        dependencies=dependencies,
        is_async=is_async,
        positional=tuple(positional),
        keywords=tuple(keywords),
        direct=is_async and dependencies is None,
        plain=(
            is_async
            and dependencies is None
            and adapter is None
            and tuple(positional) == _CONN_PAYLOAD
            and not keywords
        ),
    )


def get_connection(conn: HTTPConnection) -> Connection:
    """FastAPI dependency: the `Connection` an event came from.

    Handlers get the connection by annotating a parameter ``Connection``; their FastAPI
    dependencies cannot (FastAPI would read such a parameter from a request body), so they
    ask for it through this function:

    ```python
    async def current_room(ws: Annotated[Connection, Depends(get_connection)]) -> str:
        return ws.data.state["room"]
    ```

    Raises:
        ConfigurationError: used outside an event handler's dependencies (in an HTTP route).
    """
    live = conn.scope.get(SCOPE_CONNECTION)
    if not isinstance(live, Connection):
        raise ConfigurationError(
            "get_connection works only in event handlers and their dependencies"
        )
    return live


def _is(annotation: Any, cls: type) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, cls)


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - a callable object's own method
    return not inspect.isfunction(func) and inspect.iscoroutinefunction(call)


def _name(func: Any) -> str:
    return str(getattr(func, "__qualname__", None) or repr(func))
