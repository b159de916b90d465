#!/usr/bin/env bash
# FastAPI's own router tests, run with WebSocketRouter in place of APIRouter.
#
# Usage: scripts/fastapi-router-tests.sh [extra pytest arguments]
#
# 1. Downloads the source distribution of the FastAPI installed in .venv
#    (pip download --no-binary :all: --no-deps fastapi==<version>).
# 2. Makes a venv next to it with the same versions as .venv (pip freeze as constraints),
#    this project (editable) and FastAPI's test dependencies; kept for the next run.
# 3. Selects FastAPI's router-related tests: every test module that uses APIRouter, and the
#    tutorial tests of every docs_src example that does.
# 4. Runs them twice: as released (APIRouter), and with every APIRouter name in tests/ and
#    docs_src/ replaced by WebSocketRouter (Python tokens only: strings and error messages are
#    left alone), then prints both counts and every test that passes with APIRouter but not
#    with WebSocketRouter. Exit status 1 when there is such a test.
#
# Everything lives in $FASTAPI_ROUTER_TESTS_DIR (default ~/.cache/fastapi-orcs-ws/...).
# It takes a few minutes the first time (downloads), about a minute after that; it is not
# part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "no .venv: run scripts/test.sh once (it creates it)" >&2; exit 2; }
VERSION=$("$PY" -c 'import fastapi; print(fastapi.__version__)')
WORK="${FASTAPI_ROUTER_TESTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fastapi-orcs-ws/fastapi-router-tests-$VERSION}"
mkdir -p "$WORK"
echo "FastAPI $VERSION; working in $WORK"

if [ ! -f "$WORK/src/pyproject.toml" ]; then
  "$PY" -m pip download -qq --no-binary :all: --no-deps "fastapi==$VERSION" -d "$WORK/download"
  rm -rf "$WORK/src" && mkdir -p "$WORK/src"
  tar xzf "$WORK/download/fastapi-$VERSION.tar.gz" -C "$WORK/src" --strip-components=1
fi

VENV="$WORK/venv"
if [ ! -f "$VENV/.installed" ]; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$PY" -m pip freeze --exclude-editable > "$WORK/constraints.txt"
  # FastAPI's test dependencies that its router-related tests import.
  "$VENV/bin/python" -m pip install -qq --upgrade pip
  "$VENV/bin/python" -m pip install -qq -c "$WORK/constraints.txt" -e "$ROOT" \
    "fastapi==$VERSION" pytest pytest-timeout pytest-xdist httpx httpx2 dirty-equals inline-snapshot \
    "anyio[trio]" pyjwt "pwdlib[argon2]" pyyaml python-multipart sqlmodel opentelemetry-sdk
  touch "$VENV/.installed"
fi

"$VENV/bin/python" - "$WORK" "$@" <<'PYTHON'
"""Select, substitute, run twice, compare."""

import ast
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
import xml.etree.ElementTree as ET
from pathlib import Path

work = Path(sys.argv[1])
extra = sys.argv[2:]
src = work / "src"

IMPORT = "from fastapi_orcs_ws import WebSocketRouter  # added by fastapi-router-tests.sh\n"


def substituted(text: str) -> str:
    """``text`` with every use of the name APIRouter renamed WebSocketRouter, imported from
    fastapi_orcs_ws. Import statements, strings and comments are left alone (so an imported
    APIRouter stays available, and messages that name APIRouter are unchanged)."""
    module = ast.parse(text)
    imports = {
        line
        for node in ast.walk(module)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for line in range(node.lineno, (node.end_lineno or node.lineno) + 1)
    }
    lines = text.splitlines(keepends=True)
    edits = [
        token.start
        for token in tokenize.generate_tokens(io.StringIO(text).readline)
        if token.type == tokenize.NAME
        and token.string == "APIRouter"
        and token.start[0] not in imports
    ]
    if not edits:
        return text
    for row, col in reversed(edits):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + "WebSocketRouter" + line[col + len("APIRouter") :]
    first = next(
        (
            node
            for i, node in enumerate(module.body)
            if not (i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
            and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
        ),
        None,
    )
    at = (first.lineno - 1) if first is not None else len(lines)
    if first is not None and getattr(first, "decorator_list", None):
        at = min(d.lineno for d in first.decorator_list) - 1
    lines.insert(at, IMPORT)
    return "".join(lines)


def uses_router(path: Path) -> bool:
    return re.search(r"\bAPIRouter\b", path.read_text("utf-8", errors="replace")) is not None


def select(tree: Path) -> list[str]:
    examples = {
        path.relative_to(tree / "docs_src").parts[0]
        for path in (tree / "docs_src").rglob("*.py")
        if uses_router(path)
    }
    chosen = set()
    for path in (tree / "tests").rglob("test_*.py"):
        text = path.read_text("utf-8", errors="replace")
        if uses_router(path) or any(f"docs_src.{name}" in text for name in examples):
            chosen.add(str(path.relative_to(tree)))
    return sorted(chosen)


def prepare(name: str, swap: bool) -> Path:
    tree = work / name
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(src, tree)
    if swap:
        files = uses = 0
        for folder in ("tests", "docs_src"):
            for path in (tree / folder).rglob("*.py"):
                text = path.read_text("utf-8")
                if uses_router(path):
                    new = substituted(text)
                    path.write_text(new, "utf-8")
                    files += new != text
                    uses += new.count("WebSocketRouter") - 1 if new != text else 0
        print(f"WebSocketRouter in place of APIRouter: {uses} uses in {files} files")
    return tree


def run(tree: Path, tests: list[str]) -> dict[str, str]:
    report = tree / "junit.xml"
    env = dict(os.environ)
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "--continue-on-collection-errors", "--timeout=60", f"--junitxml={report}", *extra, *tests],
        cwd=tree, check=False, stdout=subprocess.DEVNULL, env=env,
    )
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            outcomes[name] = "failed"
        elif "skipped" in kinds:
            outcomes[name] = "skipped"
        else:
            outcomes[name] = "passed"
    return outcomes


def counts(outcomes: dict[str, str]) -> str:
    total = len(outcomes)
    by = {k: sum(1 for v in outcomes.values() if v == k) for k in ("passed", "failed", "skipped")}
    return f"{total} tests: {by['passed']} passed, {by['failed']} failed, {by['skipped']} skipped"


plain_tree, ours_tree = prepare("run-apirouter", False), prepare("run-websocketrouter", True)
tests = select(plain_tree)
print(f"{len(tests)} router-related test modules")
plain = run(plain_tree, tests)
ours = run(ours_tree, tests)
print(f"APIRouter:       {counts(plain)}")
print(f"WebSocketRouter: {counts(ours)}")
worse = sorted(n for n, v in plain.items() if v == "passed" and ours.get(n) != "passed")
better = sorted(n for n, v in ours.items() if v == "passed" and plain.get(n) != "passed")
print(f"pass with APIRouter, not with WebSocketRouter: {len(worse)}")
for name in worse:
    print(f"  {name}")
if better:
    print(f"pass only with WebSocketRouter: {len(better)}")
sys.exit(1 if worse else 0)
PYTHON
