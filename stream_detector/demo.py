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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TextIO

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_detector.app import serve
from stream_detector.backtest import IncidentSpan, Label, covers, incident_spans
from stream_detector.config import DEFAULT_BOARD_PORT, DEFAULT_METRICS_PORT, load_settings
from stream_detector.core.incidents import CRITICAL, WARNING, Alert, Change
from stream_detector.core.models.seasonal_poisson import DEFAULTS as SEASONAL_DEFAULTS
from stream_detector.core.times import clock_minute, iso_ms, iso_utc, readable_minute
from stream_detector.embedded import EmbeddedBroker, free_port
from stream_detector.io.board import serve_board
from stream_detector.logs import is_terminal
from stream_detector.sim import publish_to_kafka, simulate

DEMO_SERVICES = 12
DEMO_DAYS = 4.0
DEMO_SPEED = 4 * 86_400 / 75  # four simulated days in about 75 seconds
DEMO_SEED = 2026
PARTITIONS = 3
# An incident that ended up to this long before an injected outage began is
# still counted as catching it.
MATCH_LEAD_MS = 600_000
# The provider outage's dependants: one provider and this many services at once.
DEMO_DEPENDANTS = 4


def _port(usual: int = DEFAULT_METRICS_PORT) -> int:
    """The usual port if it is free, so the README's curl works; any port otherwise."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", usual))
            return usual
        except OSError:
            return free_port()


async def _create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
    finally:
        await admin.close()


def _usually(expected: float) -> str:
    return f"{expected:.1f}" if expected < 10 else f"{expected:,.0f}"


def _line(alert: Alert) -> str:
    """One alert as a person reads it: what this bucket held against what is usual,
    apart from what the incident has gathered since it started. Times of day
    alone: the demo's days are told apart by the progress line.

    The score is left out: past the paging threshold it shows as 1.0000 for a
    weak incident and a strong one alike; the severity and the counts tell them apart.
    """
    where = alert.service + (f" in {alert.region}" if alert.region else "")
    since = clock_minute(alert.started_ms)
    if alert.change is Change.RESOLVED:
        assert alert.ended_ms is not None
        minutes = (alert.ended_ms - alert.started_ms) / 60_000
        return (f"  RESOLVED  {where:<14} {alert.severity:<8}  "
                f"{iso_utc(alert.started_ms)[:10]} {since} .. {clock_minute(alert.ended_ms)}"
                f" ({minutes:.0f} min)")
    width = alert.bucket_ms // 1000
    bucket = "this minute" if width == 60 else f"this {width} s bucket"
    regions = ", ".join(f"{name} {n:,}" for name, n in alert.regions[:3])
    problems = ", ".join(f"{name} {n:,}" for name, n in alert.problems[:2])
    return (f"  FIRING    {where:<14} {alert.severity:<8}  "
            f"{readable_minute(alert.bucket_start_ms)}  "
            f"{bucket} {alert.reports:,} (usually {_usually(alert.expected)}); "
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

    def __init__(self, out: TextIO, incidents: dict[str, list[Alert]], warmup_ms: int) -> None:
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
        clock = readable_minute(self.last_ts)
        rate = self.sent / max(time.monotonic() - self.started, 1e-9)
        to_go_ms = self.first_ts + self.warmup_ms - self.last_ts
        models = (f"models warming up, {to_go_ms / 3_600_000:.0f} h to go" if to_go_ms > 0
                  else "models ready")
        firing = sum(1 for h in self.incidents.values() if h[-1].change is not Change.RESOLVED)
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


async def _consume(bootstrap: str, topic: str, handle: Callable[[bytes], None]) -> None:
    """Read `topic` from its start and hand each message's value to `handle`, until cancelled."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for msg in messages:
                    handle(msg.value)
    finally:
        await consumer.stop()


async def _show_alerts(bootstrap: str, topic: str, incidents: dict[str, list[Alert]],
                       progress: DemoProgress) -> None:
    def handle(raw: bytes) -> None:
        alert = Alert.from_json(raw)
        history = incidents.setdefault(alert.alert_id, [])
        if not history:  # the first message of an incident is its opening
            alert = replace(alert, change=Change.OPENED)
        history.append(alert)
        # Show openings, escalations and resolutions; not every update.
        if alert.change is not Change.UPDATED or alert.severity != history[-2].severity:
            progress.print(_line(alert))

    await _consume(bootstrap, topic, handle)


def _event_line(event: dict) -> str:
    """An outage event as the demo shows it: services, the suspected cause, the span."""
    names = ", ".join(f"{s}{f' in {r}' if r else ''}" for s, r, _ in event["services"])
    cause = event["suspected_cause"] or "unknown"
    span = clock_minute(iso_ms(event["started_at"]))
    if event["ended_at"]:
        span += f" .. {clock_minute(iso_ms(event['ended_at']))}"
    return (f"  OUTAGE    {event['status'].upper():<8} {event['event_id']}  {span}  "
            f"suspected cause {cause}: {names}")


async def _show_outage_events(bootstrap: str, topic: str, events: dict[str, dict],
                              progress: DemoProgress) -> None:
    """Show an outage event when it forms, when a service joins it, and when it resolves."""
    def handle(raw: bytes) -> None:
        event = orjson.loads(raw)
        before = events.get(event["event_id"])
        events[event["event_id"]] = event
        if (before is None or before["status"] != event["status"]
                or len(before["services"]) != len(event["services"])):
            progress.print(_event_line(event))

    await _consume(bootstrap, topic, handle)


async def run_demo(out=sys.stdout) -> int:
    started = time.monotonic()
    board_port = _port(DEFAULT_BOARD_PORT)
    print(f"status board on http://127.0.0.1:{board_port}/ while the demo runs", file=out)
    print("starting the embedded Kafka-compatible broker (tansu) ...", file=out)
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        port = _port()
        settings = load_settings({
            "bootstrap_servers": bootstrap, "metrics_port": port, "metrics_host": "127.0.0.1",
            "idle_timeout": "2s", "checkpoint_interval": "1s", "log_level": "WARNING",
            "board_port": board_port, "board_host": "127.0.0.1",
            # The correlate stage in-process: the provider outage is one event.
            "correlate": True, "providers": "aws,cloudflare",
        }, environ={})
        await _create_topics(bootstrap, [settings.reports_topic, settings.alerts_topic,
                                         settings.dlq_topic, settings.outages_topic])
        stop = asyncio.Event()
        detector = asyncio.create_task(serve(settings, stop))
        board = asyncio.create_task(serve_board(settings, stop))
        incidents: dict[str, list[Alert]] = {}
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
            h[-1].change is not Change.RESOLVED for h in incidents.values()
        ):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stop.set()
        await detector
        await board
        for task in (shower, event_shower):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    _summary(sent, outages, incidents, time.monotonic() - started, out)
    return 0


def _summary(sent: int, outages, incidents: dict[str, list[Alert]], seconds: float,
             out) -> None:
    """Each injected outage against the incidents, with two delays: `started`, from
    the incident's start (back-dated to its first anomalous bucket), and `paged`,
    from when its first firing message could go out (the end of that bucket), which
    is what an on-call engineer waits. An incident matching no outage is a false alert."""
    print(f"\nsummary: {sent:,} reports in {seconds:.0f}s, {len(incidents)} incidents", file=out)
    spans = incident_spans(alert for history in incidents.values() for alert in history)
    labels = [Label(o.service, o.region, o.start_ms, o.end_ms, o.shape, o.is_outage,
                    o.peak_multiplier) for o in outages]
    for outage, label in zip(outages, labels, strict=True):
        caught = [span for span in spans if _matches(span, label)]
        if not caught:
            status = "ignored (not an outage)" if not outage.is_outage else "MISSED"
        else:
            first = min(caught, key=lambda span: span.paged_ms or span.start_ms)
            started = (first.start_ms - outage.start_ms) / 60_000
            paged = ((first.paged_ms or first.start_ms) - outage.start_ms) / 60_000
            worst = CRITICAL if any(span.severity == CRITICAL for span in caught) else WARNING
            status = (f"paged +{paged:.0f} min after it began (incident dated from "
                      f"{started:+.0f} min), {worst}")
            if not outage.is_outage:
                status += "; a false alert, this was not an outage"
        print(f"  {outage.describe()}: {status}", file=out)
    false = [span for span in spans if not any(_matches(span, label) for label in labels)]
    for span in false:
        where = span.service + (f" in {span.region}" if span.region else "")
        print(f"  false alert: {where} {readable_minute(span.start_ms)}"
              f" ({span.severity}), matches no injected outage", file=out)
    if not false:
        print("  false alerts: none, every incident matches an injected outage", file=out)


def _matches(span: IncidentSpan, label: Label) -> bool:
    return covers(span, label, lead_ms=MATCH_LEAD_MS)
