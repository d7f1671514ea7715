"""The running detector, fed by the simulator, under a real Prometheus and Alertmanager.

Everything here is real: the embedded broker, the detector started in this
process with `serve(...)` and the default model (seasonal-poisson), a
Prometheus scraping its /metrics every second, and an Alertmanager receiving
the incidents the detector pushes.

Traffic is `simulate(services=6, days=3.5, seed=7)`. The default model scores
nothing for its first 2 days of event time, so the test watches the X-style
outage (`x_outage`, on service "x", well after the warm-up, tens of times the
normal volume). Event time runs as fast as the broker takes it, except around
that outage: from shortly before it starts until shortly after it ends the
reports are paced at `SPEED` simulated seconds per wall second, so the
incident stays open for several one-second scrapes and Alertmanager polls.
The incident resolves later in the traffic, which is then sent as fast as
possible again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from stream_detector.sim import publish_to_kafka, simulate
from stream_detector.sim.scenarios import MINUTE_MS, Outage
from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    detector_settings,
    http_get,
    produce,
    running_detector,
    scrape,
)
from tests.observability.conftest import DETECTOR_JOB, RunningProgram
from tests.observability.dashboard_queries import dashboard_queries

pytestmark = pytest.mark.integration

SEED = 7
SERVICES = 6
DAYS = 3.5
# Simulated seconds per wall second around the watched outage.
SPEED = 1200.0
PACE_BEFORE_MS = 10 * MINUTE_MS
PACE_AFTER_MS = 30 * MINUTE_MS
ALERTNAME = "ServiceOutage"
# Malformed messages sent first, so the dead-letter panels have something to show.
BAD_MESSAGES = [b"not json", b'{"service": "x"}', b"[]"]

# Dashboard expressions allowed to return nothing (no sample, or only NaN), with
# the reason. None is needed: the malformed messages give the dead-letter panel
# data, and instant queries are asked at a moment the incident was open. Note
# that the detection-latency panel answers but sits at 600 s, its highest
# finite bucket: it measures wall time since the end of the bucket, and
# replayed January traffic is months old.
MAY_BE_EMPTY: dict[str, str] = {}


class Reports:
    """The simulator's lazy report stream, cut into consecutive phases by event time."""

    def __init__(self, reports: Iterator[dict]):
        self._it = iter(reports)
        self._head: dict | None = next(self._it, None)

    def until(self, ts_ms: float) -> Iterator[dict]:
        """Reports with `ts` before `ts_ms`, leaving the rest for the next phase."""
        while self._head is not None and self._head["ts"] < ts_ms:
            report, self._head = self._head, next(self._it, None)
            yield report


def watched_outage(outages: list[Outage]) -> Outage:
    """The X-style outage: service-wide, on the largest service, after the model's warm-up."""
    (outage,) = [o for o in outages if o.shape == "x_outage"]
    assert outage.region is None and outage.is_outage
    return outage


async def publish(reports: Iterator[dict], bootstrap: str, topic: str, speed: float) -> int:
    """`publish_to_kafka` on its own event loop in a thread, so the detector's loop stays free."""
    return await asyncio.to_thread(
        asyncio.run, publish_to_kafka(reports, bootstrap, topic, speed)
    )


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def query(prometheus: RunningProgram, path: str, **params: str) -> list[dict]:
    answer = await asyncio.to_thread(prometheus.get_json, path, **params)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


async def instant_by(prometheus: RunningProgram, expr: str, *labels: str) -> list:
    """An instant query's samples as sorted ((label values...), value) pairs."""
    result = await query(prometheus, "/api/v1/query", query=expr)
    return sorted((tuple(r["metric"].get(label, "") for label in labels), float(r["value"][1]))
                  for r in result)


def values(series: list[dict]) -> list[tuple[float, float]]:
    return [(float(t), float(v)) for s in series for t, v in s["values"]]


async def outcomes_total(port: int) -> float:
    metrics = await scrape(port)
    return sum(v for (name, _), v in metrics.items() if name == "stream_detector_reports_total")


class AlertmanagerWatch:
    """Polls Alertmanager while the run goes on, remembering the detector's active alerts."""

    def __init__(self, alertmanager: RunningProgram, service: str):
        self.alertmanager = alertmanager
        self.service = service
        self.seen: dict[str, dict] = {}  # alert_id -> last active alert
        self.severities: dict[str, set[str]] = {}  # alert_id -> severities seen active
        self.stop = asyncio.Event()

    def active(self) -> list[dict]:
        """Active, service-wide detector alerts for the service."""
        alerts = self.alertmanager.get_json(
            "/api/v2/alerts", filter=[f'alertname="{ALERTNAME}"', f'service="{self.service}"'],
        )
        return [a for a in alerts if "region" not in a["labels"]]

    async def run(self) -> None:
        while not self.stop.is_set():
            for alert in await asyncio.to_thread(self.active):
                alert_id = alert["labels"]["alert_id"]
                self.seen[alert_id] = alert
                self.severities.setdefault(alert_id, set()).add(alert["labels"]["severity"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.1)


@pytest.fixture
async def detector(broker, unique, alertmanager):
    """The detector in this process, pushing to Alertmanager; yields (settings, port)."""
    settings = detector_settings(broker.bootstrap_servers, unique, idle_timeout="2s",
                                 checkpoint_interval="1s", alertmanager_url=alertmanager.url)
    async with running_detector(settings) as port:
        yield settings, port


async def test_prometheus_and_alertmanager_see_a_simulated_outage(
    broker, detector, alertmanager, prometheus_factory
):
    settings, port = detector
    bootstrap, topic = broker.bootstrap_servers, settings.reports_topic
    _, outages, generated = simulate(SERVICES, DAYS, SEED)
    outage = watched_outage(outages)
    service = outage.service
    print("injected outages:", *(o.describe() for o in outages), sep="\n  ")

    prometheus = await asyncio.to_thread(
        prometheus_factory, [f"127.0.0.1:{port}"], alertmanager=alertmanager.url
    )

    async def scraped() -> bool:
        return bool(await query(prometheus, "/api/v1/query",
                                query=f'up{{job="{DETECTOR_JOB}"}} == 1'))

    await wait_for(scraped, 30)
    run_start = time.time()

    async def ready() -> bool:
        return (await asyncio.to_thread(http_get, port, "/readyz"))[0] == 200

    await wait_for(ready, 30)

    # Warm-up, as fast as the broker takes it; then wait for the detector to catch up,
    # so the paced phase is paced at the detector too.
    reports = Reports(generated)
    await produce(bootstrap, topic, BAD_MESSAGES, [b"bad"] * len(BAD_MESSAGES))
    sent = len(BAD_MESSAGES)
    sent += await publish(reports.until(outage.start_ms - PACE_BEFORE_MS), bootstrap, topic, 0)

    async def consumed() -> bool:
        return await outcomes_total(port) >= sent

    await wait_for(consumed, 60)

    watch = AlertmanagerWatch(alertmanager, service)
    watching = asyncio.create_task(watch.run())
    try:
        sent += await publish(reports.until(outage.end_ms + PACE_AFTER_MS), bootstrap, topic,
                              SPEED)
        sent += await publish(reports.until(math.inf), bootstrap, topic, 0)
        await wait_for(consumed, 60)

        # Alertmanager had the incident while it was open ...
        # (The watch goes on while the rest of the traffic is sent, so later
        # outages of the same service may show up too: one incident, and only
        # one, must have started within the watched outage.)
        def started(incident_id: str) -> float:
            return iso_seconds(incident_id.split("/", 2)[2])

        incident_ids = [i for i in watch.seen if i.startswith(f"{service}/*/")]
        assert incident_ids, f"no active {ALERTNAME} alert for {service} seen in Alertmanager"
        during = [i for i in incident_ids
                  if (outage.start_ms - MINUTE_MS) / 1000 <= started(i) <= outage.end_ms / 1000]
        assert len(during) == 1, (incident_ids, outage.describe())
        (incident_id,) = during
        alert = watch.seen[incident_id]
        assert alert["labels"]["alert_id"] == incident_id
        assert alert["labels"]["alertname"] == ALERTNAME
        assert watch.severities[incident_id] <= {"warning", "critical"}
        assert alert["status"]["state"] == "active"
        assert service in alert["annotations"]["summary"]

        # ... and not once the detector sent `resolved` (its endsAt is in the past).
        def still_active() -> list[dict]:
            return [a for a in watch.active() if a["labels"]["alert_id"] == incident_id]

        async def resolved() -> bool:
            return not await asyncio.to_thread(still_active)

        await wait_for(resolved, 30)
    finally:
        watch.stop.set()
        await watching

    # Prometheus has scraped everything the detector counted.
    final = await outcomes_total(port)
    assert final == sent

    async def prometheus_caught_up() -> bool:
        result = await query(prometheus, "/api/v1/query",
                             query="sum(stream_detector_reports_total)")
        return bool(result) and float(result[0]["value"][1]) == final

    await wait_for(prometheus_caught_up, 30)
    run_end = time.time()
    window = {"start": f"{run_start:.3f}", "end": f"{run_end:.3f}", "step": "1s"}

    # The counters as Prometheus saw them over the run, and now.
    accepted = values(await query(prometheus, "/api/v1/query_range",
                                  query='stream_detector_reports_total{outcome="accepted"}',
                                  **window))
    counts = [v for _, v in accepted]
    assert counts and counts == sorted(counts), f"accepted reports did not rise: {counts}"
    assert counts[-1] > counts[0]
    detector_counts = {dict(labels)["outcome"]: v for (name, labels), v in
                       (await scrape(port)).items() if name == "stream_detector_reports_total"}
    assert detector_counts["invalid"] == len(BAD_MESSAGES)
    assert detector_counts["accepted"] > 0.9 * (sent - len(BAD_MESSAGES)), detector_counts
    now = {outcome: v for (outcome,), v in
           await instant_by(prometheus, "stream_detector_reports_total", "outcome")}
    assert now == detector_counts

    firing = values(await query(
        prometheus, "/api/v1/query_range",
        query=f'stream_detector_service_incident_firing{{service="{service}"}}', **window))
    firing_at = [t for t, v in firing if v == 1]
    assert firing_at, f"Prometheus never saw {service}'s incident firing: {firing}"
    assert await instant_by(
        prometheus, f'stream_detector_service_incident_firing{{service="{service}"}}', "service"
    ) == [((service,), 0.0)], "the incident is still firing at the end"

    # rules.yml's ServiceIncidentOpen fired from the live gauges too.
    rule_alerts = values(await query(
        prometheus, "/api/v1/query_range",
        query=f'ALERTS{{alertname="ServiceIncidentOpen", alertstate="firing", '
              f'service="{service}"}}', **window))
    assert rule_alerts, "Prometheus's ServiceIncidentOpen never fired for the live incident"
    resolved_alerts = await query(prometheus, "/api/v1/query",
                                  query='sum(stream_detector_alerts_published_total'
                                        '{status="resolved"})')
    assert float(resolved_alerts[0]["value"][1]) >= 1

    # Every dashboard expression answers against this Prometheus, as Grafana would
    # ask it: panels over the run, instant queries at a moment the incident was open.
    empty = []
    for q in dashboard_queries(variables={"service": service}):
        if q.instant:
            result = await query(prometheus, "/api/v1/query", query=q.expr,
                                 time=f"{firing_at[len(firing_at) // 2]:.3f}")
            points = [float(r["value"][1]) for r in result]
        else:
            points = [v for _, v in values(await query(prometheus, "/api/v1/query_range",
                                                       query=q.expr, **window))]
        if not any(not math.isnan(p) for p in points) and q.expr not in MAY_BE_EMPTY:
            empty.append(f"{q.where}: {q.expr}")
    assert not empty, "dashboard expressions with no data:\n" + "\n".join(empty)

