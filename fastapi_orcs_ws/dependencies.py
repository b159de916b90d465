"""FastAPI's own dependency machinery, applied to WebSocket events.

FastAPI has no public API for solving a handler's dependencies outside one of its routes, so
this module is the one place that calls into ``fastapi.dependencies.utils``
(``get_dependant``, ``solve_dependencies``, ``request_params_to_args``), the way FastAPI's
own WebSocket route does and as FastStream's FastAPI integration does. Everything that
depends on FastAPI's version lives here; the test suite runs it against the lowest FastAPI
``pyproject.toml`` allows and the newest.

The request a handler's dependencies see is the connection's handshake: its headers, query
string, cookies and path parameters, and ``scope["app"]`` for ``dependency_overrides``.
Each event gets a fresh dependency cache and its own exit stacks, so ``yield`` dependencies
are set up and cleaned up around each handler call, as around an HTTP endpoint.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_origin

from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant, request_params_to_args, solve_dependencies
from fastapi.exceptions import WebSocketRequestValidationError
from fastapi.security import SecurityScopes
from starlette.background import BackgroundTasks
from starlette.datastructures import UploadFile
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import Message, Scope
from starlette.websockets import WebSocket, WebSocketState

from ._context import SCOPE_CONNECTION, SCOPE_MANAGER
from .connection import Connection
from .errors import ConfigurationError
from .manager import WebSocketManager

if TYPE_CHECKING:
    from .handlers import EventHandler

__all__ = ["EventDependencies", "is_fastapi_parameter", "validate_handshake"]

# Types FastAPI itself injects or refuses; a handler parameter annotated with one is FastAPI's.
_FASTAPI_TYPES = (SecurityScopes, Request, Response, BackgroundTasks)

# FastAPI's scope keys for the exit stacks of ``yield`` dependencies: ``fastapi_astack``
# (FastAPI < 0.121 reads the ``async_exit_stack`` argument instead) and, from 0.121, one
# stack per dependency scope ("request" and "function").
_REQUEST_STACK = "fastapi_inner_astack"
_FUNCTION_STACK = "fastapi_function_astack"
_LEGACY_STACK = "fastapi_astack"


def is_fastapi_parameter(annotation: Any, default: Any) -> bool:
    """Whether a handler parameter carries a FastAPI marker (``Depends``, ``Header``...).

    ``annotation`` is the resolved annotation (``Annotated`` extras kept), ``default`` the
    parameter's default (``inspect.Parameter.empty`` when it has none).
    """
    markers = (params.Depends, params.Param, params.Body)
    if isinstance(default, markers):
        return True
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        if any(isinstance(extra, markers) for extra in extras):
            return True
        annotation = base
    return isinstance(annotation, type) and issubclass(annotation, _FASTAPI_TYPES)


class EventDependencies:
    """The FastAPI parameters of one handler, compiled once at registration.

    Built from the handler's parameters that FastAPI supplies (``Depends``, ``Security``,
    ``Header``, ``Query``, ``Cookie``, ``Path``, and plain parameters FastAPI would read as
    query or path parameters). A parameter that only exists in HTTP (a body, ``Form``,
    ``File``, ``UploadFile``, ``Request``, ``Response``, ``BackgroundTasks``), anywhere in
    the dependency graph, raises [`ConfigurationError`][fastapi_orcs_ws.ConfigurationError] here.
    """

    __slots__ = ("dependant", "label")

    def __init__(self, parameters: list[inspect.Parameter], *, path: str, label: str) -> None:
        self.label = label

        def event_parameters(**values: Any) -> dict[str, Any]:  # pragma: no cover - never called
            return values

        # FastAPI reads the signature; only the parameters it supplies are on it.
        event_parameters.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]
        )
        path_format = compile_path(path)[1] if path else ""
        try:
            self.dependant = get_dependant(path=path_format, call=event_parameters)
        except NameError as exc:
            raise ConfigurationError(
                f"{label}: a dependency's annotation names something that is not defined at "
                f"module level ({exc}); FastAPI resolves annotations in the module's globals"
            ) from exc
        except Exception as exc:  # FastAPI's assertions and errors, re-raised as ours
            raise ConfigurationError(_cannot_build(label, event_parameters, exc)) from exc
        _refuse_http_only(self.dependant, label)

    async def solve(
        self, conn: Connection, request_stack: AsyncExitStack, function_stack: AsyncExitStack
    ) -> dict[str, Any]:
        """Solve for one event: the handler's FastAPI parameters by name.

        ``yield`` dependencies are entered on the given stacks, which the caller closes after
        the handler returns. Missing or invalid request parameters raise FastAPI's
        ``WebSocketRequestValidationError``; ``HTTPException``, ``WebSocketException`` and
        anything else a dependency raises propagate unchanged.
        """
        origin = conn.websocket
        shared = origin.scope
        if "state" not in shared:
            shared["state"] = {}  # so websocket.state is the connection's, not the event's
        scope = dict(shared)
        scope[_REQUEST_STACK] = scope[_LEGACY_STACK] = request_stack
        scope[_FUNCTION_STACK] = function_stack
        scope[SCOPE_CONNECTION] = conn
        scope[SCOPE_MANAGER] = conn.data.manager
        app = scope.get("app")
        solved = await solve_dependencies(
            request=_EventWebSocket(origin, scope),
            dependant=self.dependant,
            dependency_overrides_provider=app if _overrides_of(app) is not None else None,
            dependency_cache={},
            async_exit_stack=request_stack,
            embed_body_fields=False,
        )
        if solved.errors:
            raise WebSocketRequestValidationError(_unique(solved.errors))
        return solved.values

    def request_errors(self, websocket: HTTPConnection) -> list[dict[str, Any]]:
        """Errors in the handshake's path, query, header and cookie parameters (no call made)."""
        overrides = _overrides_of(websocket.scope.get("app"))
        errors: list[dict[str, Any]] = []
        for dependant in _walk(self.dependant, overrides):
            for fields, received in (
                (dependant.path_params, websocket.path_params),
                (dependant.query_params, websocket.query_params),
                (dependant.header_params, websocket.headers),
                (dependant.cookie_params, websocket.cookies),
            ):
                if fields:
                    errors.extend(request_params_to_args(fields, received)[1])
        return errors


async def validate_handshake(
    handlers: Iterable[EventHandler], websocket: WebSocket
) -> list[dict[str, Any]]:
    """Check a handshake against the request parameters every handler of a route needs.

    Validates the path, query, header and cookie parameters that the handlers (``connect``,
    ``disconnect`` and every event) and their dependencies declare, with the app's
    ``dependency_overrides`` applied, without calling any dependency. Call it before
    ``accept()``: a client missing a required header is refused at the handshake, not at
    its first event.

    Returns:
        FastAPI's validation error dicts (``{"type", "loc", "msg", "input", ...}``, as in
        ``RequestValidationError.errors()``), each distinct error once; empty when the
        handshake satisfies every handler. ``input`` may hold client-sent text.
    """
    errors: list[dict[str, Any]] = []
    for handler in handlers:
        if handler.dependencies is not None:
            errors.extend(handler.dependencies.request_errors(websocket))
    return _unique(errors)


class _EventWebSocket(WebSocket):
    """The handshake WebSocket as one event's dependencies see it.

    Its scope is a copy holding this event's exit stacks (FastAPI reads them from the scope),
    so events handled at the same time never share them; sending and receiving go through
    the connection's own socket and its state.
    """

    def __init__(self, origin: WebSocket, scope: Scope) -> None:
        HTTPConnection.__init__(self, scope)  # not WebSocket's: its state is the origin's
        self._origin = origin

    @property
    def client_state(self) -> WebSocketState:
        return self._origin.client_state

    @client_state.setter
    def client_state(self, value: WebSocketState) -> None:
        self._origin.client_state = value

    @property
    def application_state(self) -> WebSocketState:
        return self._origin.application_state

    @application_state.setter
    def application_state(self, value: WebSocketState) -> None:
        self._origin.application_state = value

    async def receive(self) -> Message:
        return await self._origin.receive()

    async def send(self, message: Message) -> None:
        await self._origin.send(message)


def _overrides_of(app: Any) -> dict[Any, Any] | None:
    overrides = getattr(app, "dependency_overrides", None)
    return overrides if isinstance(overrides, dict) else None


def _walk(dependant: Dependant, overrides: dict[Any, Any] | None) -> Iterator[Dependant]:
    """Every node of the graph, as ``solve_dependencies`` would visit it."""
    yield dependant
    for sub in dependant.dependencies:
        if overrides:
            call = overrides.get(sub.call, sub.call)
            if call is not sub.call and call is not None:
                sub = get_dependant(path=sub.path or "", call=call, name=sub.name)
        yield from _walk(sub, overrides)


def _unique(errors: list[Any]) -> list[Any]:
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for error in errors:
        key = (tuple(error.get("loc", ())), error.get("type"))
        if key not in seen:
            seen.add(key)
            unique.append(error)
    return unique


def _name(call: Callable[..., Any] | None) -> str:
    name = getattr(call, "__qualname__", None) or type(call).__qualname__
    return str(name)


def _refuse_http_only(root: Dependant, label: str) -> None:
    """Raise ConfigurationError for the first parameter only HTTP could supply."""
    for dependant in _walk(root, None):
        owner = "the handler" if dependant is root else f"its dependency {_name(dependant.call)!r}"
        if dependant.body_params:
            field = dependant.body_params[0]
            kind = type(field.field_info).__name__
            raise ConfigurationError(_body_message(label, field.name, owner, kind))
        for name, kind, advice in (
            (
                dependant.request_param_name,
                "Request",
                "ask for WebSocket or HTTPConnection instead (FastAPI's security classes "
                "accept a WebSocket from FastAPI 0.144 on)",
            ),
            (
                dependant.response_param_name,
                "Response",
                "an event has no HTTP response: return the ack's payload or send frames "
                "with ws.send()",
            ),
            (
                dependant.background_tasks_param_name,
                "BackgroundTasks",
                "they run after an HTTP response, which an event has not: start the work "
                "in a task of your own or do it in the handler",
            ),
        ):
            if name is not None:
                raise ConfigurationError(
                    f"{label}: parameter {name!r} of {owner} is a {kind}, which exists only "
                    f"for HTTP requests; {advice}"
                )


def _body_message(label: str, name: str, owner: str, kind: str) -> str:
    return (
        f"{label}: parameter {name!r} of {owner} would be read from an HTTP request body "
        f"({kind}), and a WebSocket event has none. Declare it as the handler's payload (the "
        "event's validated JSON), or read it from a Header, Query, Cookie or Path parameter "
        "of the handshake"
    )


def _cannot_build(label: str, root: Callable[..., Any], exc: Exception) -> str:
    found = _find_parameter(root, set())
    if found is None:
        return f"{label}: FastAPI cannot build its dependencies: {exc}"
    call, name, kind = found
    owner = "the handler" if call is root else f"its dependency {_name(call)!r}"
    if kind == "Form/File":
        # FastAPI asks for python-multipart as soon as it meets one, before any other check.
        return _body_message(label, name, owner, kind)
    getter = "get_connection" if kind == "Connection" else "get_manager"
    return (
        f"{label}: parameter {name!r} of {owner} is annotated {kind}, which FastAPI cannot "
        f"supply to a dependency (it would read it from a request body); ask for "
        f"`{name}: Annotated[{kind}, Depends({getter})]`"
    )


def _find_parameter(call: Any, seen: set[int]) -> tuple[Any, str, str] | None:
    """The first parameter in ``call``'s graph that FastAPI cannot build for an event (a
    Form, File or UploadFile; Connection or WebSocketManager by type), for the error message."""
    if id(call) in seen:
        return None
    seen.add(id(call))
    try:
        signature = inspect.signature(call, eval_str=True)
    except (NameError, TypeError, ValueError):
        return None
    for param in signature.parameters.values():
        annotation, default = param.annotation, param.default
        extras: tuple[Any, ...] = ()
        if get_origin(annotation) is Annotated:
            annotation, *rest = get_args(annotation)
            extras = tuple(rest)
        markers = (default, *extras)
        depends = [m for m in markers if isinstance(m, params.Depends)]
        if any(isinstance(m, params.Form) for m in markers) or _mentions(annotation, UploadFile):
            return call, param.name, "Form/File"
        if not depends:
            for cls in (Connection, WebSocketManager):
                if _mentions(annotation, cls):
                    return call, param.name, cls.__name__
        for marker in depends:
            found = _find_parameter(marker.dependency or annotation, seen)
            if found is not None:
                return found
    return None


def _mentions(annotation: Any, cls: type) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, cls):
        return True
    return any(_mentions(arg, cls) for arg in get_args(annotation))
