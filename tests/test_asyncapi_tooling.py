"""Standard AsyncAPI tooling reads our documents: Modelina generates models for them.

Modelina (``@asyncapi/modelina``, the AsyncAPI Initiative's model generator, which parses the
document with the official parser) runs with Node.js from ``tests/asyncapi_tooling``,
installed with ``npm ci`` from the committed ``package-lock.json`` the first time (and again
whenever the lock file changes). Checked for both examples and for the parser test's app with
three routers and nested, recursive, generic and discriminated-union models: no error, every
envelope (each message's payload) becomes a model named after its title (``WsChatClientJoin``,
never ``AnonymousSchema_12``), its ``payload`` typed by the Pydantic model's name, and the
TypeScript Modelina writes for the examples compiles under ``tsc --strict`` (not for the
three-router app: Modelina merges two same-titled ``Literal`` enums, see below).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_orcs_ws.asyncapi import asyncapi_document
from tests.js_client.toolchain import node_toolchain
from tests.test_asyncapi_parser import three_routers_app

TOOLING = Path(__file__).resolve().parent / "asyncapi_tooling"
SECRET = "tooling-test-secret-0123456789abcdef0123456789"
_STAMP = TOOLING / "node_modules" / ".orcs-lock-sha256"

Generate = Callable[..., list[dict[str, Any]]]


def _install(npm: str) -> None:
    """``npm ci`` when ``node_modules`` is missing or older than the lock file."""
    digest = hashlib.sha256((TOOLING / "package-lock.json").read_bytes()).hexdigest()
    with open(TOOLING / ".install.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one install at a time, whoever runs the tests
        if _STAMP.exists() and _STAMP.read_text().strip() == digest:
            return
        # --ignore-scripts: Modelina needs no install script (one dependency's only sends
        # telemetry).
        result = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=TOOLING,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed in {TOOLING}:\n{result.stderr[-3000:]}"
        _STAMP.write_text(digest)


@pytest.fixture(scope="session")
def modelina(tmp_path_factory: pytest.TempPathFactory) -> Generate:
    """``generate(*documents)``: for each, ``{"errors": [...], "models": [{name, code}]}``."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs Node.js 18+ and npm: Modelina is JavaScript")
    _install(npm)
    folder = tmp_path_factory.mktemp("modelina")
    count = iter(range(1_000_000))

    def generate(*documents: dict[str, Any]) -> list[dict[str, Any]]:
        paths = []
        for document in documents:  # one node process for all: Modelina takes seconds to load
            path = folder / f"document-{next(count)}.json"
            path.write_text(json.dumps(document), encoding="utf-8")
            paths.append(str(path))
        result = subprocess.run(
            [node, str(TOOLING / "generate-models.mjs"), *paths],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        report: dict[str, dict[str, Any]] = json.loads(result.stdout)
        return [report[path] for path in paths]

    return generate


@pytest.fixture
def documents(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, Any]]]:
    from examples.chat_app.main import app as chat  # imported once: it registers metrics

    # The notifications example reads WS_JWT_SECRET when imported: import it afresh.
    monkeypatch.setenv("WS_JWT_SECRET", SECRET)
    module = "examples.notifications.main"
    sys.modules.pop(module, None)
    notifications: FastAPI = importlib.import_module(module).app
    yield {
        "chat": asyncapi_document(chat),
        "notifications": asyncapi_document(notifications),
        "three routers": asyncapi_document(three_routers_app()),
    }
    sys.modules.pop(module, None)


def envelope_titles(document: dict[str, Any]) -> dict[str, str]:
    """Each message component's id -> its envelope's title."""
    return {
        key: message["payload"]["title"]
        for key, message in document["components"]["messages"].items()
    }


def test_envelopes_have_unique_readable_titles(documents: dict[str, dict[str, Any]]) -> None:
    chat = envelope_titles(documents["chat"])
    assert chat["ws_chat.client.join"] == "WsChatClientJoin"
    assert chat["ws_chat.server.ack.join"] == "WsChatServerAckJoin"
    assert chat["ws_chat.server.user-joined"] == "WsChatServerUserJoined"
    for document in documents.values():
        titles = list(envelope_titles(document).values())
        assert len(set(titles)) == len(titles)
        # never the name of one of the app's own models
        assert not set(titles) & set(document["components"]["schemas"])
        assert all(re.fullmatch(r"[A-Za-z0-9]+", title) for title in titles), titles


def test_modelina_generates_named_models_that_compile(
    modelina: Generate, documents: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    names = list(documents)
    reports = modelina(*documents.values())
    _, tsc = node_toolchain()
    for name, document, report in zip(names, documents.values(), reports, strict=True):
        assert report["errors"] == [], (name, report["errors"])
        models = {model["name"]: model["code"] for model in report["models"]}
        assert not [n for n in models if n.startswith("AnonymousSchema")], (name, list(models))
        # Every envelope is a model under its title, with its event as a literal, and every
        # model of the app's own is there under its own name.
        for key, title in envelope_titles(document).items():
            event = document["components"]["messages"][key]["name"]
            assert title in models, (name, title, list(models))
            assert f"reservedEvent: '{event}';" in models[title], models[title]
            ref = document["components"]["messages"][key]["payload"]["properties"]["payload"]
            model = ref.get("$ref", "").removeprefix("#/components/schemas/")
            # The payload is typed by the Pydantic model's name. (A generic model's name,
            # ``Page[Annotated[Union[Cat, Dog], ...]]``, is spelled out by Modelina: valid, not
            # pretty; checked by the compile below only.)
            if re.fullmatch(r"[A-Za-z0-9]+", model):
                assert re.search(rf"payload\??: {model};", models[title]), models[title]
        for schema in document["components"]["schemas"]:
            if not re.fullmatch(r"[A-Za-z0-9]+", schema):
                continue  # a generic model (above)
            assert any(model == schema or model.startswith(schema) for model in models), (
                name,
                schema,
                list(models),
            )
        if name == "three routers":
            # Not compiled: Modelina names both ``kind`` literals (``Cat``'s "cat", ``Dog``'s
            # "dog", each titled "Kind" by Pydantic) ``enum Kind`` and keeps only one.
            continue
        # What a user gets is usable: the generated TypeScript compiles.
        source = tmp_path / f"{re.sub(r'[^a-z]+', '_', name)}.ts"
        source.write_text("\n\n".join(models.values()) + "\nexport {};\n", encoding="utf-8")
        result = subprocess.run(
            [str(tsc), "--strict", "--noEmit", "--target", "es2022", str(source)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (name, result.stdout[-3000:])
    chat = {model["name"]: model["code"] for model in reports[0]["models"]}
    assert "payload: ErrorPayload;" in chat["WsChatServerError"]
    assert "payload: ChatBroadcast;" in chat["WsChatServerMessage"]
