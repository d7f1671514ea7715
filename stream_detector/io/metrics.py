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
from stream_detector.core.detector import OUTCOMES, ClosedBucket
from stream_detector.core.events import REASONS
from stream_detector.core.incidents import CRITICAL
from stream_detector.core.tally import SeriesIndex

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

    def observe_buckets(self, closed: Iterable[ClosedBucket], partition: int) -> None:
        """Record what the per-service gauges will show from a partition's buckets just closed."""
        for bucket in closed:
            self.buckets_closed.inc()
            self.services.observe(bucket, partition)
        self.incidents_open.set(self.services.firing_count())

    def observe_alert(self, alert: dict, latency_seconds: float) -> None:
        self.alerts.labels(alert["status"], alert["severity"]).inc()
        self.detection_latency.observe(max(latency_seconds, 0.0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Partition:
    """What the scrape needs of one partition's services, in arrays indexed by service id.

    Ids are those of the partition's `SeriesIndex`: the latest bucket's
    start, reports, expected, spread, score and severity level (0 none, 1
    warning, 2 critical) per service, its recent volume, whether it is still
    known, and the tally of its latest bucket with reports, for the
    breakdowns.
    """

    ARRAYS = ("seen_ms", "reports", "expected", "spread", "score", "level", "volume",
              "volume_ms", "known", "latest")
    __slots__ = ("index", *ARRAYS)

    def __init__(self, index: SeriesIndex):
        self.index = index
        self.seen_ms = np.zeros(0, dtype=np.int64)
        self.reports = np.zeros(0, dtype=np.int64)
        self.expected = np.zeros(0)
        self.spread = np.zeros(0)
        self.score = np.zeros(0)
        self.level = np.zeros(0, dtype=np.int8)
        self.volume = np.zeros(0)
        self.volume_ms = np.zeros(0, dtype=np.int64)
        """Start of the bucket `volume` was decayed to; each bucket since decays it once more."""
        self.known = np.zeros(0, dtype=bool)
        self.latest = np.zeros(0, dtype=object)

    def grow(self, size: int) -> None:
        """Room for services with ids below `size`."""
        old = len(self.known)
        if size <= old:
            return
        size = max(size, 2 * old)
        for name in self.ARRAYS:
            array = getattr(self, name)
            grown = np.zeros(size, dtype=array.dtype)
            grown[:old] = array
            setattr(self, name, grown)
        self.latest[old:] = None

    def live_volume(self, now_ms: int, bucket_ms: int) -> np.ndarray:
        return self.volume * VOLUME_DECAY ** ((now_ms - self.volume_ms) // bucket_ms)


class ServiceGauges(Collector):
    """The per-service gauges, built at scrape time from the latest closed buckets.

    Buckets close by the thousand while the detector catches up, and a scrape
    comes every 15 s or so and reads only the latest values. So closing a
    bucket only stores its services' values into arrays, straight from the
    score arrays; choosing the exported services and building their series
    waits for the scrape. Both run on the event loop, so they share that
    data without a lock.
    """

    def __init__(self, max_services: int, bucket_ms: int):
        self.max_services = max_services
        self.bucket_ms = bucket_ms
        self.partitions: dict[int, _Partition] = {}
        # Start of the latest bucket seen. Volume ages by bucket time, not per
        # bucket object: partitions close the same minute separately, and that
        # minute should age volume once.
        self.now_ms = 0
        self._sweep_at = max_services

    def observe(self, bucket: ClosedBucket, partition: int) -> None:
        """Store each service's latest score and counts, add to its volume, track firing.

        The services of a bucket are those with reports and those of open
        incidents (at the end of the bucket's series, without counts).
        """
        # A partition that is behind adds its reports at full weight, as of
        # the latest bucket.
        now = self.now_ms = max(self.now_ms, bucket.start_ms)
        series = bucket.series
        table = self.partitions.get(partition)
        if table is None or table.index is not series.index:  # new, or restored anew
            table = self.partitions[partition] = _Partition(series.index)
        table.grow(len(series.index.services))
        counted = series.services
        ids, positions = counted, series.first
        offset = len(series.rows) - len(series.extra)
        quiet = [(series.index.service_id(service), offset + j)
                 for j, (service, region) in enumerate(series.extra) if region is None]
        if quiet:
            ids = np.concatenate([ids, np.array([i for i, _ in quiet], dtype=np.intp)])
            positions = np.concatenate([positions, np.array([p for _, p in quiet], dtype=np.intp)])
        reports = series.reports[positions]
        score, expected, spread = (a[positions] for a in bucket.scored)
        table.seen_ms[ids] = bucket.start_ms
        table.reports[ids] = reports
        table.expected[ids] = expected
        table.spread[ids] = spread
        table.score[ids] = score
        level = np.zeros(len(ids), dtype=np.int8)
        if bucket.severities:
            where = {p: k for k, p in enumerate(positions.tolist())}
            for i, severity in bucket.severities.items():
                k = where.get(i)
                if k is not None:
                    level[k] = 2 if severity == CRITICAL else 1
        table.level[ids] = level
        table.known[ids] = True
        decay = VOLUME_DECAY ** ((now - table.volume_ms[counted]) // self.bucket_ms)
        table.volume[counted] = table.volume[counted] * decay + reports[:len(counted)]
        table.volume_ms[counted] = now
        # Filled, not built from a list: NumPy would take the tally, a mapping
        # with a length, for a sequence to unpack.
        latest = np.empty(len(counted), dtype=object)
        latest.fill(bucket.counts)
        table.latest[counted] = latest
        if quiet:
            table.latest[ids[len(counted):]] = None
        if sum(np.count_nonzero(t.known) for t in self.partitions.values()) >= self._sweep_at:
            self._live_volumes()

    def forget(self, partition: int) -> None:
        """Drop a partition's services, as when it is revoked."""
        self.partitions.pop(partition, None)

    def firing_count(self) -> int:
        """Services with a service-wide incident open (in any partition, counted once)."""
        return len({table.index.services.name(i) for table in self.partitions.values()
                    for i in np.flatnonzero(table.level).tolist()})

    @property
    def known(self) -> list[str]:
        """Services still tracked: not yet forgotten for being quiet."""
        return list(dict.fromkeys(
            t.index.services.name(i) for t in self.partitions.values()
            for i in np.flatnonzero(t.known).tolist()
        ))

    def _merged(self) -> dict[str, list]:
        """Per known service: [volume, level, partition, id, latest bucket start].

        A service is normally in one partition. It can be in several when its
        reports are keyed by something else or the topic gained partitions:
        then its volumes add up, its values are those of its newest entry,
        and it is firing if any partition has an incident open on it (that
        partition scores it in every bucket, so its entry is current).
        """
        merged: dict[str, list] = {}
        for table, ids, volumes in self._live_volumes():
            name = table.index.services.name
            for i, volume, level, seen_ms in zip(
                ids.tolist(), volumes.tolist(), table.level[ids].tolist(),
                table.seen_ms[ids].tolist(), strict=True,
            ):
                service = name(i)
                entry = merged.get(service)
                if entry is None:
                    merged[service] = [volume, level, table, i, seen_ms]
                else:
                    entry[0] += volume
                    entry[1] = max(entry[1], level)
                    if seen_ms > entry[4]:
                        entry[2:] = [table, i, seen_ms]
        return merged

    def _live_volumes(self) -> list[tuple[_Partition, np.ndarray, np.ndarray]]:
        """Per partition, its known services' ids and current volumes, after forgetting
        quiet services that are not firing."""
        out = []
        for table in self.partitions.values():
            volume = table.live_volume(self.now_ms, self.bucket_ms)
            forget = table.known & (volume < QUIET_VOLUME) & (table.level == 0)
            table.known[forget] = False
            table.latest[forget] = None  # lets their old buckets go
            ids = np.flatnonzero(table.known)
            out.append((table, ids, volume[ids]))
        # Every scrape sweeps; so does `observe` once the known services have
        # doubled since (plus room for the exported services, so a small table
        # is not swept at each new service). Work per new service stays
        # constant, amortised, without scrapes.
        self._sweep_at = 2 * sum(len(ids) for _, ids, _ in out) + self.max_services
        return out

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples, so the registry knows their names."""
        return iter(_service_families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        merged = self._merged()
        exported = heapq.nlargest(self.max_services, merged, key=lambda s: merged[s][0])
        top = set(exported)
        exported += sorted(s for s, entry in merged.items() if entry[1] and s not in top)
        families = _service_families()
        reports, expected, spread, score, firing, severity, regions, problems = families
        for service in exported:
            _, level, table, i, _ = merged[service]
            labels = [service]
            reports.add_metric(labels, int(table.reports[i]))
            expected.add_metric(labels, float(table.expected[i]))
            spread.add_metric(labels, float(table.spread[i]))
            score.add_metric(labels, float(table.score[i]))
            firing.add_metric(labels, 1 if level else 0)
            severity.add_metric(labels, level)
            tally = table.latest[i]
            if tally is not None:
                _, by_region, by_problem = tally.counts_of(i)
                for region, n in heapq.nlargest(TOP_BREAKDOWN, by_region.items(), key=_count):
                    regions.add_metric([service, region], n)
                for problem, n in heapq.nlargest(TOP_BREAKDOWN, by_problem.items(), key=_count):
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
