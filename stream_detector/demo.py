"""`stream-detector demo`: the whole product on this machine, ending by itself.

It starts the embedded broker, the detector with its metrics endpoint, and
the simulator in accelerated time with a large outage modelled on a weekend
outage of X (about 25,800 complaints at its height). Alerts are read back
from the alerts topic, as any downstream consumer would, and shown live.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_detector.app import serve
from stream_detector.config import DEFAULT_METRICS_PORT, load_settings
from stream_detector.embedded import EmbeddedBroker, free_port
from stream_detector.sim import publish_to_kafka, simulate

DEMO_SERVICES = 12
DEMO_DAYS = 4.0
DEMO_SPEED = 4 * 86_400 / 75  # four simulated days in about 75 seconds
DEMO_SEED = 2026
PARTITIONS = 3


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


def _line(alert: dict) -> str:
    where = f"{alert['service']}" + (f" in {alert['region']}" if alert["region"] else "")
    regions = ", ".join(f"{name} {n}" for name, n in alert["regions"][:3])
    problems = ", ".join(f"{name} {n}" for name, n in alert["problems"][:2])
    if alert["status"] == "resolved":
        return (f"  RESOLVED  {where:<22} {alert['started_at']} .. {alert['ended_at']}"
                f"  [{alert['severity']}]")
    return (f"  FIRING    {where:<22} at {alert['bucket_start']}  {alert['reports']:>6} reports"
            f" (expected {alert['expected']:.0f}, score {alert['score']:.4f}, "
            f"{alert['severity']})  regions: {regions}; problems: {problems}")


async def _show_alerts(bootstrap: str, topic: str, incidents: dict[str, list[dict]],
                       out) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for msg in messages:
                    alert = orjson.loads(msg.value)
                    history = incidents.setdefault(alert["alert_id"], [])
                    history.append(alert)
                    # Show openings, escalations and resolutions; not every update.
                    if (len(history) == 1 or alert["status"] == "resolved"
                            or alert["severity"] != history[-2]["severity"]):
                        print(_line(alert), file=out, flush=True)
    finally:
        await consumer.stop()


async def run_demo(out=sys.stdout) -> int:
    started = time.monotonic()
    print("starting the embedded Kafka-compatible broker (tansu) ...", file=out)
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        port = _port()
        settings = load_settings({
            "bootstrap_servers": bootstrap, "metrics_port": port, "metrics_host": "127.0.0.1",
            "idle_timeout": "2s", "checkpoint_interval": "1s", "log_level": "WARNING",
        }, environ={})
        await _create_topics(bootstrap, [settings.reports_topic, settings.alerts_topic,
                                         settings.dlq_topic])
        stop = asyncio.Event()
        detector = asyncio.create_task(serve(settings, stop))
        incidents: dict[str, list[dict]] = {}
        shower = asyncio.create_task(_show_alerts(bootstrap, settings.alerts_topic,
                                                  incidents, out))
        services, outages, reports = simulate(DEMO_SERVICES, DEMO_DAYS, DEMO_SEED)
        print(f"broker on {bootstrap}; metrics on http://127.0.0.1:{port}/metrics", file=out)
        print(f"simulating {len(services)} services over {DEMO_DAYS:g} days at "
              f"{DEMO_SPEED:,.0f}x; injected:", file=out)
        for outage in outages:
            print(f"  {outage.describe()}", file=out)
        print("alerts as they arrive on the alerts topic:", file=out, flush=True)
        sent = await publish_to_kafka(reports, bootstrap, settings.reports_topic, DEMO_SPEED)

        # Let the last buckets close and open incidents resolve, then stop.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
            h[-1]["status"] == "firing" for h in incidents.values()
        ):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stop.set()
        await detector
        shower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shower

    _summary(sent, outages, incidents, time.monotonic() - started, out)
    return 0


def _summary(sent: int, outages, incidents: dict[str, list[dict]], seconds: float, out) -> None:
    print(f"\nsummary: {sent:,} reports in {seconds:.0f}s, {len(incidents)} incidents", file=out)
    for outage in outages:
        caught = [
            h[0] for h in incidents.values()
            if h[0]["service"] == outage.service and _overlaps(h, outage)
        ]
        status = "detected" if caught else ("ignored (not an outage)" if not outage.is_outage
                                            else "MISSED")
        if caught:
            # The page delay: the first firing message could go out when its bucket closed.
            paged = _ms(caught[0]["bucket_start"]) + 1000 * caught[0]["bucket_seconds"]
            delay = (paged - outage.start_ms) / 60_000
            status += f", paged {delay:+.0f} min after it began, {caught[0]['severity']}"
        print(f"  {outage.describe()}: {status}", file=out)
    for history in incidents.values():
        if not any(h["service"] == o.service and _overlaps(history, o) for o in outages
                   for h in history[:1]):
            first = history[0]
            where = first["service"] + (f" in {first['region']}" if first["region"] else "")
            print(f"  false incident: {where} at {first['started_at']}, {first['severity']}",
                  file=out)


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _overlaps(history: list[dict], outage) -> bool:
    start = _ms(history[0]["started_at"])
    end = _ms(history[-1]["ended_at"]) if history[-1]["ended_at"] else start
    return start <= outage.end_ms and end >= outage.start_ms - 600_000
