"""The official AsyncAPI parser (``@asyncapi/parser`` from npm) accepts our documents.

The parser (schema validation plus the AsyncAPI ruleset, Spectral-based) runs with Node.js
from ``tests/js``: installed with ``npm ci`` from the committed ``package-lock.json`` the
first time (and whenever the lock file changes). Checked: both examples' documents, and an
app with three routers, prefixes, a nested router, a mount, every auth variant, and nested,
recursive, generic and discriminated-union models: 0 errors and 0 warnings, both as built
(``asyncapi_document``) and as served (``/asyncapi.json``, behind a root path).
"""

from __future__ import annotations

import copy
import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from fastapi_orcs_ws import Connection, WebSocketRouter, WebSocketSettings
from fastapi_orcs_ws.asyncapi import asyncapi_document

JS = Path(__file__).parent / "js"
SECRET = "parser-test-secret-0123456789abcdef0123456789"
ERROR, WARNING = 0, 1  # Spectral severities; 2 (info) and 3 (hint) are advice

Validate = Callable[..., list[list[dict[str, Any]]]]


@pytest.fixture(scope="session")
def parser(tmp_path_factory: pytest.TempPathFactory) -> Validate:
    """``validate(*documents)``: the parser's diagnostics for each document."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs Node.js 18+ and npm: the official AsyncAPI parser is JavaScript")
    installed = JS / "node_modules" / ".package-lock.json"
    lock = JS / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        # --ignore-scripts: nothing the parser needs runs at install (one dependency's
        # post-install script only sends telemetry).
        result = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stderr[-3000:]}"
    folder = tmp_path_factory.mktemp("asyncapi")
    count = iter(range(1_000_000))

    def validate(*documents: dict[str, Any]) -> list[list[dict[str, Any]]]:
        paths = []
        for document in documents:  # one node process for all: it takes seconds to start
            path = folder / f"document-{next(count)}.json"
            path.write_text(json.dumps(document), encoding="utf-8")
            paths.append(str(path))
        result = subprocess.run(
            [node, str(JS / "validate-asyncapi.mjs"), *paths],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        report: dict[str, list[dict[str, Any]]] = json.loads(result.stdout)
        return [report[path] for path in paths]

    return validate


def problems(diagnostics: list[dict[str, Any]]) -> list[str]:
    """Errors and warnings, readable."""
    return [
        f"{d['code']}: {d['message']} at {'/'.join(map(str, d['path']))}"
        for d in diagnostics
        if d["severity"] in (ERROR, WARNING)
    ]


# -- the test app ------------------------------------------------------------------------------

T = TypeVar("T")


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    lives: int = Field(9, ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"] = "dog"
    good: bool = True


Pet = Annotated[Cat | Dog, Field(discriminator="kind")]


class Tree(BaseModel):
    """Recursive."""

    name: str
    children: list[Tree] = []


class Page(BaseModel, Generic[T]):
    """Generic."""

    items: list[T]
    total: int = Field(ge=0)


class Address(BaseModel):
    street: str
    city: str


class Owner(BaseModel):
    """Nested."""

    name: str = Field(min_length=1)
    address: Address
    previous: list[Address] = []
    note: Address | None = Field(None, description="A described reference.")


class Adoption(BaseModel):
    pet: Pet
    owner: Owner
    where: tuple[float, float]
    tags: dict[str, list[Tree]] = {}


async def adopt(ws: Connection, payload: Adoption) -> Page[Pet]:
    """Adopt a pet."""
    return Page[Pet](items=[payload.pet], total=1)


async def plant(ws: Connection, payload: list[Tree]) -> Tree:
    return payload[0]


async def anything(ws: Connection, payload: Any) -> None: ...


def three_routers_app() -> FastAPI:
    keyed = WebSocketSettings(jwt_secret=SECRET)
    shelter = WebSocketRouter(settings=keyed)
    pets = shelter.ws(
        "/pets/{shelter_id}",
        {"adopt": adopt, "user joined": anything, "user_joined": anything},
        emits={"page": Page[Cat], "tree": Tree, "pet": Pet},
        summary="Adoptions",
        description="Everything about `pets`.",
    )
    pets.emit("ack.adopt", Owner)  # collides with the ack of "adopt": kept, reported

    garden = WebSocketRouter(settings=WebSocketSettings())  # auth on, no key: no schemes
    garden.ws("/trees", {"plant": plant, "thé": anything}, emits={"grown": Page[Tree]})

    private = WebSocketRouter(settings=keyed, auth={"required": True})
    private.ws("/owners", {"register": anything}, emits={"owner": Owner})
    open_router = WebSocketRouter(settings=WebSocketSettings(auth_enabled=False))
    open_router.ws("/open", {"ping": anything})
    private.include_router(open_router, prefix="/nested")  # nested router

    app = FastAPI(title="three routers", version="1.2.3")
    app.include_router(shelter, prefix="/api/v1")
    app.include_router(garden, prefix="/api/v2")
    app.include_router(private, prefix="/private")
    sub = FastAPI()
    mounted = WebSocketRouter(settings=keyed)
    mounted.ws("/mounted", {"adopt": adopt})
    sub.include_router(mounted, prefix="/in")
    app.mount("/sub", sub)
    return app


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FastAPI]]:
    from examples.chat_app.main import app as chat  # imported once: it registers metrics

    # The notifications example reads WS_JWT_SECRET when imported: import it afresh.
    monkeypatch.setenv("WS_JWT_SECRET", SECRET)
    module = "examples.notifications.main"
    sys.modules.pop(module, None)
    yield {"chat": chat, "notifications": importlib.import_module(module).app}
    sys.modules.pop(module, None)


def served(app: FastAPI) -> dict[str, Any]:
    with TestClient(app, base_url="https://ws.example", root_path="/proxy") as client:
        response = client.get("/asyncapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chat", "notifications"])
def test_the_examples_documents_are_valid(
    parser: Validate, examples: dict[str, FastAPI], name: str
) -> None:
    app = examples[name]
    built, as_served = parser(asyncapi_document(app), served(app))
    assert problems(built) == []
    assert problems(as_served) == []


def test_three_routers_with_every_kind_of_model_are_valid(parser: Validate) -> None:
    app = three_routers_app()
    built = asyncapi_document(app)
    assert [c["address"] for c in built["channels"].values()] == [
        "/api/v1/pets/{shelter_id}",
        "/api/v2/trees",
        "/private/owners",
        "/private/nested/open",
        "/sub/in/mounted",
    ]
    document = served(app)
    assert document["servers"]["default"] == {
        "host": "ws.example",
        "protocol": "wss",
        "pathname": "/proxy",
    }
    diagnostics = parser(built, document)
    assert problems(diagnostics[0]) == []
    assert problems(diagnostics[1]) == []


def test_the_parser_catches_what_the_conversion_fixes(parser: Validate) -> None:
    """The check can fail: OpenAPI's discriminator object, put back, is an error."""
    document = copy.deepcopy(asyncapi_document(three_routers_app()))
    pet = document["components"]["schemas"]["Adoption"]["properties"]["pet"]
    assert pet["discriminator"] == "kind"
    pet["discriminator"] = {"propertyName": "kind"}
    (diagnostics,) = parser(document)
    errors = [d for d in diagnostics if d["severity"] == ERROR]
    assert any("discriminator" in d["message"] for d in errors), errors
