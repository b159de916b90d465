"""Command line: ``python -m fastapi_orcs_ws COMMAND``.

``typescript MODULE:APP [-o FILE]``
    Write the TypeScript types of the app's events (see
    [`fastapi_orcs_ws.typescript`][fastapi_orcs_ws.typescript]) to standard output or ``FILE``.
``client DIRECTORY``
    Copy the client, ``orcs-client.js`` and its types ``orcs-client.d.ts``, into ``DIRECTORY``
    (for a bundler or a Node program; browsers can load it from the app instead).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from .errors import ConfigurationError
from .typescript import typescript_definitions

CLIENT_FILES = ("orcs-client.js", "orcs-client.d.ts")


def load_app(spec: str) -> FastAPI:
    """Import ``"package.module:attribute"`` (as uvicorn does) and check it is a FastAPI app."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(
            f"error: expected MODULE:APP (e.g. examples.chat_app.main:app), not {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SystemExit(f"error: {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, FastAPI):
        raise SystemExit(f"error: {spec} is a {type(target).__name__}, not a FastAPI application")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastapi_orcs_ws", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ts = commands.add_parser("typescript", help="write the TypeScript types of an app's events")
    ts.add_argument("app", help="MODULE:APP, e.g. examples.chat_app.main:app")
    ts.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    client = commands.add_parser("client", help="copy orcs-client.js and orcs-client.d.ts")
    client.add_argument("directory", type=Path)
    args = parser.parse_args(argv)

    if args.command == "typescript":
        # Like uvicorn: modules are found relative to the current directory.
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")
        app = load_app(args.app)
        try:
            text = typescript_definitions(app)
        except ConfigurationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
        return 0

    args.directory.mkdir(parents=True, exist_ok=True)
    static = resources.files(__package__).joinpath("static")
    for name in CLIENT_FILES:
        (args.directory / name).write_text(
            static.joinpath(name).read_text("utf-8"), encoding="utf-8"
        )
        print(args.directory / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
