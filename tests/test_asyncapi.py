"""The generated AsyncAPI document and the docs page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from examples.chat_app import main as chat
from fastapi_orcs_ws import Connection, WebSocketRouter, WebSocketSettings
from fastapi_orcs_ws.asyncapi import asyncapi_document, mount_docs

SCHEMA_FILE = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json"
CHAT_CLIENT_EVENTS = {
    "join": chat.RoomPayload,
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
        assert schemas[model.__name__] == model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )

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
    # join returns dict[str, str]; message returns None.
    assert ack["properties"]["payload"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
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


def make_app(*, auth: Any = None, settings: WebSocketSettings | None = None) -> FastAPI:
    # The router's own docs routes are off here: these tests drive mount_docs() on the app.
    router = WebSocketRouter(
        settings=settings or WebSocketSettings(jwt_secret="s" * 32),
        asyncapi_url=None,
        docs_url=None,
    )
    room = router.ws("/rooms/{name}", auth=auth, emits={"note": Note})

    @room.on("note")
    async def note(ws: Connection, payload: Note) -> Note:
        """Post a note to the room.

        The note is echoed back as the ack."""
        return payload

    app = FastAPI(title="notes", version="2.0")
    app.include_router(router, prefix="/api")
    return app


def test_full_path_parameters_docstrings_and_auth(validator: jsonschema.Draft7Validator) -> None:
    doc = asyncapi_document(make_app(auth={"required": True}), title="T", version="9")
    assert validator.is_valid(doc), [e.message for e in validator.iter_errors(doc)][:3]
    assert doc["info"]["title"] == "T" and doc["info"]["version"] == "9"
    (channel,) = doc["channels"].values()
    assert channel["address"] == "/api/rooms/{name}"
    assert set(channel["parameters"]) == {"name"}
    assert channel["x-auth"] == {"enabled": True, "required": True}
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


def test_routes_without_auth_carry_no_security() -> None:
    doc = asyncapi_document(make_app(auth=False))
    (channel,) = doc["channels"].values()
    assert channel["x-auth"] == {"enabled": False, "required": False}
    assert "securitySchemes" not in doc["components"]
    assert all("security" not in op for op in doc["operations"].values())


def test_mount_docs_serves_json_and_page_and_links_from_openapi() -> None:
    app = make_app()
    app.openapi()  # cached before mounting: must be rebuilt with the link
    mount_docs(app)
    with TestClient(app) as client:
        response = client.get("/asyncapi.json")
        assert response.status_code == 200
        assert response.json() == asyncapi_document(app)
        page = client.get("/ws-docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<script" in page.text and "http://" not in page.text.split("<script", 1)[0]
        assert "/api/rooms/{name}" in page.text
        description = client.get("/openapi.json").json()["info"]["description"]
        assert "(/ws-docs)" in description and "(/asyncapi.json)" in description
        assert "/ws-docs" not in client.get("/openapi.json").json()["paths"]


def test_page_is_self_contained() -> None:
    app = make_app()
    mount_docs(app)
    with TestClient(app) as client:
        page = client.get("/ws-docs").text
    for needle in ('rel="stylesheet"', "src=", "@import", "https://", "cdn"):
        assert needle not in page.lower(), needle


def test_mount_docs_urls_are_configurable_and_can_be_disabled() -> None:
    app = make_app()
    mount_docs(app, asyncapi_url=None, docs_url="/events", link_from_openapi=False)
    with TestClient(app) as client:
        assert client.get("/asyncapi.json").status_code == 404
        assert client.get("/ws-docs").status_code == 404
        assert client.get("/events").status_code == 200
        assert "/events" not in (
            client.get("/openapi.json").json()["info"].get("description") or ""
        )

    app = make_app()
    mount_docs(app, asyncapi_url="/spec.json", docs_url=None)
    with TestClient(app) as client:
        assert client.get("/spec.json").status_code == 200
        assert client.get("/ws-docs").status_code == 404


def test_document_is_built_once() -> None:
    app = make_app()
    mount_docs(app)
    with TestClient(app) as client:
        first = client.get("/asyncapi.json").json()
        late = WebSocketRouter(
            settings=WebSocketSettings(auth_enabled=False), asyncapi_url=None, docs_url=None
        )
        late.ws("/late")
        app.include_router(late)  # a rebuild would list it
        assert client.get("/asyncapi.json").json() == first


def test_script_cannot_be_closed_by_a_description() -> None:
    router = WebSocketRouter(
        settings=WebSocketSettings(auth_enabled=False), asyncapi_url=None, docs_url=None
    )
    router.ws("/ws", description="</script><script>alert(1)</script>")
    app = FastAPI()
    app.include_router(router)
    mount_docs(app)
    with TestClient(app) as client:
        page = client.get("/ws-docs").text
    assert "</script><script>alert(1)" not in page


def test_router_serves_its_docs_by_default_under_its_prefix() -> None:
    router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    router.ws("/ws", emits={"note": Note})
    app = FastAPI()
    app.include_router(router, prefix="/rt")
    with TestClient(app) as client:
        doc = client.get("/rt/asyncapi.json").json()
        assert [c["address"] for c in doc["channels"].values()] == ["/rt/ws"]
        assert client.get("/rt/ws-docs").status_code == 200
        description = client.get("/openapi.json").json()["info"]["description"]
        assert "(/rt/ws-docs)" in description

    quiet = WebSocketRouter(
        settings=WebSocketSettings(auth_enabled=False), asyncapi_url=None, docs_url=None
    )
    quiet.ws("/ws")
    app = FastAPI()
    app.include_router(quiet)
    with TestClient(app) as client:
        assert client.get("/asyncapi.json").status_code == 404
        assert client.get("/ws-docs").status_code == 404
