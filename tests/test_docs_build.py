"""The docs build strictly, the API reference covers exactly the public API and renders its
cross-references, and the install commands the README gives produce a working package."""

from __future__ import annotations

import html
import importlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = (
    "fastapi_orcs_ws",
    "fastapi_orcs_ws.testing",
    "fastapi_orcs_ws.asyncapi",
    "fastapi_orcs_ws.client",
    "fastapi_orcs_ws.typescript",
    "fastapi_orcs_ws.backends",
)
# Sphinx roles left in a docstring reach the page as literal text (":class:Name").
SPHINX_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj|ref):`?[\w.~]")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    out = home / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(home)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield out


@pytest.fixture(scope="module")
def reference(site: Path) -> str:
    return (site / "reference" / "index.html").read_text("utf-8")


def test_mkdocs_build_strict(site: Path) -> None:
    # Offline-friendly: no Google Fonts.
    assert "fonts.googleapis.com" not in (site / "index.html").read_text("utf-8")


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_the_reference_covers_each_public_module(reference: str, module: str) -> None:
    anchors = set(re.findall(r'id="([^"]+)"', reference))
    names = importlib.import_module(module).__all__
    missing = [name for name in names if f"{module}.{name}" not in anchors]
    assert not missing, f"not in the API reference: {missing}"


def test_the_reference_lists_public_modules_only(reference: str) -> None:
    anchors = set(re.findall(r'id="(fastapi_orcs_ws[.\w]*)"', reference))
    assert not [a for a in anchors if "._" in a.replace(".__version__", "")], "private names"
    documented = {".".join(anchor.split(".")[:2]) for anchor in anchors if anchor.count(".") >= 1}
    modules = {
        name
        for name in documented
        if type(_resolve(name)).__name__ == "module" and name not in PUBLIC_MODULES
    }
    assert not modules, f"internal modules in the API reference: {sorted(modules)}"


def _resolve(dotted: str) -> object:
    package, _, name = dotted.partition(".")
    return getattr(importlib.import_module(package), name, None)


def test_cross_references_render(reference: str) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", "", reference))
    raw = sorted({m.group(0) for m in SPHINX_ROLE.finditer(text)})
    assert not raw, f"raw Sphinx roles on the reference page: {raw}"
    # mkdocstrings turns [`Name`][fastapi_orcs_ws.Name] into links to the anchor.
    assert 'href="#fastapi_orcs_ws.AuthenticationError"' in reference


def test_no_sphinx_roles_in_public_docstrings() -> None:
    """The source agrees with the page: a role in any public docstring is a defect."""
    import fastapi_orcs_ws

    found = []
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(module)
        for name in [*mod.__all__, ""]:
            obj = getattr(mod, name) if name else mod
            docs = [getattr(obj, "__doc__", None) or ""]
            if isinstance(obj, type):
                docs += [getattr(m, "__doc__", None) or "" for m in vars(obj).values()]
            found += [
                f"{module}.{name}: {m.group(0)}" for d in docs for m in SPHINX_ROLE.finditer(d)
            ]
    assert fastapi_orcs_ws.__all__
    assert not found, "\n".join(sorted(set(found)))


# -- installing as the README says -----------------------------------------------------------


def test_a_built_wheel_installs_with_its_extras(tmp_path: Path) -> None:
    """`pip wheel --no-deps -w dist .` (README, getting-started) gives a wheel holding the
    package, its static files and py.typed, with the extras the docs name; installed on its
    own, it imports and serves its docs page from the wheel's files."""
    dist = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = dist.glob("fastapi_orcs_ws-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    for needed in (
        "fastapi_orcs_ws/py.typed",
        "fastapi_orcs_ws/static/ws-docs.html",
        "fastapi_orcs_ws/testing.py",
        "fastapi_orcs_ws/backends/redis.py",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "docs/", "examples/"))]
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert {"redis", "testing", "client"} <= extras
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("httpx2") and "testing" in r for r in requires)
    assert any(r.startswith("redis") and "redis" in r.split(";")[1] for r in requires if ";" in r)

    target = tmp_path / "site-packages"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-t", str(target), str(wheel)],
        capture_output=True,
        timeout=300,
        check=True,
    )
    probe = (
        "import fastapi_orcs_ws, fastapi_orcs_ws.testing;"
        "from fastapi_orcs_ws.asyncapi import render_page;"
        f"assert fastapi_orcs_ws.__file__.startswith({str(target)!r}), fastapi_orcs_ws.__file__;"
        "print(fastapi_orcs_ws.__version__)"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,  # not the checkout: the wheel's copy must be the one imported
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == metadata["Version"]
