"""A real browser for page tests: headless Chromium from Debian's packages, driven by Selenium.

Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium
chromium-driver), so Selenium Manager never tries to download a browser or a driver.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

# A laptop screen: the admin's lists must fit 1400 px without scrolling sideways.
WINDOW = (1400, 1000)
# Set to a folder (e.g. docs/screenshots) to keep the screenshots the tests take for the README.
SCREENSHOTS_ENV = "SCHEDULER_SCREENSHOTS_DIR"


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) from the system, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class Browser:
    """One headless Chromium for one test, with waits that fail naming what they waited for."""

    def __init__(self, base_url: str, artifacts: Path) -> None:
        paths = chromium_paths()
        assert paths is not None, "chromium and chromedriver are needed"
        binary, driver = paths
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for argument in (
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--lang=en-US",
        ):
            options.add_argument(argument)
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.driver.set_page_load_timeout(30)
        self.base_url = base_url.rstrip("/")
        self.artifacts = artifacts
        self.shots: list[Path] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def find(self, css: str, *, timeout: float = 10) -> WebElement:
        return self.wait(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css)), timeout, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, condition: Any, timeout: float, what: str) -> Any:
        try:
            return WebDriverWait(self.driver, timeout).until(condition)
        except TimeoutException as exc:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} on {self.driver.current_url}") from exc

    def wait_for_text(self, css: str, text: str, *, timeout: float = 10) -> None:
        self.wait(
            expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text),
            timeout,
            f"{text!r} in {css}",
        )

    def fill(self, css: str, value: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(value)

    def choose(self, css: str, *, value: str) -> None:
        Select(self.find(css)).select_by_value(value)

    def click(self, css: str) -> None:
        self.find(css).click()

    def submit(self, css: str) -> None:
        """Click a submit button and wait for the next page to replace this one."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.click(css)

        def replaced(_driver: Any) -> bool:
            try:
                old.is_enabled()
            except StaleElementReferenceException:
                return True
            except WebDriverException as exc:
                # Mid-navigation chromedriver can answer this instead of "stale element".
                if "does not belong to the document" in str(exc):
                    return True
                raise
            return False

        self.wait(replaced, 30, f"the page after clicking {css}")

    def check(self, css: str) -> None:
        """Tick a radio button or checkbox (through its click, so the page's change handlers run)."""
        field = self.wait(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css)), 10, css)
        if not field.is_selected():
            field.click()

    def resize(self, width: int, height: int) -> None:
        """The viewport's size in CSS pixels, e.g. (375, 812) for a phone."""
        self.driver.set_window_size(width, height)
        inner = self.driver.execute_script("return [window.innerWidth, window.innerHeight]")
        # Headless Chromium's window includes no frame, but ask rather than assume.
        self.driver.set_window_size(width + (width - inner[0]), height + (height - inner[1]))

    def text(self, css: str = "body") -> str:
        return self.find(css).text

    def page_width(self) -> int:
        return int(self.driver.execute_script("return document.documentElement.scrollWidth"))

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        """Saved with the test's artefacts, and in $SCHEDULER_SCREENSHOTS_DIR when that is set; with
        ``full_page`` the window is made as tall as the page for the shot, then put back."""
        path = self.artifacts / f"{name}.png"
        size = self.driver.get_window_size()
        if full_page:
            height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
            self.driver.set_window_size(size["width"], max(size["height"], height + 100))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            if full_page:
                self.driver.set_window_size(size["width"], size["height"])
        self.shots.append(path)
        keep = os.environ.get(SCREENSHOTS_ENV)
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(keep) / f"{name}.png")
        return path

    def console_errors(self) -> list[str]:
        """The page's script errors and failed loads (the browser's own favicon probe aside)."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry.get("level") == "SEVERE" and "/favicon.ico" not in entry["message"]
        ]

    def quit(self) -> None:
        self.driver.quit()
