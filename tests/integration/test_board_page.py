"""The status board's page in a real headless chromium, fed from the embedded broker.

Skipped, saying what to install, without chromium, chromium-driver or selenium;
under STREAM_DETECTOR_REQUIRE_BROWSER (`.ci/run` sets it) that is a failure.
Every wait polls the DOM against a deadline; the 5 s deadlines after a new
message are the page's promise (it polls every 2 s), not a measured speed.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from tests import browser
from tests.integration.kafka_helpers import board_settings, create_topic, produce, running_board

pytestmark = pytest.mark.integration

HOSTILE = "<img src=x onerror=alert(1)>"
UPDATE_DEADLINE = 5.0


@pytest.fixture
def driver(tmp_path):
    problem = browser.missing()
    if problem is not None:
        if browser.required():
            pytest.fail(f"{problem} ({browser.REQUIRE_ENV} is set, so this is a failure)",
                        pytrace=False)
        pytest.skip(problem)
    chromium = browser.chromium(str(tmp_path / "profile"), width=420, height=900)
    try:
        yield chromium
    finally:
        chromium.quit()


def alert(service: str, status: str = "firing", severity: str = "critical",
          bucket: str = "2026-01-08T15:40:00Z", reports: int = 472) -> dict:
    started = "2026-01-08T15:32:00Z"
    return {
        "alert_id": f"{service}/*/{started}", "status": status, "service": service,
        "region": None, "severity": severity, "started_at": started,
        "ended_at": bucket if status == "resolved" else None, "bucket_start": bucket,
        "bucket_seconds": 60, "reports": reports, "expected": 42.0, "score": 1.0,
        "regions": [["US", 411], ["IT", 81]], "problems": [["login", 185], [HOSTILE, 3]],
    }


EVENT = {
    "event_id": "2026-01-08T15:32:00Z/aws", "status": "firing",
    "started_at": "2026-01-08T15:32:00Z", "ended_at": None,
    "services": [["aws", None, "aws/*/2026-01-08T15:32:00Z"],
                 ["netflix", None, "netflix/*/2026-01-08T15:32:00Z"],
                 [HOSTILE, None, f"{HOSTILE}/*/2026-01-08T15:32:00Z"]],
    "suspected_cause": "aws", "regions": [["US", 900]], "problems": [["login", 700]],
    "reports": 1300,
}


def cards(driver, section: str) -> dict[str, dict]:
    """The cards in a section of the page, by alert or event id: their text and status."""
    return {c["id"]: c for c in driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' .card')].map(c => ({"
        "id: c.dataset.alertId || c.dataset.eventId, status: c.dataset.status,"
        "text: c.innerText, names: [...c.querySelectorAll('.name')].map(n => n.textContent),"
        "cause: (c.querySelector('.cause') || {}).textContent,"
        "lines: c.querySelectorAll('svg.spark polyline').length}))",
        f"#{section}")}


def until(driver, condition, timeout: float) -> float:
    """Poll `condition(driver)` until it holds; the seconds it took."""
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.monotonic()
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    return time.monotonic() - started


async def test_the_page_shows_incidents_and_events_live_and_names_as_text(
    broker, unique, driver
):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    settings = board_settings(broker.bootstrap_servers, unique,
                              grafana_url="http://grafana.example:3000")
    await create_topic(broker.bootstrap_servers, settings.alerts_topic, 1)
    await create_topic(broker.bootstrap_servers, settings.outages_topic, 1)
    bootstrap = broker.bootstrap_servers

    async def send(topic: str, *messages: dict) -> None:
        await produce(bootstrap, topic, [orjson.dumps(m) for m in messages],
                      [b"k"] * len(messages))

    await send(settings.alerts_topic, alert("aws"), alert("netflix", severity="warning"),
               alert(HOSTILE))
    await send(settings.outages_topic, EVENT)

    async with running_board(settings) as port:
        await asyncio.to_thread(driver.get, f"http://127.0.0.1:{port}/")
        wait = asyncio.to_thread

        # Loads and shows the open incidents and the event.
        await wait(until, driver, lambda d: len(cards(d, "open")) == 3, 10)
        shown = cards(driver, "open")
        assert "CRITICAL" in shown["aws/*/2026-01-08T15:32:00Z"]["text"].upper()
        assert "reports this minute 472 (usually 42)" in shown["aws/*/2026-01-08T15:32:00Z"]["text"]
        assert shown["aws/*/2026-01-08T15:32:00Z"]["lines"] == 2  # reports and expected
        assert "part of outage event" in shown["netflix/*/2026-01-08T15:32:00Z"]["text"]
        [event] = cards(driver, "outages").values()
        assert "suspected cause" in event["text"] and event["cause"] == "aws"
        assert event["names"][1:] == ["aws", "netflix", HOSTILE]

        # The hostile name is text wherever it shows, and nothing of it ran.
        assert shown[f"{HOSTILE}/*/2026-01-08T15:32:00Z"]["names"] == [HOSTILE]
        assert HOSTILE in shown["aws/*/2026-01-08T15:32:00Z"]["text"]  # as a problem
        assert driver.find_elements(By.TAG_NAME, "img") == []
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert  # noqa: B018  (the property raises when no dialog is open)

        # A new alert shows within 5 s.
        await send(settings.alerts_topic, alert("spotify"))
        seconds = await wait(until, driver, lambda d: "spotify/*/2026-01-08T15:32:00Z"
                             in cards(d, "open"), UPDATE_DEADLINE)
        print(f"new alert on the page after {seconds:.2f} s")

        # A resolve moves it from open to resolved within 5 s.
        await send(settings.alerts_topic,
                   alert("netflix", "resolved", "warning", "2026-01-08T16:34:00Z", 30))
        netflix = "netflix/*/2026-01-08T15:32:00Z"
        seconds = await wait(until, driver, lambda d: netflix not in cards(d, "open")
                             and cards(d, "resolved").get(netflix, {}).get("status")
                             == "resolved", UPDATE_DEADLINE)
        print(f"resolve on the page after {seconds:.2f} s")

        # The service's own view: its history, and its Grafana link.
        await wait(driver.get, f"http://127.0.0.1:{port}/#service=netflix")
        await wait(until, driver, lambda d: netflix in cards(d, "detail-body"), 10)
        link = driver.find_element(By.CSS_SELECTOR, "#detail-title a")
        assert link.get_attribute("href") == (
            "http://grafana.example:3000/d/stream-detector?var-service=netflix")
        assert driver.find_elements(By.TAG_NAME, "img") == []
