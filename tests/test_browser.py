"""`resnetlab serve` used as a person uses it: Debian's Chromium, headless, driven by Selenium
through Debian's chromium-driver, uploads an image and sees the top-5 and the overlay."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_squares
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

_INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


@pytest.fixture()
def browser_files() -> tuple[str, str]:
    """Chromium and chromedriver on the PATH; skips (fails under CI=true) without them."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    message = f"the browser test needs Debian's chromium and chromium-driver: {_INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture()
def served(squares_checkpoint: Path) -> Iterator[str]:
    """`resnetlab serve` in its own process on a free port (``--port 0``): its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "resnetlab", "serve", "--checkpoint", str(squares_checkpoint),
         "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout]).start()
    try:
        first = lines.get(timeout=300)  # loading torch on a busy machine
        assert " at http://127.0.0.1:" in first, first
        yield first.split(" at ")[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_page_shows_top5_and_overlay_in_chromium(
    browser_files: tuple[str, str], served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium, driver = browser_files
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver
    image = next(iter(make_squares(tmp_path / "upload", per_class=1, seed=3)))  # a red square
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--window-size=900,700"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    try:
        browser.get(served)
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#top li")) == 5)
        classes = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#top li .class")]
        assert sorted(classes) == ["blue", "green", "magenta", "red", "yellow"]
        assert classes[0] == image.parent.name
        overlay = browser.find_element(By.ID, "overlay")
        loaded = "return arguments[0].complete && arguments[0].naturalWidth"
        wait.until(lambda b: b.execute_script(loaded, overlay) == 256)
        assert overlay.is_displayed()
        assert browser.find_element(By.ID, "caption").text.startswith(f"{classes[0]} ")
        screenshot = tmp_path / "page.png"
        assert browser.save_screenshot(str(screenshot))
        with Image.open(screenshot) as shot:
            assert shot.format == "PNG" and shot.width >= 600
        # garbage: the page says why, and the next image works again
        garbage = tmp_path / "notes.png"
        garbage.write_text("not a picture")
        browser.find_element(By.ID, "file").send_keys(str(garbage))
        status = browser.find_element(By.ID, "status")
        wait.until(lambda b: "HTTP 415" in status.text)
        assert "notes.png: not an image" in status.text
    finally:
        browser.quit()
