"""Headless Chromium for the browser tests: Debian's ``chromium`` driven through its
``chromedriver`` by Selenium (``make browser`` installs both when missing)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise RuntimeError(
            f"{program} is not installed; `make browser` installs Debian's chromium and "
            "chromium-driver"
        )
    return path


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[webdriver.Chrome]:
    """A headless Chromium session; closed on exit."""
    options = webdriver.ChromeOptions()
    options.binary_location = _need("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--lang=en-US",  # the tests read English text
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(_need("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()
