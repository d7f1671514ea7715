"""One page per outage event, through the shipped Alertmanager config and a real Alertmanager.

The detectors push each incident without knowing its event; the correlate
stage pushes the members again with `outage_event` and the event's own alert.
The shipped route groups by `outage_event` and an inhibit rule silences the
detectors' untagged copies, so when the correlate stage's pushes come within
the group_wait of the detectors', the webhook receives one notification
holding the event and its members, and the untagged pushes stay suppressed.
"""

from __future__ import annotations

import http.server
import threading
import time

import orjson
import pytest
import yaml

from stream_detector.core.correlate import CorrelationPolicy, Correlator
from stream_detector.core.incidents import Alert
from stream_detector.io.alertmanager import OUTAGE_ALERTNAME, AlertmanagerClient, OutageEventAlert
from tests.observability.conftest import (
    ALERTMANAGER_CONFIG,
    free_port,
    start_alertmanager,
    wait_until,
)

pytestmark = pytest.mark.integration


class Webhook:
    """A receiver that records every notification Alertmanager posts."""

    def __init__(self):
        self.received: list[dict] = []
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(orjson.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def paging(tmp_path):
    """The shipped config with the pager pointed at a webhook, and group_wait made short."""
    webhook = Webhook()
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["route"]["group_wait"] = "5s"
    for receiver in config["receivers"]:
        receiver["webhook_configs"] = [{"url": f"http://127.0.0.1:{webhook.port}/",
                                        "send_resolved": False}]
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    program = start_alertmanager(tmp_path / "am", path)
    yield program, webhook
    program.stop()
    webhook.close()


def iso(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def incident(service: str, onset_ago: float, bucket_ago: float) -> dict:
    started = iso(onset_ago)
    return {"alert_id": f"{service}/*/{started}", "status": "firing", "service": service,
            "region": None, "severity": "critical", "started_at": started, "ended_at": None,
            "bucket_start": iso(bucket_ago), "bucket_seconds": 60, "reports": 500,
            "expected": 10.0, "score": 1.0, "regions": [["US", 400]],
            "problems": [["login", 300]]}


async def test_an_outage_event_pages_once_with_its_members(paging):
    alertmanager, webhook = paging
    tag = f"{time.time_ns() % 10**9}"
    provider = f"cloud{tag}"
    # Onsets just now: Alertmanager sends a new group at once, without its
    # group_wait, when its alerts started longer than group_wait ago.
    members = [incident(provider, 1, 1), incident(f"shop{tag}", 0, 0),
               incident(f"mail{tag}", 0, 0)]
    correlator = Correlator(CorrelationPolicy(providers=(provider,)))
    for alert in members:
        correlator.buffer(alert)
    out = correlator.flush()
    [event] = out.events
    assert event["suspected_cause"] == provider

    client = AlertmanagerClient(alertmanager.url)
    # The detectors' own pushes come first; the correlate stage's within group_wait.
    await client.push([Alert.from_message(alert) for alert in members])
    await client.push(out.tagged + [OutageEventAlert(e) for e in out.events])

    wait_until(lambda: webhook.received, 30, "a notification at the webhook")
    [notification] = webhook.received
    assert notification["groupLabels"] == {"outage_event": event["event_id"]}
    names = sorted((a["labels"]["alertname"], a["labels"].get("service", ""))
                   for a in notification["alerts"] if a["status"] == "firing")
    assert names == sorted([(OUTAGE_ALERTNAME, "")]
                           + [("ServiceOutage", m["service"]) for m in members])

    def untagged_suppressed() -> bool:
        alerts = alertmanager.get_json("/api/v2/alerts", filter='alertname="ServiceOutage"')
        untagged = [a for a in alerts if "outage_event" not in a["labels"]
                    and a["labels"]["service"].endswith(tag)
                    and a["labels"]["severity"] == "critical"]
        return len(untagged) == 3 and all(a["status"]["state"] == "suppressed"
                                          and a["status"]["inhibitedBy"] for a in untagged)

    wait_until(untagged_suppressed, 15, "the detectors' untagged pushes inhibited")
    # Still one notification: the inhibited pushes' own groups never page.
    groups = alertmanager.get_json("/api/v2/alerts/groups")
    paged = [g for g in groups if g["alerts"] and any(
        a["status"]["state"] == "active" for a in g["alerts"])
        and any(a["labels"].get("service", "").endswith(tag) for a in g["alerts"])]
    assert [g["labels"] for g in paged] == [{"outage_event": event["event_id"]}]
    assert len(webhook.received) == 1
