#!/usr/bin/env bash
# Serve the chat example at http://127.0.0.1:42069 (installs what it needs first).
source "$(dirname "$0")/_venv.sh" "[metrics]"
exec .venv/bin/python -m examples.chat_app "$@"
