"""The AsyncAPI 3.0.0 document: servers, channels, messages, operations, components."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigurationError
from ..protocol import ErrorCode
from ..routing import LIFECYCLE_EVENTS, EventRoute, event_routes_of
from .examples import example_for
from .schemas import NO_TYPE, payload_schemas

__all__ = ["ErrorPayload", "ValidationIssue", "asyncapi_document"]

logger = logging.getLogger("fastapi_orcs_ws.asyncapi")

ASYNCAPI_VERSION = "3.0.0"

Schema = dict[str, Any]


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


def asyncapi_document(
    app: FastAPI,
    *,
    title: str | None = None,
    version: str | None = None,
    server_url: str | None = None,
) -> dict[str, Any]:
    """Build the AsyncAPI 3.0.0 document of every event route mounted in ``app``.

    ``title`` and ``version`` default to the app's own. ``server_url`` (``"wss://host/root"``
    or ``"https://host/root"``) fills ``servers``: its host, the protocol ``ws``/``wss``, and
    its path as the server's ``pathname`` (the ASGI ``root_path``, which channel addresses do
    not repeat). Without it the host is the server variable ``{host}`` and the pathname the
    app's ``root_path``; the served ``/asyncapi.json`` fills both from the request.

    Event names are turned into keys of ``[A-Za-z0-9._-]``; when two names of one route turn
    into the same key, both are kept (the second gets a ``_2`` suffix) and a WARNING on the
    ``fastapi_orcs_ws.asyncapi`` logger names them.

    Raises:
        ConfigurationError: ``server_url`` is not a ``ws``/``wss``/``http``/``https`` URL.

    Example:
        ```python
        doc = asyncapi_document(app, server_url="wss://chat.example.com")
        doc["channels"]["ws_chat"]["address"]  # "/ws/chat"
        ```
    """
    server = _server(server_url) if server_url is not None else _placeholder_server(app)
    return _with_server(_base_document(app, title=title, version=version), server)


def _base_document(
    app: FastAPI, *, title: str | None = None, version: str | None = None
) -> dict[str, Any]:
    builder = _Builder()
    for path, route in event_routes_of(app):
        builder.add_route(path, route)
    return builder.document(
        title=title or app.title or "WebSocket API",
        version=version or app.version or "0.1.0",
    )


def _with_server(document: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    first = {"asyncapi": document["asyncapi"], "info": document["info"]}
    return {**first, "servers": {"default": server}, **document}


def _server(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    protocol = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}.get(parts.scheme)
    if protocol is None or not parts.netloc:
        raise ConfigurationError(
            f"server_url {url!r}: expected ws://, wss://, http:// or https:// and a host"
        )
    server: dict[str, Any] = {"host": parts.netloc, "protocol": protocol}
    pathname = parts.path.rstrip("/")
    if pathname:
        server["pathname"] = pathname
    return server


def _placeholder_server(app: Any) -> dict[str, Any]:
    server: dict[str, Any] = {
        "host": "{host}",
        "protocol": "ws",
        "description": "Where the app is served; `wss` behind TLS.",
        "variables": {
            "host": {"default": "localhost:8000", "description": "The app's host and port."}
        },
    }
    root_path = str(getattr(app, "root_path", "") or "").rstrip("/")
    if root_path:
        server["pathname"] = root_path
    return server


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
    auth: dict[str, bool]
    """``x-auth``: ``enabled``, ``required``, ``verifiable`` (a token can be checked)."""
    messages: list[_Message] = field(default_factory=list)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)


_KEY_CHARS = re.compile(r"[^A-Za-z0-9._\-]")


def _key(name: str) -> str:
    """A key AsyncAPI accepts (``^[A-Za-z0-9._-]+$``): every other character becomes ``_``."""
    return _KEY_CHARS.sub("_", name) or "_"


class _Names:
    """Unique keys in one namespace; a name whose key is taken gets a suffix, loudly."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.owners: dict[str, str] = {}

    def claim(self, key: str, name: str) -> str:
        candidate, n = key, 2
        while candidate in self.owners:
            candidate, n = f"{key}_{n}", n + 1
        if candidate != key:
            logger.warning(
                "AsyncAPI: %s %s and %s both become the key %r; the second is listed as %r",
                self.kind,
                self.owners[key],
                name,
                key,
                candidate,
            )
        self.owners[candidate] = name
        return candidate


class _Builder:
    def __init__(self) -> None:
        self.channels: list[_Channel] = []
        self.channel_ids = _Names("routes")
        self.operation_ids = _Names("operations")
        self.message_ids = _Names("messages")
        self.security_needed = False

    def add_route(self, path: str, route: EventRoute) -> None:
        channel_id = self.channel_ids.claim(_key(path.strip("/") or "root"), repr(path))
        channel = _Channel(channel_id, path, route, auth=_auth_of(route))
        self.channels.append(channel)
        security = _security_refs() if channel.auth["verifiable"] else None
        self.security_needed = self.security_needed or security is not None
        client_keys = _Names(f"events of {path}:")
        server_keys = _Names(f"server events of {path}:")
        server_keys.claim("error", repr("error"))

        for event in _client_events(route):
            handler = route.handler_for(event)
            assert handler is not None
            name = client_keys.claim(_key(event), repr(event))
            doc = _docstring(handler.func)
            payload_type = handler.payload_type if handler.payload_type is not None else NO_TYPE
            key = f"client.{name}"
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
            ack_key = "server." + server_keys.claim(f"ack.{name}", f"the ack of {event!r}")
            channel.messages.append(
                _Message(
                    ack_key,
                    "ack",
                    "server",
                    _return_type(handler.func, event, path),
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
            self._operation(channel, f"{channel.id}.receive.{name}", operation)

        for event, payload_type in route.emits.items():
            name = server_keys.claim(_key(event), repr(event))
            key = f"server.{name}"
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
            self._operation(
                channel,
                f"{channel.id}.send.{name}",
                _send_operation(channel.id, key, event, security),
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
        self._operation(
            channel,
            f"{channel.id}.send.error",
            _send_operation(channel.id, "server.error", "error", security),
        )

    def _operation(self, channel: _Channel, key: str, operation: dict[str, Any]) -> None:
        channel.operations[self.operation_ids.claim(key, repr(key))] = operation

    def document(self, *, title: str, version: str) -> dict[str, Any]:
        schemas, definitions = payload_schemas(
            (id(m), m.mode, m.payload_type) for c in self.channels for m in c.messages
        )
        channels: dict[str, Any] = {}
        operations: dict[str, Any] = {}
        messages: dict[str, Any] = {}
        type_names: set[str] = set(definitions)  # envelope titles never shadow a model's
        for channel in self.channels:
            body: dict[str, Any] = {"address": _address(channel.path), "messages": {}}
            if channel.route.summary:
                body["title"] = channel.route.summary
            if channel.route.description:
                body["description"] = channel.route.description
            parameters = _parameters(channel.path)
            if parameters:
                body["parameters"] = parameters
            body["x-auth"] = channel.auth
            if channel.route.subprotocols:
                # RFC 6455 Sec-WebSocket-Protocol values the route speaks, preferred first.
                body["x-subprotocols"] = list(channel.route.subprotocols)
            if channel.auth["verifiable"]:
                body["bindings"] = {"ws": _ws_binding()}
            for message in channel.messages:
                component = self.message_ids.claim(
                    f"{channel.id}.{message.key}", f"{channel.path} {message.key}"
                )
                payload_schema = schemas[id(message)]
                messages[component] = _message_object(message, payload_schema, definitions)
                # A type name for code generators (Modelina names a schema by its title).
                messages[component]["payload"]["title"] = _type_name(component, type_names)
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


def _type_name(component: str, taken: set[str]) -> str:
    """``ws_chat.server.user-joined`` -> ``WsChatServerUserJoined``, unique in ``taken``."""
    parts = re.split(r"[^A-Za-z0-9]+", component)
    name = "".join(part[:1].upper() + part[1:] for part in parts) or "Envelope"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}{n}", n + 1
    taken.add(candidate)
    return candidate


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


def _return_type(func: Callable[..., Any], event: str, path: str) -> Any:
    target = func if inspect.isfunction(func) or inspect.ismethod(func) else type(func).__call__
    try:
        hints = get_type_hints(target)
    except (NameError, TypeError, AttributeError) as exc:
        logger.warning(
            "AsyncAPI: the return annotation of the %r handler on %s cannot be resolved (%s); "
            "its ack is documented as any JSON value",
            event,
            path,
            exc,
        )
        return NO_TYPE
    return hints.get("return", NO_TYPE)


def _auth_of(route: EventRoute) -> dict[str, bool]:
    """The route's effective auth (after the router's and the settings' defaults)."""
    authenticator = route.authenticator
    enabled = bool(authenticator.enabled)
    return {
        "enabled": enabled,
        "required": bool(authenticator.required),
        # Tokens are listed as a way in only where one can be checked (a key or a verifier).
        "verifiable": enabled and authenticator.verifier is not None,
    }


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
