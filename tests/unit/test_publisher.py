"""What the publisher does with an alert: one message, one count, one log line per opening."""

from __future__ import annotations

import asyncio
import logging

import pytest

from stream_detector.core.incidents import Alert, Change, IncidentPolicy, IncidentTracker
from stream_detector.core.models.base import Scored
from stream_detector.io.metrics import DetectorMetrics
from stream_detector.io.publisher import Publisher

MINUTE = 60_000


class Producer:
    """An in-memory stand-in for AIOKafkaProducer: every send is delivered at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic, value, key=None, headers=None):
        self.sent.append((topic, value, key))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def incidents() -> list[Alert]:
    """Two incidents: one confirmed a bucket after its anomalous run began, one opened
    by its first bucket; each then updated and resolved."""
    policy = IncidentPolicy(calm_buckets=2)
    tracker = IncidentTracker(policy)
    anomalous = Scored(0.9995, 10.0, 3.0)  # above the band, short of the page bound
    paging = Scored(policy.page_score(MINUTE), 10.0, 3.0)
    calm = Scored(0.1, 10.0, 3.0)
    steps = {
        ("confirmed", None): [(30, anomalous), (30, paging), (40, paging), (10, calm), (10, calm)],
        ("immediate", None): [(30, paging), (40, paging), (10, calm), (10, calm)],
    }
    alerts = []
    for key, buckets in steps.items():
        for minute, (reports, scored) in enumerate(buckets):
            alert, _ = tracker.observe(key, minute * MINUTE, MINUTE, reports, scored,
                                       {"US": reports}, {})
            if alert is not None:
                alerts.append(alert)
    return alerts


def test_one_incident_opened_line_per_incident_confirmed_or_immediate(caplog):
    alerts = incidents()
    opened = {a.service: a for a in alerts if a.change is Change.OPENED}
    # The confirmed one opens after its back-dated start; the immediate one in it.
    assert opened["confirmed"].bucket_start_ms > opened["confirmed"].started_ms
    assert opened["immediate"].bucket_start_ms == opened["immediate"].started_ms

    producer = Producer()
    publisher = Publisher(producer, DetectorMetrics(), 5.0, "alerts", "dlq",
                          wall_clock=lambda: 0.0)

    async def publish_all() -> None:
        for alert in alerts:
            await publisher.publish_alert(alert)
        await publisher.deliver()

    with caplog.at_level(logging.INFO, logger="stream_detector"):
        asyncio.run(publish_all())
    lines = [(r.getMessage(), r.alert_id) for r in caplog.records]
    assert sorted(lines) == sorted(
        [("incident opened", opened[s].alert_id) for s in ("confirmed", "immediate")]
        + [("incident resolved", opened[s].alert_id) for s in ("confirmed", "immediate")]
    )
    # Every alert went out, updates included, as its own message keyed by its service.
    assert producer.sent == [("alerts", a.to_json(), a.service.encode()) for a in alerts]
    assert len(alerts) == 8


@pytest.mark.parametrize("alert", incidents(), ids=lambda a: f"{a.service}-{a.change}")
def test_an_alert_read_back_from_the_topic_is_the_alert(alert):
    read = Alert.from_json(alert.to_json(), opened=alert.change is Change.OPENED)
    assert read == alert
