"""Pushing incidents to Alertmanager's v2 API, beside the alerts topic.

The mapping from our alert message to Alertmanager's alert is a pure function
so it can be tested without a server; the client only does the HTTP call, in a
thread, because urllib is blocking and a new HTTP dependency is not worth one
POST per closed bucket.

Alertmanager identifies an alert by its label set. Our firing alerts carry no
`endsAt`, so Alertmanager keeps each one active for its `resolve_timeout`; the
detector re-sends a firing message every closed bucket, which keeps it active
for as long as the incident lasts.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, replace

import orjson

from stream_detector.core.correlate import GroupedAlert
from stream_detector.core.incidents import CRITICAL, WARNING, Alert, Change
from stream_detector.core.times import iso_utc

log = logging.getLogger("stream_detector")

ALERTNAME = "ServiceOutage"
API_PATH = "/api/v2/alerts"


class AlertmanagerError(RuntimeError):
    """Alertmanager could not be reached or refused the alerts; the message names the URL."""


@dataclass(frozen=True)
class OutageEventAlert:
    """An outage event message (the outages topic's JSON) to push as one alert."""

    message: dict

    @property
    def change(self) -> Change:
        return Change.RESOLVED if self.message["status"] == "resolved" else Change.UPDATED


Pushed = Alert | GroupedAlert | OutageEventAlert
"""What the forwarder pushes: a detector's alert, a correlate stage's member
alert labelled with its outage event, or the event itself."""


def to_alertmanager(alert: Alert, generator_url: str | None = None,
                    outage_event: str | None = None) -> dict:
    """One alert as an Alertmanager v2 alert; `outage_event` labels a member of one.

    >>> am = to_alertmanager(Alert(
    ...     Change.UPDATED, "shop", None, "warning", 1714564800000, 1714564980000, 60_000,
    ...     120, 8.5, 0.9995, (("US", 100), ("GB", 20)), (("login", 90),)))
    >>> am["labels"]["alertname"], am["labels"]["severity"], "endsAt" in am
    ('ServiceOutage', 'warning', False)
    >>> am["annotations"]["regions"]
    'US 100, GB 20'
    """
    labels = {
        "alertname": ALERTNAME,
        "service": alert.service,
        "severity": alert.severity,
        "alert_id": alert.alert_id,
    }
    # A service-wide incident has no region label at all (rather than an empty
    # one), so routes and inhibitions can match on its absence.
    if alert.region is not None:
        labels["region"] = alert.region
    # Set by the correlate stage on a member incident of an outage event, so
    # one route grouping by it pages once for the event (io/correlate.py).
    if outage_event is not None:
        labels["outage_event"] = outage_event

    where = f" in {alert.region}" if alert.region is not None else ""
    bucket_start = iso_utc(alert.bucket_start_ms)
    summary = (
        f"{alert.service}{where}: {alert.reports} problem reports in the "
        f"{alert.bucket_ms // 1000}s bucket from {bucket_start}, "
        f"expected about {alert.expected}"
    )
    annotations = {
        "summary": summary,
        "reports": str(alert.reports),
        "expected": str(alert.expected),
        "score": str(alert.score),
        "bucket_start": bucket_start,
        "regions": _format_top(alert.regions),
        "problems": _format_top(alert.problems),
    }
    mapped: dict = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": iso_utc(alert.started_ms),
    }
    if alert.change is Change.RESOLVED:
        if alert.ended_ms is None:
            raise ValueError(f"resolved alert {alert.alert_id} has no end")
        mapped["endsAt"] = iso_utc(alert.ended_ms)
    if generator_url:
        mapped["generatorURL"] = generator_url
    return mapped


def alertmanager_payload(alerts: list[Pushed], generator_url: str | None = None) -> list[dict]:
    """The body to POST for a batch of alerts.

    Severity only rises within an incident, and it is a label, so a warning
    that became critical is a different alert to Alertmanager. Every critical
    message therefore also resolves its warning twin; otherwise the warning
    would linger until `resolve_timeout` and could page again after the
    critical one resolved. Resolving an alert Alertmanager never notified
    about sends nothing.

    >>> critical = Alert(Change.UPDATED, "a", None, "critical", 1714564800000,
    ...                  1714565100000, 60_000, 900, 10.0, 1.0, (), ())
    >>> [(a["labels"]["severity"], a.get("endsAt")) for a in alertmanager_payload([critical])]
    [('critical', None), ('warning', '2024-05-01T12:05:00Z')]
    """
    payload = []
    for item in alerts:
        if isinstance(item, OutageEventAlert):
            payload.append(outage_event_to_alertmanager(item.message, generator_url))
            continue
        alert, event_id = ((item.alert, item.outage_event) if isinstance(item, GroupedAlert)
                           else (item, None))
        payload.append(to_alertmanager(alert, generator_url, event_id))
        if alert.severity == CRITICAL:
            ended = alert.ended_ms if alert.ended_ms is not None else alert.bucket_start_ms
            warning = replace(alert, severity=WARNING, change=Change.RESOLVED, ended_ms=ended)
            payload.append(to_alertmanager(warning, generator_url, event_id))
    return payload


OUTAGE_ALERTNAME = "OutageEvent"


def outage_event_to_alertmanager(event: dict, generator_url: str | None = None) -> dict:
    """One outage event message (the outages topic's JSON) as an Alertmanager alert.

    >>> am = outage_event_to_alertmanager({
    ...     "event_id": "2024-05-01T12:00:00Z/aws", "status": "firing",
    ...     "started_at": "2024-05-01T12:00:00Z", "ended_at": None,
    ...     "services": [["aws", None, "aws/*/2024-05-01T12:00:00Z"],
    ...                  ["shop", "BR", "shop/BR/2024-05-01T12:01:00Z"]],
    ...     "suspected_cause": "aws", "regions": [["BR", 40]], "problems": [], "reports": 90})
    >>> am["labels"]["outage_event"], am["labels"]["suspected_cause"], am["annotations"]["services"]
    ('2024-05-01T12:00:00Z/aws', 'aws', 'aws, shop in BR')
    """
    labels = {"alertname": OUTAGE_ALERTNAME, "outage_event": str(event["event_id"]),
              "severity": "critical"}
    if event.get("suspected_cause"):
        labels["suspected_cause"] = str(event["suspected_cause"])
    names = [f"{s}{f' in {r}' if r else ''}" for s, r, _ in event["services"]]
    cause = event.get("suspected_cause")
    summary = (f"{len({s for s, _, _ in event['services']})} services down at once"
               f"{f', suspected cause {cause}' if cause else ''}: {', '.join(names)}")
    mapped: dict = {
        "labels": labels,
        "annotations": {"summary": summary, "services": ", ".join(names),
                        "reports": str(event["reports"]),
                        "regions": _format_top(event.get("regions") or []),
                        "problems": _format_top(event.get("problems") or [])},
        "startsAt": event["started_at"],
    }
    if event["status"] == "resolved":
        mapped["endsAt"] = event["ended_at"]
    if generator_url:
        mapped["generatorURL"] = generator_url
    return mapped


def _format_top(counts) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts)


class AlertmanagerClient:
    """Posts alert messages to one Alertmanager.

    `url` is the Alertmanager's base URL, e.g. ``http://alertmanager:9093``.
    """

    def __init__(self, url: str, timeout: float = 5.0, generator_url: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Alertmanager URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.generator_url = generator_url

    async def push(self, alerts: list[Pushed]) -> None:
        """Send the alerts; raise `AlertmanagerError` if they were not accepted."""
        if not alerts:
            return
        body = orjson.dumps(alertmanager_payload(alerts, self.generator_url))
        await asyncio.to_thread(self._post, body)

    def _post(self, body: bytes) -> None:
        endpoint = self.url + API_PATH
        request = urllib.request.Request(
            endpoint, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace").strip()
            raise AlertmanagerError(
                f"Alertmanager at {endpoint} refused the alerts: HTTP {exc.code} {detail}"
            ) from None
        except urllib.error.URLError as exc:
            raise AlertmanagerError(
                f"Alertmanager at {endpoint} is unreachable: {exc.reason}"
            ) from None
        except (TimeoutError, OSError) as exc:
            raise AlertmanagerError(f"Alertmanager at {endpoint} did not answer: {exc}") from None


class AlertmanagerForwarder:
    """Pushes alerts in the background, batched, from a bounded buffer.

    The consume loop only appends to the buffer, so a slow or unreachable
    Alertmanager never stalls consumption; the alerts topic stays the channel
    of record. When the buffer is full, the oldest firing update is dropped
    (the next closed bucket re-sends a fresher one); resolved messages are
    never dropped for room, because nothing would re-send them.
    """

    def __init__(self, client: AlertmanagerClient, max_pending: int = 1000,
                 batch_size: int = 100):
        self.client = client
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.pending: deque[Pushed] = deque()
        self.wakeup = asyncio.Event()
        self.failures = 0

    def offer(self, alert: Pushed) -> None:
        if len(self.pending) >= self.max_pending:
            for i, queued in enumerate(self.pending):
                if queued.change is not Change.RESOLVED:
                    del self.pending[i]
                    break
        self.pending.append(alert)
        self.wakeup.set()

    async def run(self) -> None:
        """Forward until cancelled."""
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        while self.pending:
            batch = [self.pending.popleft()
                     for _ in range(min(self.batch_size, len(self.pending)))]
            try:
                await self.client.push(batch)
            except AlertmanagerError as exc:
                # Alertmanager is a second channel; log and go on.
                self.failures += 1
                log.warning("alertmanager push failed", extra={"error": str(exc),
                                                                "alerts": len(batch)})
