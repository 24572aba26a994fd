"""Debian's Chromium driven by Playwright, as the browser tests use it (never a browser
Playwright downloads): where it is, the flags a closed network needs, and a launcher."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: Without the background-networking flags Chromium keeps calling hosts it cannot reach.
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]
#: Skips a browser test where Chromium or Playwright is missing, saying which.
NEEDS_BROWSER = [
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="no /usr/bin/chromium (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright is not installed (pip install -e '.[test]')"),
]


@contextmanager
def chromium(*extra_args: str) -> Iterator[Any]:
    """A headless Chromium for the block, with `extra_args` after the usual flags."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=[*BROWSER_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()
