"""Pushing incidents to Alertmanager: the mapping, and the client against a real Alertmanager."""

from __future__ import annotations

import itertools
import subprocess
import time
from dataclasses import replace

import orjson
import pytest

from stream_detector.core.incidents import Alert, Change
from stream_detector.core.times import iso_ms, iso_utc
from stream_detector.io.alertmanager import AlertmanagerClient, AlertmanagerError, to_alertmanager
from tests.observability.conftest import free_port, require_program, wait_until

pytestmark = pytest.mark.integration

_services = itertools.count()


def ago_ms(seconds_ago: float) -> int:
    """That long ago, in whole seconds as alert times are."""
    return int(time.time() - seconds_ago) * 1000


def incident(change: Change = Change.OPENED, severity: str = "warning",
             region: str | None = None, service: str | None = None,
             started_ago: float = 600) -> Alert:
    service = service or f"svc{next(_services)}-{time.time_ns() % 10**9}"
    return Alert(
        change, service, region, severity, ago_ms(started_ago), ago_ms(120), 60_000,
        reports=1280, expected=14.5, score=0.99999,
        regions=(("US", 1200), ("GB", 80)), problems=(("login", 900), ("app", 380)),
        ended_ms=ago_ms(60) if change is Change.RESOLVED else None,
    )


def alerts_of(alertmanager, service: str, active_only: bool = True) -> list[dict]:
    params = {"filter": f'service="{service}"'}
    if active_only:
        params.update(active="true", silenced="false", inhibited="false", unprocessed="false")
    return alertmanager.get_json("/api/v2/alerts", **params)


def active_alert_for(alertmanager, service: str) -> dict:
    found = wait_until(lambda: alerts_of(alertmanager, service), 15,
                       f"an active alert for {service} in Alertmanager")
    assert len(found) == 1, found
    return found[0]


async def test_firing_incident_becomes_an_active_alert(alertmanager):
    alert = incident(region="US")
    await AlertmanagerClient(alertmanager.url).push([alert])

    listed = active_alert_for(alertmanager, alert.service)
    assert listed["status"]["state"] == "active"
    assert listed["labels"] == {
        "alertname": "ServiceOutage", "service": alert.service, "severity": "warning",
        "region": "US", "alert_id": alert.alert_id,
    }
    annotations = listed["annotations"]
    assert annotations["reports"] == "1280" and annotations["expected"] == "14.5"
    assert annotations["regions"] == "US 1200, GB 80"
    assert annotations["problems"] == "login 900, app 380"
    assert "1280" in annotations["summary"] and "14.5" in annotations["summary"]
    assert listed["startsAt"].startswith(iso_utc(alert.started_ms)[:-1])


async def test_resolved_incident_is_no_longer_active(alertmanager):
    client = AlertmanagerClient(alertmanager.url)
    firing = incident()
    await client.push([firing])
    active_alert_for(alertmanager, firing.service)

    resolved = replace(firing, change=Change.RESOLVED, ended_ms=ago_ms(30))
    await client.push([resolved])
    wait_until(lambda: not alerts_of(alertmanager, firing.service), 15,
               f"{firing.service} to leave the active alerts")


async def test_escalation_leaves_only_the_critical_alert_active(alertmanager):
    client = AlertmanagerClient(alertmanager.url)
    warning = incident(severity="warning")
    await client.push([warning])
    active_alert_for(alertmanager, warning.service)

    await client.push([replace(warning, change=Change.UPDATED, severity="critical")])

    def only_critical() -> bool:
        severities = [a["labels"]["severity"] for a in alerts_of(alertmanager, warning.service)]
        return severities == ["critical"]

    wait_until(only_critical, 15, "the warning alert to be resolved by the critical one")


async def test_service_wide_incident_has_no_region_label(alertmanager):
    alert = incident(region=None)
    await AlertmanagerClient(alertmanager.url).push([alert])
    assert "region" not in active_alert_for(alertmanager, alert.service)["labels"]


async def test_amtool_sees_the_pushed_alert(alertmanager):
    amtool = require_program("amtool")
    alert = incident(severity="critical")
    await AlertmanagerClient(alertmanager.url).push([alert])
    active_alert_for(alertmanager, alert.service)

    done = subprocess.run(
        [amtool, "alert", "query", f"--alertmanager.url={alertmanager.url}", "--output=json",
         f"service={alert.service}"],
        capture_output=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    listed = orjson.loads(done.stdout)
    assert [a["labels"]["alert_id"] for a in listed] == [alert.alert_id]
    assert listed[0]["labels"]["severity"] == "critical"


async def test_unreachable_alertmanager_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AlertmanagerError, match=f"{url}/api/v2/alerts is unreachable"):
        await AlertmanagerClient(url, timeout=2).push([incident()])


async def test_refused_push_names_the_url_and_status(alertmanager):
    # Alertmanager answers 404 under an unknown prefix: a misconfigured URL.
    url = f"{alertmanager.url}/not-alertmanager"
    with pytest.raises(AlertmanagerError, match=f"{url}/api/v2/alerts refused .*HTTP 404"):
        await AlertmanagerClient(url).push([incident()])


# The mapping alone; no Alertmanager needed.

def test_resolved_alert_ends_and_keeps_the_firing_labels():
    firing = to_alertmanager(incident(region="DE"))
    resolved = to_alertmanager(replace(incident(region="DE", service="x"),
                                       change=Change.RESOLVED,
                                       ended_ms=iso_ms("2024-05-01T13:00:00Z")))
    assert resolved["endsAt"] == "2024-05-01T13:00:00Z"
    assert "endsAt" not in firing
    assert set(resolved["labels"]) == set(firing["labels"]) == {
        "alertname", "service", "severity", "region", "alert_id"}


def test_generator_url_is_passed_when_given():
    assert to_alertmanager(incident(), "http://grafana/d/x")["generatorURL"] == "http://grafana/d/x"
    assert "generatorURL" not in to_alertmanager(incident())


def test_every_label_and_annotation_is_a_string():
    mapped = to_alertmanager(incident(severity="critical", region="US"))
    values = [*mapped["labels"].values(), *mapped["annotations"].values()]
    assert values and all(isinstance(v, str) for v in values)


def test_a_resolve_without_its_end_is_refused():
    with pytest.raises(ValueError, match="has no end"):
        to_alertmanager(replace(incident(), change=Change.RESOLVED, ended_ms=None))


def test_url_without_scheme_is_refused():
    with pytest.raises(ValueError, match="alertmanager:9093"):
        AlertmanagerClient("alertmanager:9093")


async def test_nothing_to_push_sends_nothing():
    # Nothing listens here; an attempted request would raise.
    await AlertmanagerClient(f"http://127.0.0.1:{free_port()}").push([])
