"""A real headless chromium driven by selenium, for the status board's page.

Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). The
machine may have no internet: the flags keep chromium from calling home, and
selenium is given the driver's path, so its manager never tries to fetch one.
Used by the page's test and by `bench/board_screenshot.py`.
"""

from __future__ import annotations

import os
import shutil

REQUIRE_ENV = "STREAM_DETECTOR_REQUIRE_BROWSER"
INSTALL_HINT = "apt-get install chromium chromium-driver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def missing() -> str | None:
    """What is missing to drive chromium, in one sentence, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed; install the [test] extra"
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not installed; install it with `{INSTALL_HINT}`"
    return None


def required() -> bool:
    """Whether a missing browser is a failure (CI) rather than a skip."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def chromium(user_data_dir: str, width: int = 1200, height: int = 900):
    """A headless chromium with a fresh profile in `user_data_dir`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(options=options,
                            service=Service(executable_path=shutil.which("chromedriver")))
