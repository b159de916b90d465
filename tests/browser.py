"""Shared by the browser tests: the Debian Chromium under Playwright's sync API.

The sync API is used from plain test functions so it never meets anyio's event loop. Without
``/usr/bin/chromium`` or Playwright the tests that need them are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000  # upper bound for every Playwright wait


def playwright_sync_api() -> ModuleType:
    """``playwright.sync_api``; skips (the whole module, at import) without Chromium or it."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt install chromium)", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium, closed afterwards."""
    sync_api = playwright_sync_api()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def page_opener(browser: Any, **context_options: Any) -> Iterator[Callable[[], Any]]:
    """A function that opens pages, each in its own browser context (like separate users).

    Every context is closed afterwards; then any uncaught JavaScript error in a page fails.
    """
    contexts: list[Any] = []
    js_errors: list[str] = []

    def open_page() -> Any:
        context = browser.new_context(**context_options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: js_errors.append(str(exc)))
        return page

    try:
        yield open_page
    finally:
        for context in contexts:
            context.close()
    assert not js_errors, f"uncaught JavaScript errors: {js_errors}"
