"""Turning handler functions into typed, validated callables.

A handler is called as the spec calls it, ``handler(ws, payload)``. Its signature
says what else it wants: a ``payload`` annotation is the schema it is validated
against; parameters typed ``Connection``, ``WebSocketManager`` or ``WebSocket`` are
injected; ``Depends(...)`` parameters are resolved per event, like FastAPI's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import anyio.to_thread
from fastapi.params import Depends
from pydantic import TypeAdapter, ValidationError
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from .connection import Connection
from .errors import ConfigurationError
from .manager import WebSocketManager

__all__ = ["EventHandler", "compile_handler"]

_EMPTY = inspect.Parameter.empty

# How each parameter is filled: a tag, plus the dependency for "depends".
_CONN, _PAYLOAD, _MANAGER, _WEBSOCKET, _DEPENDS, _DEFAULT = range(6)
_Param = tuple[str, int, Any]


class InvalidPayload(Exception):
    """The client's payload failed validation (unlike a ValidationError inside a handler)."""

    def __init__(self, error: ValidationError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class _Compiled:
    func: Callable[..., Any]
    params: list[_Param]
    is_async: bool
    is_gen: bool
    is_async_gen: bool
    use_cache: bool = True


@dataclass(slots=True)
class EventHandler:
    """A compiled handler: what it validates and how it is called."""

    event: str
    func: Callable[..., Any]
    payload_type: Any
    """The payload annotation, or ``None`` when the payload is passed through."""
    adapter: TypeAdapter[Any] | None
    compiled: _Compiled

    async def __call__(self, conn: Connection, raw_payload: Any) -> Any:
        payload = raw_payload
        if self.adapter is not None:
            try:
                payload = self.adapter.validate_python(raw_payload)
            except ValidationError as exc:
                raise InvalidPayload(exc) from None
        if not self.compiled.params or all(p[1] in (_CONN, _PAYLOAD) for p in self.compiled.params):
            # Fast path: no dependencies to solve.
            args = {
                name: conn if kind == _CONN else payload for name, kind, _ in self.compiled.params
            }
            if self.compiled.is_async:
                return await self.func(**args)
            return await anyio.to_thread.run_sync(lambda: self.func(**args))
        async with AsyncExitStack() as stack:
            return await _call(self.compiled, conn, payload, stack, {})


def compile_handler(event: str, func: Callable[..., Any]) -> EventHandler:
    """Inspect ``func`` once, at registration, so nothing is inspected per message."""
    if not callable(func):
        raise ConfigurationError(f"handler for {event!r} is not callable: {func!r}")
    compiled = _compile(func, is_handler=True)
    payload_type = next((ann for _, kind, ann in compiled.params if kind == _PAYLOAD), None)
    if payload_type in (_EMPTY, Any, object):
        payload_type = None
    try:
        adapter = TypeAdapter(payload_type) if payload_type is not None else None
    except Exception as exc:  # a type pydantic cannot validate
        raise ConfigurationError(f"payload type of {event!r} handler: {exc}") from exc
    return EventHandler(event, func, payload_type, adapter, compiled)


_cache: dict[Any, _Compiled] = {}


def _compile(func: Callable[..., Any], *, is_handler: bool = False) -> _Compiled:
    if not is_handler and func in _cache:
        return _cache[func]
    # A callable object's hints and async-ness live on its __call__ method.
    target: Any = func
    if not (inspect.isfunction(func) or inspect.ismethod(func)):
        target = type(func).__call__
    try:
        sig = inspect.signature(func)
        hints = get_type_hints(target, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigurationError(f"cannot inspect {func!r}: {exc}") from exc
    params: list[_Param] = []
    positional_seen = 0
    for name, param in sig.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(name, _EMPTY)
        depends = param.default if isinstance(param.default, Depends) else None
        if get_origin(annotation) is Annotated:
            base, *meta = get_args(annotation)
            for item in meta:
                if isinstance(item, Depends):
                    depends = item
            if depends is not None:
                annotation = base
        if depends is not None:
            dep = depends.dependency or annotation
            params.append((name, _DEPENDS, (dep, depends.use_cache)))
        elif _is(annotation, Connection):
            params.append((name, _CONN, None))
        elif _is(annotation, WebSocketManager):
            params.append((name, _MANAGER, None))
        elif _is(annotation, WebSocket) or _is(annotation, HTTPConnection):
            params.append((name, _WEBSOCKET, None))
        elif is_handler and (name == "payload" or positional_seen == 1):
            params.append((name, _PAYLOAD, annotation))
        elif is_handler and positional_seen == 0 and annotation is _EMPTY:
            params.append((name, _CONN, None))
        elif param.default is not _EMPTY:
            params.append((name, _DEFAULT, param.default))
        else:
            raise ConfigurationError(
                f"{getattr(func, '__qualname__', func)!r}: cannot supply parameter {name!r}; "
                "handlers take (ws, payload), injected Connection/WebSocketManager/WebSocket, "
                "or Depends(...)"
            )
        positional_seen += 1
    compiled = _Compiled(
        func=func,
        params=params,
        is_async=inspect.iscoroutinefunction(target),
        is_gen=inspect.isgeneratorfunction(target),
        is_async_gen=inspect.isasyncgenfunction(target),
    )
    if not is_handler:
        _cache[func] = compiled
    return compiled


def _is(annotation: Any, cls: type) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, cls)


async def _call(
    compiled: _Compiled,
    conn: Connection,
    payload: Any,
    stack: AsyncExitStack,
    cache: dict[Any, Any],
) -> Any:
    args: dict[str, Any] = {}
    for name, kind, extra in compiled.params:
        if kind == _CONN:
            args[name] = conn
        elif kind == _PAYLOAD:
            args[name] = payload
        elif kind == _MANAGER:
            args[name] = conn.data.manager
        elif kind == _WEBSOCKET:
            args[name] = conn.websocket
        elif kind == _DEFAULT:
            args[name] = extra
        else:
            dep, use_cache = extra
            overrides = getattr(conn.websocket.scope.get("app"), "dependency_overrides", None)
            if overrides:
                dep = overrides.get(dep, dep)
            if use_cache and dep in cache:
                args[name] = cache[dep]
                continue
            value = await _solve(_compile(dep), conn, payload, stack, cache)
            cache[dep] = value
            args[name] = value
    func = compiled.func
    if compiled.is_async:
        return await func(**args)
    return await anyio.to_thread.run_sync(lambda: func(**args))


async def _solve(
    compiled: _Compiled,
    conn: Connection,
    payload: Any,
    stack: AsyncExitStack,
    cache: dict[Any, Any],
) -> Any:
    if compiled.is_async_gen or compiled.is_gen:
        # A dependency with `yield`: its clean-up runs after the handler, as in FastAPI.
        factory = asynccontextmanager if compiled.is_async_gen else contextmanager
        inner = _Compiled(compiled.func, compiled.params, True, False, False)

        async def resolve_args() -> dict[str, Any]:
            captured: dict[str, Any] = {}

            async def grab(**kw: Any) -> None:
                captured.update(kw)

            grabber = _Compiled(grab, inner.params, True, False, False)
            await _call(grabber, conn, payload, stack, cache)
            return captured

        kwargs = await resolve_args()
        cm = factory(compiled.func)(**kwargs)
        if compiled.is_async_gen:
            return await stack.enter_async_context(cm)  # type: ignore[arg-type]
        return stack.enter_context(cm)  # type: ignore[arg-type]
    return await _call(compiled, conn, payload, stack, cache)
