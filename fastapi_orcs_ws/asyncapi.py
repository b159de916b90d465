"""The generated AsyncAPI 3.0 document of an app's event routes, and an offline docs page.

FastAPI's OpenAPI document leaves WebSockets out. :func:`asyncapi_document` describes
every event route instead: one channel per route (its address is the full path), one
message per event with the JSON Schema of its payload type, ``receive`` operations for
what clients send, ``send`` operations for what the server emits, acknowledgements as
operation replies, and the route's authentication. :func:`mount_docs` serves it as JSON
and as a self-contained HTML page that needs no network.

Example:
    ```python
    app = FastAPI()
    app.include_router(router)
    mount_docs(app)  # /asyncapi.json and /ws-docs, linked from /docs
    ```
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, get_type_hints

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ._schema_examples import example_for
from .errors import ConfigurationError
from .protocol import ErrorCode
from .routing import LIFECYCLE_EVENTS, EventRoute, event_routes_of

__all__ = ["add_docs_routes", "add_openapi_link", "asyncapi_document", "mount_docs", "render_page"]

ASYNCAPI_VERSION = "3.0.0"
SCHEMA_REF = "#/components/schemas/{model}"

Schema = dict[str, Any]
_NO_TYPE = object()
"""Sentinel for "no annotation": the schema is ``{}`` (any JSON value)."""


class ValidationIssue(BaseModel):
    """One problem with a payload, as reported in `validation_error`."""

    loc: list[str | int] = Field(examples=[["room"]])
    msg: str = Field(examples=["String should have at least 1 character"])
    type: str = Field(examples=["string_too_short"])


class ErrorPayload(BaseModel):
    """The payload of an `error` event."""

    model_config = ConfigDict(extra="allow", title="ErrorPayload", use_attribute_docstrings=True)

    message: str = Field(examples=["invalid payload for 'join': room: Field required"])
    code: str = Field(examples=[ErrorCode.VALIDATION_ERROR.value])
    """One of the library's codes (see `ErrorCode`) or one chosen by the app."""
    event: str | None = None
    """The event that failed, when the error answers one."""
    errors: list[ValidationIssue] | None = None
    """For ``validation_error``: every problem found, without echoing the input."""


# -- the document -------------------------------------------------------------------------


def asyncapi_document(
    app: FastAPI, *, title: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """Build the AsyncAPI 3.0.0 document of every event route mounted in ``app``.

    ``title`` and ``version`` default to the app's own.

    Example:
        ```python
        doc = asyncapi_document(app)
        doc["channels"]["ws_chat"]["address"]  # "/ws/chat"
        ```
    """
    builder = _Builder()
    for path, route in event_routes_of(app):
        builder.add_route(path, route)
    return builder.document(
        title=title or app.title or "WebSocket API",
        version=version or app.version or "0.1.0",
    )


@dataclass
class _Message:
    key: str
    """The message's key in its channel (``client.join``, ``server.ack.join``...)."""
    event: str
    direction: str
    """``"client"`` (sent by clients) or ``"server"``."""
    payload_type: Any
    mode: str
    title: str
    description: str | None = None
    ack: bool = False


@dataclass
class _Channel:
    id: str
    path: str
    route: EventRoute
    auth: tuple[bool, bool]
    """``(enabled, required)``."""
    messages: list[_Message] = field(default_factory=list)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Builder:
    def __init__(self) -> None:
        self.channels: list[_Channel] = []
        self.security_needed = False

    def add_route(self, path: str, route: EventRoute) -> None:
        enabled, required = _auth_of(route)
        channel_id = _unique(_key(path.strip("/") or "root"), {c.id for c in self.channels})
        channel = _Channel(channel_id, path, route, auth=(enabled, required))
        self.channels.append(channel)
        self.security_needed = self.security_needed or enabled
        security = _security_refs() if enabled else None

        for event in _client_events(route):
            handler = route.handler_for(event)
            assert handler is not None
            doc = _docstring(handler.func)
            payload_type = handler.payload_type if handler.payload_type is not None else _NO_TYPE
            key = f"client.{_key(event)}"
            channel.messages.append(
                _Message(
                    key,
                    event,
                    "client",
                    payload_type,
                    "validation",
                    title=f"{event} (client → server)",
                    description=doc,
                )
            )
            ack_key = f"server.ack.{_key(event)}"
            channel.messages.append(
                _Message(
                    ack_key,
                    "ack",
                    "server",
                    _return_type(handler.func),
                    "serialization",
                    title=f"ack of {event} (server → client)",
                    description=f'Sent when the `{event}` envelope carried an "id".',
                    ack=True,
                )
            )
            operation: dict[str, Any] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel.id}"},
                "title": event,
                "messages": [_channel_message_ref(channel.id, key)],
                "reply": {
                    "channel": {"$ref": f"#/channels/{channel.id}"},
                    "messages": [
                        _channel_message_ref(channel.id, ack_key),
                        _channel_message_ref(channel.id, "server.error"),
                    ],
                },
            }
            if doc:
                operation["description"] = doc
            if security:
                operation["security"] = security
            channel.operations[f"{channel.id}.receive.{_key(event)}"] = operation

        for event, payload_type in route.emits.items():
            key = f"server.{_key(event)}"
            channel.messages.append(
                _Message(
                    key,
                    event,
                    "server",
                    payload_type,
                    "serialization",
                    title=f"{event} (server → client)",
                )
            )
            channel.operations[f"{channel.id}.send.{_key(event)}"] = _send_operation(
                channel.id, key, event, security
            )
        channel.messages.append(
            _Message(
                "server.error",
                "error",
                "server",
                ErrorPayload,
                "serialization",
                title="error (server → client)",
                description="A request failed; the connection stays open. Codes: "
                + ", ".join(f"`{code.value}`" for code in ErrorCode)
                + ".",
            )
        )
        channel.operations[f"{channel.id}.send.error"] = _send_operation(
            channel.id, "server.error", "error", security
        )

    def document(self, *, title: str, version: str) -> dict[str, Any]:
        schemas, definitions = _schemas(
            (id(m), m.mode, m.payload_type) for c in self.channels for m in c.messages
        )
        channels: dict[str, Any] = {}
        operations: dict[str, Any] = {}
        messages: dict[str, Any] = {}
        for channel in self.channels:
            enabled, required = channel.auth
            body: dict[str, Any] = {"address": _address(channel.path), "messages": {}}
            if channel.route.summary:
                body["title"] = channel.route.summary
            if channel.route.description:
                body["description"] = channel.route.description
            parameters = _parameters(channel.path)
            if parameters:
                body["parameters"] = parameters
            body["x-auth"] = {"enabled": enabled, "required": required}
            if enabled:
                body["bindings"] = {"ws": _ws_binding()}
            for message in channel.messages:
                component = f"{channel.id}.{message.key}"
                payload_schema = schemas[id(message)]
                messages[component] = _message_object(message, payload_schema, definitions)
                body["messages"][message.key] = {"$ref": f"#/components/messages/{component}"}
            channels[channel.id] = body
            operations.update(channel.operations)
        components: dict[str, Any] = {"schemas": definitions, "messages": messages}
        if self.security_needed:
            components["securitySchemes"] = _SECURITY_SCHEMES
        return {
            "asyncapi": ASYNCAPI_VERSION,
            "info": {"title": title, "version": version, "description": _INFO_DESCRIPTION},
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": components,
        }


_INFO_DESCRIPTION = (
    'Every frame is a JSON text frame `{"event": name, "payload": value}`. A client may add '
    '`"id"` (a string or an integer) to an event: the handler\'s return value then comes back '
    'as `{"event": "ack", "id": ..., "payload": ...}`, or an `error` event carrying that '
    "id."
)

_SUBPROTOCOL_NOTE = (
    'Browsers cannot set headers: offer the subprotocols `["token", <jwt>]` instead '
    "(`Sec-WebSocket-Protocol: token, <jwt>`); the server selects `token` and never echoes "
    "the token."
)

_SECURITY_SCHEMES: dict[str, Any] = {
    "queryToken": {
        "type": "httpApiKey",
        "name": "token",
        "in": "query",
        "description": "A JWT in the query string: `?token=<jwt>`. Query strings end up in "
        "logs; prefer the header or the subprotocol.",
    },
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "`Authorization: Bearer <jwt>` on the handshake request.",
    },
    "subprotocolToken": {
        "type": "httpApiKey",
        "name": "Sec-WebSocket-Protocol",
        "in": "header",
        "description": _SUBPROTOCOL_NOTE,
    },
}


def _security_refs() -> list[dict[str, str]]:
    return [{"$ref": f"#/components/securitySchemes/{name}"} for name in _SECURITY_SCHEMES]


def _ws_binding() -> dict[str, Any]:
    # The query parameter is one of three ways to present a token, so never "required" here.
    return {
        "method": "GET",
        "query": {
            "type": "object",
            "properties": {"token": {"type": "string", "description": "A JWT."}},
        },
        "bindingVersion": "0.1.0",
    }


def _send_operation(
    channel_id: str, key: str, event: str, security: list[dict[str, str]] | None
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{channel_id}"},
        "title": event,
        "messages": [_channel_message_ref(channel_id, key)],
    }
    if security:
        operation["security"] = security
    return operation


def _channel_message_ref(channel_id: str, key: str) -> dict[str, str]:
    return {"$ref": f"#/channels/{channel_id}/messages/{key}"}


def _message_object(message: _Message, payload: Schema, definitions: Schema) -> dict[str, Any]:
    envelope = _envelope(message, payload)
    body: dict[str, Any] = {
        "name": message.event,
        "title": message.title,
        "contentType": "application/json",
        "payload": envelope,
        "x-direction": "client-to-server" if message.direction == "client" else "server-to-client",
    }
    if message.description:
        body["description"] = message.description
        first_line = message.description.splitlines()[0]
        if first_line != message.description:
            body["summary"] = first_line
    example: dict[str, Any] = {"event": message.event}
    if message.ack:
        example["id"] = 1
    example["payload"] = example_for(payload, definitions)
    body["examples"] = [{"name": "example", "payload": example}]
    return body


def _envelope(message: _Message, payload: Schema) -> Schema:
    msg_id: Schema = {"type": ["string", "integer"]}
    properties: dict[str, Any] = {"event": {"type": "string", "const": message.event}}
    required = ["event"]
    properties["payload"] = payload
    if message.direction == "server":
        required.append("payload")
    if message.ack:
        msg_id["description"] = "The id the client sent with the event."
        required.append("id")
    else:
        msg_id["description"] = (
            "Ask for an acknowledgement."
            if message.direction == "client"
            else "Present on an error that answers an event sent with an id."
        )
    if message.direction == "client" or message.event == "error" or message.ack:
        properties["id"] = msg_id
    return {"type": "object", "properties": properties, "required": required}


def _schemas(
    items: Iterable[tuple[int, str, Any]],
) -> tuple[dict[int, Schema], Schema]:
    """JSON Schemas of every payload type; shared models go to ``components/schemas``."""
    inputs = []
    fixed: dict[int, Schema] = {}
    for key, mode, payload_type in items:
        if payload_type is _NO_TYPE:
            fixed[key] = {"description": "Any JSON value."}
            continue
        try:
            adapter = TypeAdapter(payload_type)
            adapter.json_schema(mode=mode)  # type: ignore[arg-type]
        except Exception:  # pydantic validates it but has no JSON Schema for it
            fixed[key] = {"description": f"Any JSON value ({_type_name(payload_type)})."}
            continue
        inputs.append((key, mode, adapter))
    mapping, top = TypeAdapter.json_schemas(inputs, ref_template=SCHEMA_REF)  # type: ignore[arg-type]
    schemas = {key: schema for (key, _), schema in mapping.items()}
    schemas.update(fixed)
    return schemas, dict(top.get("$defs", {}))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _return_type(func: Callable[..., Any]) -> Any:
    target = func if inspect.isfunction(func) or inspect.ismethod(func) else type(func).__call__
    try:
        hints = get_type_hints(target)
    except Exception:  # unresolvable annotations: document "any"
        return _NO_TYPE
    if "return" not in hints:
        return _NO_TYPE
    return hints["return"]


def _auth_of(route: EventRoute) -> tuple[bool, bool]:
    """``(enabled, required)`` for the route, after the router's and the settings' defaults."""
    router = route.router
    try:
        effective = router.authenticator.for_route(route.auth)
    except ConfigurationError:  # required without a key: the route will refuse to start
        return True, True
    return bool(effective.enabled), bool(effective.required)


def _client_events(route: EventRoute) -> list[str]:
    names = [e for e in route.handlers if e not in LIFECYCLE_EVENTS]
    names += [e for e in route.manager.handlers if e not in LIFECYCLE_EVENTS and e not in names]
    return names


def _docstring(func: Callable[..., Any]) -> str | None:
    return inspect.getdoc(func) or None


_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def _address(path: str) -> str:
    return _PARAM.sub(r"{\1}", path)


def _parameters(path: str) -> dict[str, Any]:
    return {name: {"description": f"The `{name}` path parameter."} for name in _PARAM.findall(path)}


def _key(name: str) -> str:
    return re.sub(r"[^\w.\-]", "_", name)


def _unique(key: str, taken: set[str]) -> str:
    candidate, n = key, 2
    while candidate in taken:
        candidate, n = f"{key}_{n}", n + 1
    return candidate


# -- serving -------------------------------------------------------------------------------


def mount_docs(
    app: FastAPI,
    *,
    asyncapi_url: str | None = "/asyncapi.json",
    docs_url: str | None = "/ws-docs",
    link_from_openapi: bool = True,
) -> None:
    """Serve the AsyncAPI document and an offline HTML page describing every event route.

    The document is built on the first request (so routes added later are included) and
    cached. Pass ``None`` for a URL to leave that route out. With ``link_from_openapi``,
    the app's description gets a link to the page, so FastAPI's ``/docs`` points at it.

    Example:
        ```python
        app = FastAPI()
        app.include_router(router)
        mount_docs(app)  # /asyncapi.json and /ws-docs
        ```
    """
    add_docs_routes(app, asyncapi_url=asyncapi_url, docs_url=docs_url)
    if link_from_openapi and (docs_url or asyncapi_url):
        add_openapi_link(app, docs_url, asyncapi_url)


def add_docs_routes(
    target: FastAPI | APIRouter,
    *,
    asyncapi_url: str | None = "/asyncapi.json",
    docs_url: str | None = "/ws-docs",
) -> dict[str, Callable[..., Any]]:
    """Add the two GET routes to an app or a router; they describe the app serving them.

    Returns their endpoints, by ``"asyncapi"`` and ``"docs"``.

    :class:`~fastapi_orcs_ws.WebSocketRouter` calls this for itself, so the docs come
    with the router; :func:`mount_docs` calls it on an app.
    """
    endpoints: dict[str, Callable[..., Any]] = {}
    if asyncapi_url is not None:

        async def asyncapi_json(request: Request) -> JSONResponse:
            return JSONResponse(_document_of(request.app))

        target.add_api_route(asyncapi_url, asyncapi_json, methods=["GET"], include_in_schema=False)
        endpoints["asyncapi"] = asyncapi_json

    if docs_url is not None:

        async def ws_docs(request: Request) -> HTMLResponse:
            cache = _cache_of(request.app)
            key = f"page {asyncapi_url} {docs_url}"
            if key not in cache:
                page = render_page(
                    _document_of(request.app), asyncapi_url=asyncapi_url, docs_url=docs_url
                )
                cache[key] = page
            return HTMLResponse(cache[key])

        target.add_api_route(docs_url, ws_docs, methods=["GET"], include_in_schema=False)
        endpoints["docs"] = ws_docs
    return endpoints


def _cache_of(app: Any) -> dict[str, Any]:
    # Built on the first request (so routes added after the router are listed), then kept.
    state = app.state
    cache: dict[str, Any] | None = getattr(state, "fastapi_orcs_ws_docs", None)
    if cache is None:
        cache = {}
        state.fastapi_orcs_ws_docs = cache
    return cache


def _document_of(app: Any) -> dict[str, Any]:
    cache = _cache_of(app)
    if "document" not in cache:
        cache["document"] = asyncapi_document(app)
    return cache["document"]  # type: ignore[no-any-return]


def add_openapi_link(app: FastAPI, docs_url: str | None, asyncapi_url: str | None) -> None:
    """Add links to the event docs to the app's description (so FastAPI's ``/docs`` shows them)."""
    root = app.root_path.rstrip("/")
    links = []
    if docs_url is not None:
        links.append(f"[WebSocket events]({root}{docs_url})")
    if asyncapi_url is not None:
        links.append(f"[AsyncAPI document]({root}{asyncapi_url})")
    line = "WebSocket API: " + " · ".join(links)
    if line in (app.description or ""):
        return
    app.description = f"{app.description}\n\n{line}" if app.description else line
    app.openapi_schema = None  # rebuilt with the new description on the next /openapi.json


def render_page(
    document: dict[str, Any], *, asyncapi_url: str | None = None, docs_url: str | None = None
) -> str:
    """The self-contained HTML page for ``document`` (inline CSS and JS, no network)."""
    template = resources.files(__package__).joinpath("static/ws-docs.html").read_text("utf-8")
    data = _script_json(document)
    title = str(document.get("info", {}).get("title", "WebSocket API"))
    return (
        template.replace("{{TITLE}}", _html_escape(title))
        .replace("{{ASYNCAPI_URL}}", _script_json(asyncapi_url))
        .replace("{{DOCS_URL}}", _script_json(docs_url))
        .replace("{{DOCUMENT}}", data)
    )


def _script_json(value: Any) -> str:
    # "<" escaped so no string in the document can close the <script> element.
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
