#!/usr/bin/env bash
# Run every check: ruff, mypy, the whole pytest suite (incl. Chromium, Redis, docs build).
source "$(dirname "$0")/_venv.sh" "[dev]"

# System packages the tests drive for real: headless Chromium, redis-server, and Node with npm
# (the official AsyncAPI parser; Node 22 and TypeScript themselves come from npm in the tests).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]}: install them (e.g. apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
