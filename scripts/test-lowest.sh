#!/usr/bin/env bash
# Run the test suite against the LOWEST versions pyproject.toml allows.
#
# A second environment, .venv-lowest, gets every runtime dependency, and those of the extras
# users install (redis, testing, client, metrics, otel, orjson, msgspec), pinned to its lower bound by a
# constraints file that scripts/lowest_constraints.py generates from pyproject.toml; the test
# tools are the newest that fit.
# It then checks the installed versions are exactly the bounds, and runs pytest.
#
# Left out here, and run by scripts/test.sh with the newest versions (CI must stay under 15
# minutes on 2 cores):
#   - browser tests (-m "not browser"): they exercise Chromium and our JavaScript, not the
#     Python dependencies, and are the slowest part of the suite;
#   - tests/test_docs_build.py: mkdocs and mkdocstrings are documentation tools, not
#     dependencies of the library;
#   - the JavaScript/TypeScript tooling tests (test_js_client, test_typescript,
#     test_asyncapi_tooling): Node programs reading our documents; the documents themselves,
#     built by the lowest pydantic, are still checked by test_asyncapi and by the official
#     parser in test_asyncapi_parser;
#   - the multi-process Redis crash and cluster suites (test_redis_crash, test_redis_cluster):
#     minutes of killed processes and restarted servers that call the same redis-py API as
#     test_redis_backend, test_recovery_redis and the manager state machine, which run here.
# Redis tests run (redis-py is pinned to its bound too) when redis-server is installed.
#
# Usage: scripts/test-lowest.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-lowest

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "fastapi-orcs-ws needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PYTHON" scripts/lowest_constraints.py >"$constraints"

stamp="$VENV/.installed-$(cat "$constraints" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  echo "installing the lowest allowed versions into $VENV"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
    "$VENV/bin/python" -m pip install -c "$constraints" -e ".[dev]"; } >"$VENV/install.log" 2>&1; then
    grep -v "^WARNING: Location" "$VENV/install.log" | tail -40 >&2
    echo "could not install the lower bounds together: fix them in pyproject.toml" >&2
    exit 1
  fi
  touch "$stamp"
fi

echo "lowest allowed versions:"
"$VENV/bin/python" scripts/lowest_constraints.py --check "$VENV/bin/python"

"$VENV/bin/python" -m pytest -m "not browser" \
  --ignore=tests/test_docs_build.py \
  --ignore=tests/test_js_client.py \
  --ignore=tests/test_typescript.py \
  --ignore=tests/test_asyncapi_tooling.py \
  --ignore=tests/test_redis_crash.py \
  --ignore=tests/test_redis_cluster.py \
  -p no:cacheprovider "$@"
