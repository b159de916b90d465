"""`mkdocs build --strict` passes, and the API reference covers every public name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastapi_orcs_ws

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parent.parent


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    reference = (site / "reference" / "index.html").read_text("utf-8")
    anchors = set(re.findall(r'id="([^"]+)"', reference))
    missing = [n for n in fastapi_orcs_ws.__all__ if f"fastapi_orcs_ws.{n}" not in anchors]
    assert not missing, f"not in the API reference: {missing}"
    for name in ("testing.EventClient", "testing.mint_token", "asyncapi.mount_docs"):
        assert f"fastapi_orcs_ws.{name}" in anchors
    # Offline-friendly: no Google Fonts.
    assert "fonts.googleapis.com" not in (site / "index.html").read_text("utf-8")
