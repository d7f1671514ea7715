"""`stream-detector demo`: the whole product on this machine, ending by itself.

It starts the embedded broker, the detector with its metrics endpoint, and
the simulator in accelerated time with a large outage modelled on a weekend
outage of X (about 25,800 complaints at its height). Alerts are read back
from the alerts topic, as any downstream consumer would, and shown live.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TextIO

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_detector.app import serve
from stream_detector.config import DEFAULT_METRICS_PORT, load_settings
from stream_detector.core.models.seasonal_poisson import DEFAULTS as SEASONAL_DEFAULTS
from stream_detector.embedded import EmbeddedBroker, free_port
from stream_detector.logs import is_terminal
from stream_detector.sim import publish_to_kafka, simulate

DEMO_SERVICES = 12
DEMO_DAYS = 4.0
DEMO_SPEED = 4 * 86_400 / 75  # four simulated days in about 75 seconds
DEMO_SEED = 2026
PARTITIONS = 3
# The provider outage's dependants: one provider and this many services at once.
DEMO_DEPENDANTS = 4


def _port() -> int:
    """The usual metrics port if it is free, so the README's curl works; any port otherwise."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", DEFAULT_METRICS_PORT))
            return DEFAULT_METRICS_PORT
        except OSError:
            return free_port()


async def _create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
    finally:
        await admin.close()


def _clock(iso: str) -> str:
    """`2026-01-08T04:18:00Z` as `04:18Z`: the demo's days are told apart by the progress line."""
    return iso[11:16] + "Z"


def _usually(expected: float) -> str:
    return f"{expected:.1f}" if expected < 10 else f"{expected:,.0f}"


def _line(alert: dict) -> str:
    """One alert as a person reads it: what this bucket held against what is usual,
    apart from what the incident has gathered since it started.

    The score is left out: past the paging threshold it shows as 1.0000 for a
    weak incident and a strong one alike; the severity and the counts tell them apart.
    """
    where = f"{alert['service']}" + (f" in {alert['region']}" if alert["region"] else "")
    since = _clock(alert["started_at"])
    if alert["status"] == "resolved":
        minutes = (_ms(alert["ended_at"]) - _ms(alert["started_at"])) / 60_000
        return (f"  RESOLVED  {where:<14} {alert['severity']:<8}  "
                f"{alert['started_at'][:10]} {since} .. {_clock(alert['ended_at'])}"
                f" ({minutes:.0f} min)")
    width = alert["bucket_seconds"]
    bucket = "this minute" if width == 60 else f"this {width} s bucket"
    regions = ", ".join(f"{name} {n:,}" for name, n in alert["regions"][:3])
    problems = ", ".join(f"{name} {n:,}" for name, n in alert["problems"][:2])
    return (f"  FIRING    {where:<14} {alert['severity']:<8}  "
            f"{alert['bucket_start'][:10]} {_clock(alert['bucket_start'])}  "
            f"{bucket} {alert['reports']:,} (usually {_usually(alert['expected'])}); "
            f"since {since}: {regions}; problems {problems}")


class DemoProgress:
    """The demo's progress: one line that updates in place on a terminal, a
    plain line every `PLAIN_EVERY_S` seconds otherwise (a log file, a CI job).

    Plain code rather than rich or tqdm: it is one line of text, and alert
    lines must be printed between its updates, which both libraries can do
    but only by routing every other print through them.
    """

    TTY_EVERY_S = 0.25
    PLAIN_EVERY_S = 10.0

    def __init__(self, out: TextIO, incidents: dict[str, list[dict]], warmup_ms: int) -> None:
        self.out = out
        self.incidents = incidents
        self.warmup_ms = warmup_ms
        self.tty = is_terminal(out)
        self.sent = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.started = time.monotonic()
        self.shown = False  # an updating line is on the screen, not yet ended

    def count(self, reports: Iterable[dict]) -> Iterator[dict]:
        """Pass the reports through, noting how many went out and their event time."""
        for report in reports:
            ts = report["ts"]
            if self.first_ts is None:
                self.first_ts = ts
            self.last_ts = ts
            self.sent += 1
            yield report

    def line(self) -> str:
        if self.last_ts is None or self.first_ts is None:
            return "progress: waiting for the first report"
        clock = datetime.fromtimestamp(self.last_ts / 1000, UTC).strftime("%Y-%m-%d %H:%MZ")
        rate = self.sent / max(time.monotonic() - self.started, 1e-9)
        to_go_ms = self.first_ts + self.warmup_ms - self.last_ts
        models = (f"models warming up, {to_go_ms / 3_600_000:.0f} h to go" if to_go_ms > 0
                  else "models ready")
        firing = sum(1 for h in self.incidents.values() if h[-1]["status"] == "firing")
        return (f"progress: simulated {clock}  {self.sent:,} reports ({rate:,.0f}/s)  "
                f"{models}  {firing} incident{'s' if firing != 1 else ''} open")

    def _fitted(self) -> str:
        """The line cut to the terminal's width: a wrapped line could not be redrawn
        in place, `\r` returning only to the start of its last row."""
        return self.line()[: shutil.get_terminal_size().columns - 1]

    def show(self) -> None:
        if self.tty:
            self.out.write("\r\033[K" + self._fitted())
            self.shown = True
        else:
            self.out.write(self.line() + "\n")
        self.out.flush()

    def print(self, text: str) -> None:
        """A line of its own (an alert), above the updating progress line."""
        if self.shown:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        if self.shown:
            self.out.write(self._fitted())
        self.out.flush()

    def end(self) -> None:
        """The final figures on a line of their own."""
        if self.tty:
            self.show()
            self.out.write("\n")
            self.shown = False
        else:
            self.show()
        self.out.flush()

    async def run(self) -> None:
        """Show the line until cancelled."""
        every = self.TTY_EVERY_S if self.tty else self.PLAIN_EVERY_S
        while True:
            await asyncio.sleep(every)
            self.show()


async def _consume(bootstrap: str, topic: str, handle) -> None:
    """Read `topic` from its start and hand each decoded message to `handle`, until cancelled."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for msg in messages:
                    handle(orjson.loads(msg.value))
    finally:
        await consumer.stop()


async def _show_alerts(bootstrap: str, topic: str, incidents: dict[str, list[dict]],
                       progress: DemoProgress) -> None:
    def handle(alert: dict) -> None:
        history = incidents.setdefault(alert["alert_id"], [])
        history.append(alert)
        # Show openings, escalations and resolutions; not every update.
        if (len(history) == 1 or alert["status"] == "resolved"
                or alert["severity"] != history[-2]["severity"]):
            progress.print(_line(alert))

    await _consume(bootstrap, topic, handle)


def _event_line(event: dict) -> str:
    """An outage event as the demo shows it: services, the suspected cause, the span."""
    names = ", ".join(f"{s}{f' in {r}' if r else ''}" for s, r, _ in event["services"])
    cause = event["suspected_cause"] or "unknown"
    span = f"{_clock(event['started_at'])}"
    if event["ended_at"]:
        span += f" .. {_clock(event['ended_at'])}"
    return (f"  OUTAGE    {event['status'].upper():<8} {event['event_id']}  {span}  "
            f"suspected cause {cause}: {names}")


async def _show_outage_events(bootstrap: str, topic: str, events: dict[str, dict],
                              progress: DemoProgress) -> None:
    """Show an outage event when it forms, when a service joins it, and when it resolves."""
    def handle(event: dict) -> None:
        before = events.get(event["event_id"])
        events[event["event_id"]] = event
        if (before is None or before["status"] != event["status"]
                or len(before["services"]) != len(event["services"])):
            progress.print(_event_line(event))

    await _consume(bootstrap, topic, handle)


async def run_demo(out=sys.stdout) -> int:
    started = time.monotonic()
    print("starting the embedded Kafka-compatible broker (tansu) ...", file=out)
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        port = _port()
        settings = load_settings({
            "bootstrap_servers": bootstrap, "metrics_port": port, "metrics_host": "127.0.0.1",
            "idle_timeout": "2s", "checkpoint_interval": "1s", "log_level": "WARNING",
            # The correlate stage in-process: the provider outage is one event.
            "correlate": True, "providers": "aws,cloudflare",
        }, environ={})
        await _create_topics(bootstrap, [settings.reports_topic, settings.alerts_topic,
                                         settings.dlq_topic, settings.outages_topic])
        stop = asyncio.Event()
        detector = asyncio.create_task(serve(settings, stop))
        incidents: dict[str, list[dict]] = {}
        progress = DemoProgress(out, incidents, int(SEASONAL_DEFAULTS["warmup_seconds"] * 1000))
        shower = asyncio.create_task(_show_alerts(bootstrap, settings.alerts_topic,
                                                  incidents, progress))
        events: dict[str, dict] = {}
        event_shower = asyncio.create_task(_show_outage_events(
            bootstrap, settings.outages_topic, events, progress))
        services, outages, reports = simulate(DEMO_SERVICES, DEMO_DAYS, DEMO_SEED,
                                              provider_dependants=DEMO_DEPENDANTS)
        print(f"broker on {bootstrap}; metrics on http://127.0.0.1:{port}/metrics", file=out)
        print(f"simulating {len(services)} services over {DEMO_DAYS:g} days at "
              f"{DEMO_SPEED:,.0f}x; injected:", file=out)
        for outage in outages:
            print(f"  {outage.describe()}", file=out)
        print("alerts as they arrive on the alerts topic, with progress "
              f"{'on the last line' if progress.tty else 'every 10 s'}:", file=out, flush=True)
        ticker = asyncio.create_task(progress.run())
        sent = await publish_to_kafka(progress.count(reports), bootstrap,
                                      settings.reports_topic, DEMO_SPEED)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        progress.end()

        # Let the last buckets close and open incidents resolve, then stop.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
            h[-1]["status"] == "firing" for h in incidents.values()
        ):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stop.set()
        await detector
        for task in (shower, event_shower):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    _summary(sent, outages, incidents, time.monotonic() - started, out)
    return 0


def _summary(sent: int, outages, incidents: dict[str, list[dict]], seconds: float, out) -> None:
    """Each injected outage against the incidents, with two delays: `started`, from
    the incident's start (back-dated to its first anomalous bucket), and `paged`,
    from when its first firing message could go out (the end of that bucket), which
    is what an on-call engineer waits. An incident matching no outage is a false alert."""
    print(f"\nsummary: {sent:,} reports in {seconds:.0f}s, {len(incidents)} incidents", file=out)
    for outage in outages:
        caught = [h for h in incidents.values() if _matches(h, outage)]
        if not caught:
            status = "ignored (not an outage)" if not outage.is_outage else "MISSED"
        else:
            first = min(caught, key=lambda h: _ms(h[0]["bucket_start"]))[0]
            started = (_ms(first["started_at"]) - outage.start_ms) / 60_000
            paged = (_ms(first["bucket_start"]) + 1000 * first["bucket_seconds"]
                     - outage.start_ms) / 60_000
            worst = "critical" if any(a["severity"] == "critical" for h in caught for a in h) \
                else "warning"
            status = (f"paged +{paged:.0f} min after it began (incident dated from "
                      f"{started:+.0f} min), {worst}")
            if not outage.is_outage:
                status += "; a false alert, this was not an outage"
        print(f"  {outage.describe()}: {status}", file=out)
    for history in incidents.values():
        if not any(_matches(history, o) for o in outages):
            first = history[0]
            where = first["service"] + (f" in {first['region']}" if first["region"] else "")
            print(f"  false alert: {where} {first['started_at'][:10]} {_clock(first['started_at'])}"
                  f" ({first['severity']}), matches no injected outage", file=out)


def _matches(history: list[dict], outage) -> bool:
    return history[0]["service"] == outage.service and _overlaps(history, outage)


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _overlaps(history: list[dict], outage) -> bool:
    start = _ms(history[0]["started_at"])
    end = _ms(history[-1]["ended_at"]) if history[-1]["ended_at"] else start
    return start <= outage.end_ms and end >= outage.start_ms - 600_000
