"""Headless Chromium for the status page's tests: Debian's ``chromium`` driven by
Playwright, which never downloads a browser of its own here.

``LOADER_TEST_CHROMIUM`` names the executable; else ``chromium`` on the PATH. Without
one, the tests fail saying what to install (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

ENV_VAR = "LOADER_TEST_CHROMIUM"


def chromium_path() -> str:
    """The Chromium executable to drive, or fail the test saying how to get one."""
    path = os.environ.get(ENV_VAR) or shutil.which("chromium")
    if not path:
        pytest.fail(
            "The status page's tests need Chromium: apt-get install chromium (Debian), "
            f"or set {ENV_VAR} to a Chromium executable",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium, shared by the tests of a module."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()
