"""Node 22 and the TypeScript compiler, from npm with the committed package-lock.

The machine's own Node may be older (Node 20 has no global ``WebSocket`` without
``--experimental-websocket``), so the tests use the ``node`` package from npm, which brings a
Node 22 binary, next to ``typescript``. ``npm ci`` runs once per change of the lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parent
NODE = JS_DIR / "node_modules" / ".bin" / "node"
TSC = JS_DIR / "node_modules" / ".bin" / "tsc"
_STAMP = JS_DIR / "node_modules" / ".orcs-lock-sha256"


def node_toolchain() -> tuple[Path, Path]:
    """``(node, tsc)``, installed with ``npm ci`` when missing or out of date.

    Skips when npm itself is missing; fails (with npm's output) when the install fails.
    """
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed (apt install npm): no Node toolchain for these tests")
    lock = JS_DIR / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    with open(JS_DIR / ".install.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one install at a time, whoever runs the tests
        current = _STAMP.read_text().strip() if _STAMP.exists() else ""
        if current != digest or not NODE.exists() or not TSC.exists():
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=JS_DIR,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0 or not NODE.exists():
                pytest.fail(
                    f"npm ci failed in {JS_DIR}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
                )
            _STAMP.write_text(digest)
    version = subprocess.run(
        [str(NODE), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    assert version.startswith("v22."), f"expected Node 22 from npm, got {version}"
    return NODE, TSC
