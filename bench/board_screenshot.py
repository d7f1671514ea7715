"""A screenshot of the status board during `stream-detector demo`, for the README.

Runs the demo as `make demo` does (`stream-detector demo`), reads the board's
address from its first line, keeps the page open in a headless chromium (see
tests/browser.py) and takes the picture (at a desktop's width and a phone's)
the first time the page itself shows an open incident with at least
`--resolved` resolved ones beside it; the
demo then runs to its end, and its output is checked to have the board's
line first. Needs chromium and chromium-driver (`apt-get install chromium
chromium-driver`) and the [test] extra.

    python bench/board_screenshot.py [--output docs/board-demo.png] [--width 1000]
        [--phone-output docs/board-demo-phone.png]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests/browser.py, the one place chromium is set up

from tests import browser  # noqa: E402

SHOWN = ("return [document.querySelectorAll('#open .card').length,"
         " document.querySelectorAll('#resolved .card').length]")


PHONE_WIDTH = 390


def picture(driver, width: int, mobile: bool, path: str) -> None:
    """The whole page at `width` CSS pixels, not the window: a viewport as tall as the
    page (to a limit), laid out as a phone would when `mobile`."""
    metrics = {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {**metrics, "height": min(height, 2400)})
    driver.save_screenshot(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "docs/board-demo.png"))
    parser.add_argument("--phone-output", default=str(REPO / "docs/board-demo-phone.png"))
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--resolved", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    problem = browser.missing()
    if problem is not None:
        raise SystemExit(problem)

    demo = subprocess.Popen([str(Path(sys.executable).parent / "stream-detector"), "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = demo.stdout.readline()
    match = re.match(r"status board on (http://\S+) ", first)
    if match is None:
        demo.kill()
        raise SystemExit(f"the demo's first line does not give the board: {first!r}")
    url = match.group(1)
    shot = None
    with tempfile.TemporaryDirectory() as profile:
        driver = browser.chromium(profile, width=args.width, height=900)
        try:
            deadline = time.monotonic() + args.timeout
            while shot is None and demo.poll() is None and time.monotonic() < deadline:
                try:
                    if driver.current_url != url:
                        driver.get(url)
                    open_now, resolved = driver.execute_script(SHOWN)
                except Exception:  # the board not listening yet: try again
                    open_now = resolved = 0
                    time.sleep(0.5)
                    driver.get(url)
                if open_now >= 1 and resolved >= args.resolved:
                    picture(driver, args.width, False, args.output)
                    picture(driver, PHONE_WIDTH, True, args.phone_output)
                    shot = (open_now, resolved)
                time.sleep(0.1)
        finally:
            driver.quit()
    rest = demo.stdout.read()
    demo.wait()
    if shot is None:
        raise SystemExit("the page never showed an open incident beside "
                         f"{args.resolved} resolved ones")
    print(f"{args.output}, {args.phone_output}: {shot[0]} open and {shot[1]} resolved "
          "incidents on the page")
    print(first + rest, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
