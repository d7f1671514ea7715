"""Prometheus metrics of one detector process, and the HTTP endpoint that serves them.

Per-service series are capped: only the `max_services` services with the most
recent reports, plus every service with an open incident, get their own label
values, so 100,000 services do not become 100,000 series per metric.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from stream_detector import __version__
from stream_detector.core.buckets import ServiceCounts
from stream_detector.core.detector import OUTCOMES, ClosedBucket
from stream_detector.core.events import REASONS
from stream_detector.core.incidents import CRITICAL

# Recent volume decays by this factor per closed bucket, so the top-N follows
# what is busy now rather than what was busy last week.
VOLUME_DECAY = 0.9
# Below this decayed volume a service that is not firing is forgotten.
QUIET_VOLUME = 0.01
TOP_BREAKDOWN = 5


class DetectorMetrics:
    def __init__(
        self,
        max_services: int = 200,
        bucket_ms: int = 60_000,
        registry: CollectorRegistry | None = None,
    ):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reports = Counter("stream_detector_reports", "Report messages by outcome.",
                               ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.reports.labels(outcome)
        self.dlq = Counter("stream_detector_dlq_messages",
                           "Messages sent to the dead-letter topic, by reason.",
                           ["reason"], registry=r)
        for reason in REASONS:
            self.dlq.labels(reason)
        self.alerts = Counter("stream_detector_alerts_published",
                              "Alert messages published, by status and severity.",
                              ["status", "severity"], registry=r)
        self.incidents_open = Gauge("stream_detector_incidents_open",
                                    "Incidents currently firing.", registry=r)
        self.buckets_closed = Counter("stream_detector_buckets_closed",
                                      "Buckets closed and scored.", registry=r)
        self.series_active = Gauge("stream_detector_series_active",
                                   "Series that have a model.", registry=r)
        # Per-service gauges are built by this collector when scraped.
        self.services = ServiceGauges(max_services, bucket_ms)
        r.register(self.services)
        self.lag = Gauge("stream_detector_consumer_lag_messages",
                         "Messages between the committed position and the partition's end.",
                         ["topic", "partition"], registry=r)
        self.watermark = Gauge("stream_detector_watermark_timestamp_seconds",
                               "Event-time watermark of each partition.",
                               ["partition"], registry=r)
        self.scoring_seconds = Histogram(
            "stream_detector_bucket_scoring_seconds", "Time to score one closed bucket.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r)
        self.detection_latency = Histogram(
            "stream_detector_detection_latency_seconds",
            "From the end of the bucket that changed an incident to its alert being published.",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=r)
        self.kafka_connected = Gauge("stream_detector_kafka_connected",
                                     "1 while the broker is reachable.", registry=r)
        Gauge("stream_detector_build_info", "Version of the running detector.",
              ["version"], registry=r).labels(__version__).set(1)

    @classmethod
    def for_settings(cls, settings) -> DetectorMetrics:
        return cls(settings.metrics_max_services, int(settings.bucket * 1000))

    def count_outcomes(self, counts: dict[str, int]) -> None:
        for outcome, n in counts.items():
            if n:
                self.reports.labels(outcome).inc(n)

    def observe_buckets(self, closed: Iterable[ClosedBucket]) -> None:
        """Record what the per-service gauges will show from the buckets just closed."""
        for bucket in closed:
            self.buckets_closed.inc()
            self.services.observe(bucket)
        self.incidents_open.set(len(self.services.firing))

    def observe_alert(self, alert: dict, latency_seconds: float) -> None:
        self.alerts.labels(alert["status"], alert["severity"]).inc()
        self.detection_latency.observe(max(latency_seconds, 0.0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Service:
    """What the scrape needs of one service: its latest score and counts, and recent volume."""

    __slots__ = ("latest", "counts", "volume", "volume_ms")

    def __init__(self, volume_ms: int):
        self.latest: tuple[int, float, float, float, str | None] = (0, 0.0, 0.0, 0.0, None)
        """Reports, expected, spread, score and open incident's severity of its latest bucket."""
        self.counts: ServiceCounts | None = None
        """[reports, {region: n}, {problem: n}] of the latest bucket; None if it had none."""
        self.volume = 0.0
        self.volume_ms = volume_ms
        """Start of the bucket `volume` was decayed to; each bucket since decays it once more."""


class ServiceGauges(Collector):
    """The per-service gauges, built at scrape time from the latest closed buckets.

    Buckets close by the thousand while the detector catches up, and a scrape
    comes every 15 s or so and reads only the latest values. So closing a
    bucket only records plain values per service, straight from the score
    arrays; choosing the exported services and building their series waits
    for the scrape. Both run on the event loop, so they share that data
    without a lock.
    """

    def __init__(self, max_services: int, bucket_ms: int):
        self.max_services = max_services
        self.bucket_ms = bucket_ms
        self.known: dict[str, _Service] = {}
        self.firing: set[str] = set()
        # Start of the latest bucket seen. Volume ages by bucket time, not per
        # bucket object: partitions close the same minute separately, and that
        # minute should age volume once.
        self.now_ms = 0
        self._sweep_at = max_services

    def observe(self, bucket: ClosedBucket) -> None:
        """Keep each service's latest score and counts, add to its volume, track firing.

        The services of a bucket are those with reports and those of open
        incidents (at the end of the bucket's series, without counts).
        """
        # A partition that is behind adds its reports at full weight, as of
        # the latest bucket.
        now = self.now_ms = max(self.now_ms, bucket.start_ms)
        series = bucket.series
        services = list(series.first)
        positions = list(series.first.values())
        offset = len(series.rows) - len(series.extra)
        for j, (service, region) in enumerate(series.extra):
            if region is None:
                services.append(service)
                positions.append(offset + j)
        # Only the services' values, gathered from the arrays of every series scored.
        at = np.array(positions, dtype=np.intp)
        score, expected, spread = (a[at].tolist() for a in bucket.scored)
        all_reports = series.reports
        reports = [all_reports[i] for i in positions]
        severities, counts = bucket.severities, bucket.counts
        known, firing, width = self.known, self.firing, self.bucket_ms
        for service, i, n, mean, sd, probability in zip(
            services, positions, reports, expected, spread, score, strict=True
        ):
            state = known.get(service)
            if state is None:
                state = known[service] = _Service(now)
            severity = severities.get(i) if severities else None
            state.latest = (n, mean, sd, probability, severity)
            service_counts = state.counts = counts.get(service)
            if service_counts is not None:
                state.volume = (state.volume * VOLUME_DECAY ** ((now - state.volume_ms) // width)
                                + n)
                state.volume_ms = now
            if severity is not None:
                firing.add(service)
            elif firing:
                firing.discard(service)
        if len(known) >= self._sweep_at:
            self._live_volumes()

    def _volume(self, state: _Service) -> float:
        return state.volume * VOLUME_DECAY ** ((self.now_ms - state.volume_ms) // self.bucket_ms)

    def _live_volumes(self) -> dict[str, float]:
        """Each service's current volume, after forgetting quiet services that are not firing."""
        volumes = {}
        for service, state in list(self.known.items()):
            volume = self._volume(state)
            if volume < QUIET_VOLUME and service not in self.firing:
                del self.known[service]
            else:
                volumes[service] = volume
        # Every scrape sweeps; so does `observe` once the table has doubled
        # since (plus room for the exported services, so a small table is not
        # swept at each new service). Memory stays bounded without scrapes, at
        # a constant amortised cost per new service.
        self._sweep_at = 2 * len(self.known) + self.max_services
        return volumes

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples, so the registry knows their names."""
        return iter(_service_families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        volumes = self._live_volumes()
        exported = heapq.nlargest(self.max_services, volumes, key=volumes.get)
        exported += sorted(self.firing.difference(exported))
        families = _service_families()
        reports, expected, spread, score, firing, severity, regions, problems = families
        for service in exported:
            state = self.known[service]
            n, mean, sd, probability, level_name = state.latest
            labels = [service]
            reports.add_metric(labels, n)
            expected.add_metric(labels, mean)
            spread.add_metric(labels, sd)
            score.add_metric(labels, probability)
            firing.add_metric(labels, 0 if level_name is None else 1)
            level = 0 if level_name is None else (2 if level_name == CRITICAL else 1)
            severity.add_metric(labels, level)
            if state.counts is not None:
                for region, n in heapq.nlargest(TOP_BREAKDOWN, state.counts[1].items(),
                                                key=_count):
                    regions.add_metric([service, region], n)
                for problem, n in heapq.nlargest(TOP_BREAKDOWN, state.counts[2].items(),
                                                 key=_count):
                    problems.add_metric([service, problem], n)
        return iter(families)


def _service_families() -> list[GaugeMetricFamily]:
    service = ["service"]
    return [
        GaugeMetricFamily("stream_detector_service_reports",
                          "Reports in the service's last closed bucket.", labels=service),
        GaugeMetricFamily("stream_detector_service_expected_reports",
                          "The model's expected reports for that bucket.", labels=service),
        GaugeMetricFamily("stream_detector_service_spread_reports",
                          "About one standard deviation around the expected reports.",
                          labels=service),
        GaugeMetricFamily("stream_detector_service_anomaly_score",
                          "Anomaly score of the last bucket, 0..1.", labels=service),
        GaugeMetricFamily("stream_detector_service_incident_firing",
                          "1 while a service-wide incident is open.", labels=service),
        GaugeMetricFamily("stream_detector_service_incident_severity",
                          "0 none, 1 warning, 2 critical.", labels=service),
        GaugeMetricFamily("stream_detector_service_region_reports",
                          "Reports in the last bucket by region (top 5).",
                          labels=["service", "region"]),
        GaugeMetricFamily("stream_detector_service_problem_reports",
                          "Reports in the last bucket by problem category (top 5).",
                          labels=["service", "problem"]),
    ]


def _count(item: tuple[str, int]) -> int:
    return item[1]


class MetricsServer:
    """A tiny HTTP server for /metrics, /healthz and /readyz on the event loop.

    Small enough to own: prometheus-client's own server runs in a thread and
    knows nothing of health, and a web framework would be a dependency for
    three routes.
    """

    def __init__(self, metrics: DetectorMetrics, healthy: Callable[[], bool],
                 ready: Callable[[], bool]):
        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._handle, host, port)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.split()
            path = parts[1].decode("latin-1").split("?")[0] if len(parts) > 1 else "/"
            if path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, self.metrics.exposition()
            elif path == "/healthz":
                status, ctype, body = _probe(self.healthy(), b"ok\n", b"unhealthy\n")
            elif path == "/readyz":
                status, ctype, body = _probe(self.ready(), b"ready\n", b"not ready\n")
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def _probe(ok: bool, yes: bytes, no: bytes) -> tuple[int, str, bytes]:
    return (200, "text/plain", yes) if ok else (503, "text/plain", no)
