"""The generated AsyncAPI document and the docs page."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from examples.chat_app import main as chat
from fastapi_orcs_ws import ConfigurationError, Connection, WebSocketRouter, WebSocketSettings
from fastapi_orcs_ws.asyncapi import asyncapi_document, mount_docs
from fastapi_orcs_ws.asyncapi.schemas import to_asyncapi_schema

SCHEMA_FILE = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json"
CHAT_CLIENT_EVENTS = {
    "join": chat.JoinPayload,
    "leave": chat.RoomPayload,
    "message": chat.ChatMessage,
    "typing": chat.TypingPayload,
}
CHAT_SERVER_EVENTS = {
    "welcome": chat.Welcome,
    "user-joined": chat.ClientRef,
    "user-left": chat.ClientRef,
    "user-typing": chat.ClientRef,
    "message": chat.ChatBroadcast,
    "presence-join": chat.PresenceEvent,
    "presence-leave": chat.PresenceEvent,
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    # The bundled "without-$id" schema has every definition inline: no remote refs to resolve.
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def messages_by_direction(doc: dict[str, Any], action: str) -> dict[str, dict[str, Any]]:
    found = {}
    for operation in doc["operations"].values():
        if operation["action"] == action:
            message = resolve(doc, operation["messages"][0])
            found[message["name"]] = message
    return found


def test_chat_document_is_valid_asyncapi_3(validator: jsonschema.Draft7Validator) -> None:
    doc = asyncapi_document(chat.app)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == chat.app.title


def test_validator_rejects_a_broken_document(validator: jsonschema.Draft7Validator) -> None:
    doc = asyncapi_document(chat.app)
    next(iter(doc["operations"].values()))["action"] = "publish"  # an AsyncAPI 2 verb
    assert not validator.is_valid(doc)


def test_chat_document_lists_every_event_with_its_payload_schema() -> None:
    doc = asyncapi_document(chat.app)
    assert [c["address"] for c in doc["channels"].values()] == ["/ws/chat"]
    schemas = doc["components"]["schemas"]

    received = messages_by_direction(doc, "receive")
    assert set(received) == set(CHAT_CLIENT_EVENTS)  # connect/disconnect are lifecycle
    for event, model in CHAT_CLIENT_EVENTS.items():
        payload = received[event]["payload"]["properties"]["payload"]
        assert payload == {"$ref": f"#/components/schemas/{model.__name__}"}
        expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
        nested = expected.pop("$defs", {})  # nested models are components of their own
        assert schemas[model.__name__] == expected
        for name, schema in nested.items():
            assert schemas[name] == schema

    sent = messages_by_direction(doc, "send")
    assert set(sent) == set(CHAT_SERVER_EVENTS) | {"error"}
    for event, model in CHAT_SERVER_EVENTS.items():
        payload = sent[event]["payload"]["properties"]["payload"]
        assert resolve(doc, payload) == model.model_json_schema(mode="serialization")
    assert "from" in schemas["ChatBroadcast"]["properties"]  # the alias, as on the wire
    assert "$defs" not in json.dumps(doc)


def test_acks_are_replies_typed_by_the_return_annotation() -> None:
    doc = asyncapi_document(chat.app)
    join = doc["operations"]["ws_chat.receive.join"]
    replies = [resolve(doc, ref) for ref in join["reply"]["messages"]]
    assert [m["name"] for m in replies] == ["ack", "error"]
    ack = replies[0]["payload"]
    assert "id" in ack["required"]
    # join returns a JoinAnswer model; message returns None.
    assert ack["properties"]["payload"] == {"$ref": "#/components/schemas/JoinAnswer"}
    message_ack = resolve(doc, doc["operations"]["ws_chat.receive.message"]["reply"]["messages"][0])
    assert message_ack["payload"]["properties"]["payload"] == {"type": "null"}


def test_examples_are_generated_from_the_schemas() -> None:
    doc = asyncapi_document(chat.app)
    received = messages_by_direction(doc, "receive")
    example = received["message"]["examples"][0]["payload"]
    assert example["event"] == "message"
    chat.ChatMessage.model_validate(example["payload"])  # a valid payload
    sent = messages_by_direction(doc, "send")
    chat.ChatBroadcast.model_validate(sent["message"]["examples"][0]["payload"]["payload"])


class Note(BaseModel):
    text: str


SECRET = "s" * 32


def make_app(*, auth: Any = None, settings: WebSocketSettings | None = None) -> FastAPI:
    router = WebSocketRouter(settings=settings or WebSocketSettings(jwt_secret=SECRET))
    room = router.ws("/rooms/{name}", auth=auth, emits={"note": Note})

    @room.on("note")
    async def note(ws: Connection, payload: Note) -> Note:
        """Post a note to the room.

        The note is echoed back as the ack."""
        return payload

    app = FastAPI(title="notes", version="2.0")
    app.include_router(router, prefix="/api")
    return app


def without_servers(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "servers"}


def test_full_path_parameters_docstrings_and_auth(validator: jsonschema.Draft7Validator) -> None:
    doc = asyncapi_document(make_app(auth={"required": True}), title="T", version="9")
    assert validator.is_valid(doc), [e.message for e in validator.iter_errors(doc)][:3]
    assert doc["info"]["title"] == "T" and doc["info"]["version"] == "9"
    (channel,) = doc["channels"].values()
    assert channel["address"] == "/api/rooms/{name}"
    assert set(channel["parameters"]) == {"name"}
    assert channel["x-auth"] == {"enabled": True, "required": True, "verifiable": True}
    operation = next(op for op in doc["operations"].values() if op["action"] == "receive")
    assert operation["description"].startswith("Post a note to the room.")
    schemes = doc["components"]["securitySchemes"]
    assert schemes["queryToken"] == {
        **schemes["queryToken"],
        "type": "httpApiKey",
        "in": "query",
        "name": "token",
    }
    assert schemes["bearer"]["scheme"] == "bearer"
    assert "subprotocol" in schemes["subprotocolToken"]["description"]
    assert {ref["$ref"].rsplit("/", 1)[-1] for ref in operation["security"]} == set(schemes)


def test_a_routes_subprotocols_are_in_its_channel() -> None:
    router = WebSocketRouter()
    router.ws("/ws/v", {"ping": lambda: None}, subprotocols=["chat.v2", "chat.v1"])
    router.ws("/ws/plain", {"ping": lambda: None})
    app = FastAPI()
    app.include_router(router)
    channels = {c["address"]: c for c in asyncapi_document(app)["channels"].values()}
    assert channels["/ws/v"]["x-subprotocols"] == ["chat.v2", "chat.v1"]
    assert "x-subprotocols" not in channels["/ws/plain"]


def test_routes_without_auth_carry_no_security() -> None:
    doc = asyncapi_document(make_app(auth=False))
    (channel,) = doc["channels"].values()
    assert channel["x-auth"] == {"enabled": False, "required": False, "verifiable": False}
    assert "securitySchemes" not in doc["components"]
    assert all("security" not in op for op in doc["operations"].values())


def test_security_is_listed_only_where_a_token_can_be_verified(
    validator: jsonschema.Draft7Validator,
) -> None:
    keyed = WebSocketRouter(settings=WebSocketSettings(jwt_secret=SECRET))
    keyless = WebSocketRouter(settings=WebSocketSettings())  # auth on, no key: tokens refused
    keyed.ws("/keyed", {"ping": ping})
    keyless.ws("/keyless", {"ping": ping})
    app = FastAPI()
    app.include_router(keyed)
    app.include_router(keyless)
    doc = asyncapi_document(app)
    assert validator.is_valid(doc)
    channels = {c["address"]: c for c in doc["channels"].values()}
    assert channels["/keyed"]["x-auth"] == {"enabled": True, "required": False, "verifiable": True}
    assert channels["/keyless"]["x-auth"] == {
        "enabled": True,
        "required": False,
        "verifiable": False,
    }
    assert "bindings" in channels["/keyed"] and "bindings" not in channels["/keyless"]
    for op_id, operation in doc["operations"].items():
        assert ("security" in operation) == op_id.startswith("keyed."), op_id
    assert set(doc["components"]["securitySchemes"]) == {"queryToken", "bearer", "subprotocolToken"}

    only_keyless = FastAPI()
    only_keyless.include_router(keyless)
    doc = asyncapi_document(only_keyless)
    assert "securitySchemes" not in doc["components"]
    assert all("security" not in op for op in doc["operations"].values())


async def ping(ws: Connection, payload: Any) -> str:
    return "pong"


# -- servers and addresses ----------------------------------------------------------------------


def test_servers_come_from_the_request_and_its_root_path() -> None:
    app = make_app()
    with TestClient(app, root_path="/proxy") as client:
        doc = client.get("/asyncapi.json").json()
    assert doc["servers"] == {
        "default": {"host": "testserver", "protocol": "ws", "pathname": "/proxy"}
    }
    # The root path is the server's; channel addresses hold the app's paths only.
    assert [c["address"] for c in doc["channels"].values()] == ["/api/rooms/{name}"]

    with TestClient(app, base_url="https://chat.example:8443") as client:
        doc = client.get("/asyncapi.json").json()
    assert doc["servers"] == {"default": {"host": "chat.example:8443", "protocol": "wss"}}


def test_server_url_fills_servers_and_the_default_is_a_host_variable(
    validator: jsonschema.Draft7Validator,
) -> None:
    app = make_app()
    doc = asyncapi_document(app, server_url="wss://chat.example.com/base/")
    assert doc["servers"] == {
        "default": {"host": "chat.example.com", "protocol": "wss", "pathname": "/base"}
    }
    assert list(doc)[:3] == ["asyncapi", "info", "servers"]
    plain = asyncapi_document(app)
    server = plain["servers"]["default"]
    assert server["host"] == "{host}" and set(server["variables"]) == {"host"}
    assert validator.is_valid(plain) and validator.is_valid(doc)
    for bad in ("chat.example.com", "ftp://chat.example.com", "ws://"):
        with pytest.raises(ConfigurationError, match="server_url"):
            asyncapi_document(app, server_url=bad)


def test_addresses_include_mounts_and_a_sub_app_serves_its_own_docs() -> None:
    inner = make_app()
    outer = FastAPI()
    outer.mount("/v1", inner)
    doc = asyncapi_document(outer)
    assert [c["address"] for c in doc["channels"].values()] == ["/v1/api/rooms/{name}"]

    mount_docs(inner)
    with TestClient(outer) as client:
        doc = client.get("/v1/asyncapi.json").json()
    assert doc["servers"]["default"]["pathname"] == "/v1"
    assert [c["address"] for c in doc["channels"].values()] == ["/api/rooms/{name}"]


# -- mounting the docs --------------------------------------------------------------------------


def test_mount_docs_serves_json_and_page() -> None:
    app = make_app()
    mount_docs(app)
    with TestClient(app) as client:
        response = client.get("/asyncapi.json")
        assert response.status_code == 200
        served = response.json()
        assert without_servers(served) == without_servers(asyncapi_document(app))
        assert served == asyncapi_document(app, server_url="http://testserver")
        page = client.get("/ws-docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<script" in page.text and "http://" not in page.text.split("<script", 1)[0]
        assert "/api/rooms/{name}" in page.text
        openapi = client.get("/openapi.json").json()
        assert "description" not in openapi["info"]  # the app's description is the app's
        assert "/ws-docs" not in openapi["paths"] and "/asyncapi.json" not in openapi["paths"]


def test_link_from_openapi_is_the_apps_choice() -> None:
    app = make_app()
    app.openapi()  # cached before mounting: must be rebuilt with the link
    mount_docs(app, link_from_openapi=True)
    with TestClient(app) as client:
        description = client.get("/openapi.json").json()["info"]["description"]
    assert "(/ws-docs)" in description and "(/asyncapi.json)" in description


def test_page_is_self_contained() -> None:
    app = make_app()
    mount_docs(app)
    with TestClient(app) as client:
        page = client.get("/ws-docs").text
    for needle in ('rel="stylesheet"', "src=", "@import", "https://", "cdn"):
        assert needle not in page.lower(), needle


def test_mount_docs_urls_are_configurable_and_can_be_disabled() -> None:
    app = make_app()
    mount_docs(app, asyncapi_url=None, docs_url="/events")
    with TestClient(app) as client:
        assert client.get("/asyncapi.json").status_code == 404
        assert client.get("/ws-docs").status_code == 404
        assert client.get("/events").status_code == 200

    app = make_app()
    mount_docs(app, asyncapi_url="/spec.json", docs_url=None)
    with TestClient(app) as client:
        assert client.get("/spec.json").status_code == 200
        assert client.get("/ws-docs").status_code == 404

    app = make_app()
    routes_before = list(app.routes)
    mount_docs(app, asyncapi_url=None, docs_url=None)  # no docs at all, even at start-up
    with TestClient(app) as client:
        assert client.get("/asyncapi.json").status_code == 404
        assert client.get("/ws-docs").status_code == 404
    assert app.routes == routes_before


def test_mount_docs_is_configured_once_and_only_on_an_app() -> None:
    app = make_app()
    mount_docs(app, docs_url="/events")
    mount_docs(app, docs_url="/events")  # the same: nothing to do
    with pytest.raises(ConfigurationError, match="already mounted"):
        mount_docs(app)
    with pytest.raises(ConfigurationError, match="FastAPI application"):
        mount_docs(WebSocketRouter(settings=WebSocketSettings(auth_enabled=False)))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="starting with '/'"):
        mount_docs(FastAPI(), docs_url="ws-docs")


def test_docs_are_mounted_once_at_the_app_root_for_every_router() -> None:
    app = FastAPI()
    routers = [WebSocketRouter(settings=WebSocketSettings(auth_enabled=False)) for _ in range(3)]
    for i, router in enumerate(routers):
        router.ws("/ws", emits={"note": Note})
        app.include_router(router, prefix=f"/r{i}")
    paths_before = [getattr(route, "path", None) for route in app.routes]
    with TestClient(app) as client:
        doc = client.get("/asyncapi.json").json()
        assert [c["address"] for c in doc["channels"].values()] == ["/r0/ws", "/r1/ws", "/r2/ws"]
        assert client.get("/ws-docs").status_code == 200
        for i in range(3):
            assert client.get(f"/r{i}/asyncapi.json").status_code == 404
            assert client.get(f"/r{i}/ws-docs").status_code == 404
    paths = [getattr(route, "path", None) for route in app.routes]
    assert paths == [*paths_before, "/asyncapi.json", "/ws-docs", "/orcs-client.js"]
    for router in routers:  # a router never adds routes to itself
        assert [getattr(route, "path", None) for route in router.routes] == ["/ws"]
    assert app.description == ""


def test_the_apps_own_routes_win_over_the_docs() -> None:
    # A router's catch-all under a prefix (the docs never go there).
    items = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    items.ws("/ws")

    @items.get("/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    app = FastAPI()
    app.include_router(items, prefix="/items")

    # An app route at the docs' path, and a catch-all declared after an explicit mount_docs.
    @app.get("/asyncapi.json")
    async def mine() -> dict[str, str]:
        return {"mine": "yes"}

    mount_docs(app)

    @app.get("/{page}")
    async def page(page: str) -> dict[str, str]:
        return {"page": page}

    with TestClient(app) as client:
        assert client.get("/items/ws-docs").json() == {"item": "ws-docs"}
        assert client.get("/items/asyncapi.json").json() == {"item": "asyncapi.json"}
        assert client.get("/asyncapi.json").json() == {"mine": "yes"}
        assert client.get("/ws-docs").json() == {"page": "ws-docs"}


def test_document_is_built_once() -> None:
    app = make_app()
    mount_docs(app)
    with TestClient(app) as client:
        first = client.get("/asyncapi.json").json()
        late = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
        late.ws("/late")
        app.include_router(late)  # a rebuild would list it
        assert client.get("/asyncapi.json").json() == first


def test_script_cannot_be_closed_by_a_description() -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    router.ws("/ws", description="</script><script>alert(1)</script>")
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        page = client.get("/ws-docs").text
    assert "</script><script>alert(1)" not in page


# -- schemas -------------------------------------------------------------------------------------

T = TypeVar("T")


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    lives: int = 9


class Dog(BaseModel):
    kind: Literal["dog"] = "dog"
    good: bool = True


Pet = Annotated[Cat | Dog, Field(discriminator="kind")]


class Tree(BaseModel):
    name: str
    children: list[Tree] = []


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int


class Adopt(BaseModel):
    pet: Pet
    where: tuple[int, str]
    best: Page[Cat] | None = Field(None, description="A described reference.")


def schema_app() -> FastAPI:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/pets", emits={"page": Page[Dog], "tree": Tree})

    @route.on("adopt")
    async def adopt(ws: Connection, payload: Adopt) -> Page[Cat]:
        return Page[Cat](items=[], total=0)

    @route.on("plant")
    async def plant(ws: Connection, payload: list[Tree]) -> Pet:
        return Cat()

    app = FastAPI()
    app.include_router(router)
    return app


def test_pydantic_schemas_become_asyncapi_schema_objects(
    validator: jsonschema.Draft7Validator,
) -> None:
    doc = asyncapi_document(schema_app())
    assert validator.is_valid(doc), [e.message for e in validator.iter_errors(doc)][:3]
    text = json.dumps(doc)
    assert "$defs" not in text and "prefixItems" not in text and '"propertyName"' not in text
    schemas = doc["components"]["schemas"]
    assert {"Adopt", "Cat", "Dog", "Page_Cat_", "Page_Dog_"} <= set(schemas)
    pet = schemas["Adopt"]["properties"]["pet"]
    assert pet["discriminator"] == "kind"
    assert {ref["$ref"] for ref in pet["oneOf"]} == {
        "#/components/schemas/Cat",
        "#/components/schemas/Dog",
    }
    where = schemas["Adopt"]["properties"]["where"]
    assert where["items"] == [{"type": "integer"}, {"type": "string"}]
    trees = [name for name in schemas if name.startswith("Tree")]
    for name in trees:  # recursive: the model refers to itself by name
        assert schemas[name]["properties"]["children"]["items"] == {
            "$ref": f"#/components/schemas/{name}"
        }
    # Every reference resolves.
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)):
        assert ref in schemas, ref


def test_schema_conversion_rules() -> None:
    converted = to_asyncapi_schema(
        {
            "type": "object",
            "properties": {
                "discriminator": {"type": "string"},  # a property, not the keyword
                "prefixItems": {"$ref": "#/components/schemas/X", "description": "d"},
                "pair": {"prefixItems": [{"type": "integer"}], "items": False},
            },
            "dependentRequired": {"a": ["b"]},
            "default": {"discriminator": {"propertyName": "data"}, "prefixItems": []},
            "examples": [{"$ref": "data", "x": 1}],
            "oneOf": [{"$ref": "#/components/schemas/A"}],
            "discriminator": {"propertyName": "kind", "mapping": {"a": "#/components/schemas/A"}},
        }
    )
    assert converted == {
        "type": "object",
        "properties": {
            "discriminator": {"type": "string"},
            "prefixItems": {"allOf": [{"$ref": "#/components/schemas/X"}], "description": "d"},
            "pair": {"items": [{"type": "integer"}], "additionalItems": False},
        },
        "dependencies": {"a": ["b"]},
        "default": {"discriminator": {"propertyName": "data"}, "prefixItems": []},
        "examples": [{"$ref": "data", "x": 1}],
        "oneOf": [{"$ref": "#/components/schemas/A"}],
        "discriminator": "kind",
    }


def test_a_type_without_json_schema_is_documented_as_any_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    route = router.ws("/ws")

    @route.on("call")
    async def call(ws: Connection, payload: Callable[[], None]) -> None: ...

    app = FastAPI()
    app.include_router(router)
    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws.asyncapi"):
        doc = asyncapi_document(app)
    message = resolve(doc, doc["channels"]["ws"]["messages"]["client.call"])
    assert message["payload"]["properties"]["payload"]["description"].startswith("Any JSON value")
    assert any("no JSON Schema for" in r.getMessage() for r in caplog.records)


# -- names -----------------------------------------------------------------------------------


def test_names_that_collide_after_conversion_are_kept_and_reported(
    caplog: pytest.LogCaptureFixture, validator: jsonschema.Draft7Validator
) -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    first = router.ws("/a/b", {"user joined": ping, "user_joined": ping, "join": ping})
    first.emit("ack.join", Note)  # its key would be the ack of "join"
    router.ws("/a_b", {"ping": ping})
    app = FastAPI()
    app.include_router(router)
    with caplog.at_level(logging.WARNING, "fastapi_orcs_ws.asyncapi"):
        doc = asyncapi_document(app)
    assert validator.is_valid(doc)
    assert list(doc["channels"]) == ["a_b", "a_b_2"]
    assert [c["address"] for c in doc["channels"].values()] == ["/a/b", "/a_b"]
    received = messages_by_direction(doc, "receive")
    assert {"user joined", "user_joined", "join", "ping"} <= set(received)
    keys = doc["channels"]["a_b"]["messages"]
    assert {"client.user_joined", "client.user_joined_2", "server.ack.join_2"} <= set(keys)
    names = {resolve(doc, ref)["name"] for ref in keys.values()}
    assert {"user joined", "user_joined", "ack.join", "ack"} <= names
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'user joined' and 'user_joined'" in w for w in warnings), warnings
    assert any("'/a/b' and '/a_b'" in w for w in warnings), warnings
    assert any("'ack.join'" in w for w in warnings), warnings


def test_keys_are_ascii_whatever_the_event_name(validator: jsonschema.Draft7Validator) -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    router.ws("/café", {"thé": ping})
    app = FastAPI()
    app.include_router(router)
    doc = asyncapi_document(app)
    key = re.compile(r"^[A-Za-z0-9._\-]+$")
    for section in ("channels", "operations"):
        assert all(key.match(k) for k in doc[section]), list(doc[section])
    assert all(key.match(k) for k in doc["components"]["messages"])
    assert "thé" in messages_by_direction(doc, "receive")
    assert validator.is_valid(doc)
