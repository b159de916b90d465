"""Generated TypeScript types: they compile under ``tsc --strict`` with the client's own types,
a typed program that uses the events right compiles, and one that misuses them does not."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Generic, Literal, TypeVar

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from fastapi_orcs_ws import ConfigurationError, Connection, WebSocketRouter, asyncapi_document
from fastapi_orcs_ws.typescript import typescript_definitions
from tests.js_client.toolchain import node_toolchain

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "fastapi_orcs_ws" / "static"
TSC_FLAGS = ["--strict", "--noEmit", "--target", "es2022", "--module", "nodenext"]


# -- a test app with every shape of model ------------------------------------------------------


class Color(StrEnum):
    RED = "red"
    GREEN = "green"


class Point(BaseModel):
    x: int
    y: int


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    lives: int = 9


class Dog(BaseModel):
    kind: Literal["dog"] = "dog"
    good: bool = True


class Tree(BaseModel):
    """A recursive model."""

    label: str
    children: list[Tree] = []


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int


class Draw(BaseModel):
    """Nested, optional, enum, union and discriminated-union fields."""

    points: list[Point]
    color: Color
    label: str | None = None
    width: int | float = 1
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    tags: dict[str, str] = {}
    corner: tuple[int, int] | None = None


class Drawn(BaseModel):
    id: int
    tree: Tree


def shapes_app() -> FastAPI:
    router = WebSocketRouter()
    canvas = router.ws(
        "/ws/canvas/{board}", emits={"drawn": Drawn, "page": Page[Point], "color": Color}
    )

    @canvas.on("draw")
    async def draw(ws: Connection, payload: Draw) -> Drawn:
        """Draw a shape."""
        return Drawn(id=1, tree=Tree(label="root"))

    @canvas.on("clear")
    async def clear(ws: Connection) -> None: ...

    @canvas.on("pick")
    async def pick(ws: Connection, payload: Cat | Dog) -> list[Point]:
        return []

    app = FastAPI(title="shapes")
    app.include_router(router, prefix="/v1")
    return app


GOOD_PROGRAM = """\
import { connect, EventError, ClientError } from "./orcs-client.js";
import type { V1WsCanvasBoardEvents, Draw, Drawn, Point, Tree } from "./events.js";

const client = connect<V1WsCanvasBoardEvents>("ws://localhost/v1/ws/canvas/1");
const draw: Draw = {
  points: [{ x: 1, y: 2 }],
  color: "red",
  pet: { kind: "dog", good: true },
  corner: [0, 0],
};
async function main(): Promise<void> {
  const drawn: Drawn = await client.request("draw", draw, { timeout: 500 });
  const tree: Tree = drawn.tree;
  const depth: number = tree.children?.length ?? 0;
  const cleared: null = await client.request("clear");
  await client.emit("clear");
  const picked: Point[] = await client.request("pick", { kind: "cat", lives: 3 });
  client.on("drawn", (payload) => payload.tree.label.toUpperCase());
  client.on("page", (payload) => payload.items.map((p) => p.x + p.y));
  client.on("color", (payload) => (payload === "green" ? 1 : 2));
  client.on("error", (payload) => payload.code.length);
  client.on("close", (info) => info.willReconnect);
  client.on("recovery", (info) => info.recovered);
  try {
    await client.request("draw", draw);
  } catch (error) {
    if (error instanceof EventError) console.log(error.code, error.payload.message);
    if (error instanceof ClientError && error.code === "timeout") console.log("slow");
  }
  console.log(depth, cleared, picked);
}
void main();
"""

# Each misuse, and the compiler error it must cause.
MISUSES = {
    "wrong payload type": ('client.request("pick", { kind: "cat", lives: "nine" });', "TS2322"),
    "unknown event": ('client.emit("paint", {});', "TS2345"),
    "bad enum value": (
        'client.emit("draw", { points: [], color: "blue", pet: { kind: "cat" } });',
        "TS2322",
    ),
    "wrong discriminator": ('client.request("pick", { kind: "cow" });', "TS2322"),
    "missing payload": ('client.request("draw");', "TS2554"),
    "wrong ack use": ('client.request("draw", draw).then((d) => d.tree.nope);', "TS2339"),
    "wrong server payload": ('client.on("drawn", (p) => p.missing);', "TS2339"),
    "server event as client event": ('client.emit("drawn", { id: 1 });', "TS2345"),
}
MISUSE_PROLOGUE = """\
import { connect } from "./orcs-client.js";
import type { V1WsCanvasBoardEvents, Draw } from "./events.js";
const client = connect<V1WsCanvasBoardEvents>("ws://localhost/v1/ws/canvas/1");
const draw: Draw = { points: [], color: "red", pet: { kind: "cat" } };
void draw;
"""


@pytest.fixture(scope="module")
def tsc() -> Path:
    return node_toolchain()[1]


def compile_ts(tsc: Path, folder: Path, files: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tsc), *TSC_FLAGS, *files],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def project(tmp_path: Path, events: str) -> Path:
    for name in ("orcs-client.js", "orcs-client.d.ts"):
        shutil.copy(STATIC / name, tmp_path / name)
    (tmp_path / "events.d.ts").write_text(events)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    return tmp_path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastapi_orcs_ws", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


# -- the examples --------------------------------------------------------------------------


CHAT_PROGRAM = """\
import { connect } from "./orcs-client.js";
import type { WsChatEvents, ChatBroadcast } from "./events.js";
const chat = connect<WsChatEvents>("ws://localhost:42069/ws/chat");
chat.on("message", (m: ChatBroadcast) => console.log(m.from, m.text, m.timestamp));
chat.on("welcome", (w) => console.log(w.clientId));
void chat.request("join", { room: "blue" }).then((ack) => ack["room"]);
void chat.emit("message", { text: "hi" });
"""

NOTIFICATIONS_PROGRAM = """\
import { connect } from "./orcs-client.js";
import type { WsNotificationsEvents } from "./events.js";
const inbox = connect<WsNotificationsEvents>("/ws/notifications", { token: () => "jwt" });
inbox.on("notification", (n) => console.log(n.title, n.body ?? "", n.createdAt));
void inbox.request("read").then((unread) => unread.count + 1);
"""


def test_chat_example_types_compile(tsc: Path, tmp_path: Path) -> None:
    result = cli("typescript", "examples.chat_app.main:app")
    assert result.returncode == 0, result.stderr
    from examples.chat_app.main import app

    assert result.stdout == typescript_definitions(app)  # the CLI prints exactly this
    folder = project(tmp_path, result.stdout)
    (folder / "chat.ts").write_text(CHAT_PROGRAM)
    compiled = compile_ts(tsc, folder, ["events.d.ts", "chat.ts"])
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    (folder / "bad.ts").write_text(
        CHAT_PROGRAM + 'void chat.request("join", { room: 1 });\n'  # the example
    )
    refused = compile_ts(tsc, folder, ["events.d.ts", "bad.ts"])
    assert refused.returncode != 0
    assert re.search(r"bad\.ts\(8,\d+\): error TS2322", refused.stdout), refused.stdout


def test_notifications_example_types_compile(tsc: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.d.ts"
    secret = {"WS_JWT_SECRET": "typescript-test-secret-long-enough-0123456789"}
    result = cli("typescript", "examples.notifications.main:app", "-o", str(out), env=secret)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    folder = project(tmp_path, out.read_text())
    (folder / "inbox.ts").write_text(NOTIFICATIONS_PROGRAM)
    compiled = compile_ts(tsc, folder, ["events.d.ts", "inbox.ts"])
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


# -- the test app: every kind of model -----------------------------------------------------


def test_models_become_types(tmp_path: Path) -> None:
    text = typescript_definitions(shapes_app())
    assert 'export type Color = "red" | "green";' in text
    assert "export interface Point {\n  x: number;\n  y: number;\n}" in text
    assert re.search(r"pet: Cat \| Dog;", text), text
    assert "label?: string | null;" in text
    assert "children?: Tree[];" in text  # recursive, and optional (it has a default)
    assert "corner?: [number, number] | null;" in text
    assert "/** Draw a shape. */" in text
    assert '"/v1/ws/canvas/{board}": V1WsCanvasBoardEvents;' in text


def test_types_compile_and_misuse_fails(tsc: Path, tmp_path: Path) -> None:
    folder = project(tmp_path, typescript_definitions(shapes_app()))
    (folder / "good.ts").write_text(GOOD_PROGRAM)
    compiled = compile_ts(tsc, folder, ["events.d.ts", "good.ts"])
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr

    files = []
    for n, (line, _) in enumerate(MISUSES.values()):
        (folder / f"misuse{n}.ts").write_text(MISUSE_PROLOGUE + line + "\n")
        files.append(f"misuse{n}.ts")
    refused = compile_ts(tsc, folder, ["events.d.ts", *files])
    assert refused.returncode != 0
    line_no = MISUSE_PROLOGUE.count("\n") + 1
    for n, (name, (_, code)) in enumerate(MISUSES.items()):
        pattern = rf"misuse{n}\.ts\({line_no},\d+\): error {code}"
        assert re.search(pattern, refused.stdout), f"{name}: {refused.stdout}"


def test_types_come_from_the_asyncapi_document() -> None:
    app = shapes_app()
    document = asyncapi_document(app)
    text = typescript_definitions(app, document=document)
    assert text == typescript_definitions(app)
    for name in document["components"]["schemas"]:
        assert re.search(rf"export (type|interface) {re.escape(name)}\b", text), name


def test_client_lifecycle_names_cannot_be_emitted() -> None:
    router = WebSocketRouter()
    router.ws("/ws/x", emits={"close": dict})
    app = FastAPI()
    app.include_router(router)
    with pytest.raises(ConfigurationError, match=r"'close'.*rename"):
        typescript_definitions(app)
    result = cli("typescript", "no_such_module_here:app")
    assert result.returncode != 0 and "cannot import" in result.stderr
    result = cli("typescript", "examples.chat_app.main")
    assert result.returncode != 0 and "MODULE:APP" in result.stderr


def test_client_files_command(tmp_path: Path) -> None:
    result = cli("client", str(tmp_path / "web"))
    assert result.returncode == 0, result.stderr
    for name in ("orcs-client.js", "orcs-client.d.ts"):
        assert (tmp_path / "web" / name).read_bytes() == (STATIC / name).read_bytes()


def test_client_declarations_compile_alone(tsc: Path, tmp_path: Path) -> None:
    folder = project(tmp_path, "export {};\n")
    compiled = compile_ts(tsc, folder, ["orcs-client.d.ts"])
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
