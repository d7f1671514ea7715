"""Prometheus metrics of one detector process, and the HTTP endpoint that serves them.

Per-service series are capped: only the `max_services` services with the most
recent reports, plus every service with an open incident, get their own label
values, so 100,000 services do not become 100,000 series per metric.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from stream_detector import __version__
from stream_detector.core.detector import OUTCOMES, ClosedBucket
from stream_detector.core.events import REASONS
from stream_detector.core.incidents import CRITICAL

# Recent volume decays by this factor per closed bucket, so the top-N follows
# what is busy now rather than what was busy last week.
VOLUME_DECAY = 0.9
TOP_BREAKDOWN = 5


class DetectorMetrics:
    def __init__(
        self,
        max_services: int = 200,
        bucket_ms: int = 60_000,
        registry: CollectorRegistry | None = None,
    ):
        self.registry = registry or CollectorRegistry()
        self.max_services = max_services
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
        self.service_reports = Gauge("stream_detector_service_reports",
                                     "Reports in the service's last closed bucket.",
                                     ["service"], registry=r)
        self.service_expected = Gauge("stream_detector_service_expected_reports",
                                      "The model's expected reports for that bucket.",
                                      ["service"], registry=r)
        self.service_spread = Gauge("stream_detector_service_spread_reports",
                                    "About one standard deviation around the expected reports.",
                                    ["service"], registry=r)
        self.service_score = Gauge("stream_detector_service_anomaly_score",
                                   "Anomaly score of the last bucket, 0..1.",
                                   ["service"], registry=r)
        self.service_firing = Gauge("stream_detector_service_incident_firing",
                                    "1 while a service-wide incident is open.",
                                    ["service"], registry=r)
        self.service_severity = Gauge("stream_detector_service_incident_severity",
                                      "0 none, 1 warning, 2 critical.",
                                      ["service"], registry=r)
        self.region_reports = Gauge("stream_detector_service_region_reports",
                                    "Reports in the last bucket by region (top 5).",
                                    ["service", "region"], registry=r)
        self.problem_reports = Gauge("stream_detector_service_problem_reports",
                                     "Reports in the last bucket by problem category (top 5).",
                                     ["service", "problem"], registry=r)
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

        self._volume: dict[str, float] = {}
        self._volume_until_ms = 0
        self._bucket_ms = bucket_ms
        self._exported: dict[str, tuple[list[str], list[str]]] = {}
        self._firing: dict[str, str] = {}

    @classmethod
    def for_settings(cls, settings) -> DetectorMetrics:
        return cls(settings.metrics_max_services, int(settings.bucket * 1000))

    def count_outcomes(self, counts: dict[str, int]) -> None:
        for outcome, n in counts.items():
            if n:
                self.reports.labels(outcome).inc(n)

    def observe_buckets(self, closed: Iterable[ClosedBucket]) -> None:
        """Refresh per-service gauges from the buckets just closed."""
        latest: dict[str, tuple] = {}
        for bucket in closed:
            self.buckets_closed.inc()
            # Decay by bucket time, not per bucket object: partitions close the
            # same minute separately, and that minute should age volume once.
            if bucket.start_ms > self._volume_until_ms:
                steps = (bucket.start_ms - self._volume_until_ms) // self._bucket_ms
                factor = VOLUME_DECAY ** min(steps, 1000)
                for name in self._volume:
                    self._volume[name] *= factor
                self._volume_until_ms = bucket.start_ms
            for service, (n, _, _) in bucket.counts.items():
                self._volume[service] = self._volume.get(service, 0.0) + n
            for service, s in bucket.service_scores().items():
                latest[service] = (s, bucket.counts.get(service))
                if s.severity is None:
                    self._firing.pop(service, None)
                else:
                    self._firing[service] = s.severity
        self._forget_quiet_volume()
        exported = set(heapq.nlargest(self.max_services, self._volume, key=self._volume.get))
        exported.update(self._firing)
        for service in [s for s in self._exported if s not in exported]:
            self._remove(service)
        for service, (s, counts) in latest.items():
            if service in exported:
                self._export(service, s, counts)
        self.incidents_open.set(len(self._firing))

    def _forget_quiet_volume(self) -> None:
        for name in [n for n, v in self._volume.items() if v < 0.01]:
            del self._volume[name]

    def _export(self, service: str, s, counts) -> None:
        self.service_reports.labels(service).set(s.reports)
        self.service_expected.labels(service).set(s.expected)
        self.service_spread.labels(service).set(s.spread)
        self.service_score.labels(service).set(s.score)
        self.service_firing.labels(service).set(0 if s.severity is None else 1)
        level = 0 if s.severity is None else (2 if s.severity == CRITICAL else 1)
        self.service_severity.labels(service).set(level)
        regions, problems = self._exported.get(service, ([], []))
        for region in regions:
            self.region_reports.remove(service, region)
        for problem in problems:
            self.problem_reports.remove(service, problem)
        regions, problems = [], []
        if counts is not None:
            for region, n in heapq.nlargest(TOP_BREAKDOWN, counts[1].items(), key=_count):
                self.region_reports.labels(service, region).set(n)
                regions.append(region)
            for problem, n in heapq.nlargest(TOP_BREAKDOWN, counts[2].items(), key=_count):
                self.problem_reports.labels(service, problem).set(n)
                problems.append(problem)
        self._exported[service] = (regions, problems)

    def _remove(self, service: str) -> None:
        regions, problems = self._exported.pop(service)
        for gauge in (self.service_reports, self.service_expected, self.service_spread,
                      self.service_score, self.service_firing, self.service_severity):
            gauge.remove(service)
        for region in regions:
            self.region_reports.remove(service, region)
        for problem in problems:
            self.problem_reports.remove(service, problem)

    def observe_alert(self, alert: dict, latency_seconds: float) -> None:
        self.alerts.labels(alert["status"], alert["severity"]).inc()
        self.detection_latency.observe(max(latency_seconds, 0.0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


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
