"""Print pip constraints that pin every runtime dependency to its declared lower bound.

Reads ``pyproject.toml``: ``[project].dependencies`` and the extras a user installs
(``redis``, ``testing``, ``client``, ``metrics``, ``otel``, ``orjson``, ``msgspec``). Each
requirement must have a ``>=`` lower bound (exit 1 naming the ones that do not); the
development tools of ``dev`` are not pinned. Used by ``scripts/test-lowest.sh``;
``--check VENV_PYTHON`` instead verifies that an installed environment holds exactly those
versions.

Usage: python scripts/lowest_constraints.py [--check .venv-lowest/bin/python]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USER_EXTRAS = ("redis", "testing", "client", "metrics", "otel", "orjson", "msgspec")
# name[extras] >=version [, more specifiers] [; marker]
REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)(?:;.*)?$"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bounds() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in USER_EXTRAS:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    bounds: dict[str, str] = {}
    missing = []
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"cannot read the requirement {requirement!r}")
        found = re.search(r">=\s*([0-9][^,\s]*)", match["spec"])
        if found is None:
            missing.append(requirement)
            continue
        bounds[canonical(match["name"])] = found.group(1)
    if missing:
        raise SystemExit(f"no lower bound (>=) for: {', '.join(missing)}")
    return bounds


def check(python: str, bounds: dict[str, str]) -> int:
    listing = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import json

    installed = {canonical(p["name"]): p["version"] for p in json.loads(listing)}
    wrong = []
    for name, version in sorted(bounds.items()):
        have = installed.get(name)
        print(f"  {name:20s} lower bound {version:10s} installed {have}")
        if have is None or _release(have) != _release(version):
            wrong.append(name)
    if wrong:
        print(f"not at their lower bound: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


def _release(version: str) -> tuple[int, ...]:
    """``"0.52.1"`` -> ``(0, 52, 1)``; ``"2.7"`` and ``"2.7.0"`` compare equal."""
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def main() -> int:
    bounds = lower_bounds()
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        return check(sys.argv[2], bounds)
    for name, version in sorted(bounds.items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
