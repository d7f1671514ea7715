"""Prometheus metrics of one detector process, and the HTTP endpoint that serves them.

Per-service series are capped: only the `max_services` services with the most
recent reports, plus every service with an open incident, get their own label
values, so 100,000 services do not become 100,000 series per metric.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import socket
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from stream_detector import __version__
from stream_detector.core.detector import OUTCOMES, ClosedBucket
from stream_detector.core.events import REASONS
from stream_detector.core.incidents import CRITICAL, Alert
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
        self.send_retries = Counter(
            "stream_detector_send_retries",
            "Alerts, dead letters and snapshots sent again after a failed delivery.",
            ["kind"], registry=r)
        for kind in ("alert", "dead_letter", "snapshot"):
            self.send_retries.labels(kind)
        self.offset_resets = Counter(
            "stream_detector_offset_resets",
            "Partitions whose stored position was outside the log (a broker reset, a "
            "re-created topic, retention), restarted from the earliest offset.",
            ["partition"], registry=r)
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

    def observe_alert(self, alert: Alert, latency_seconds: float) -> None:
        self.alerts.labels(alert.status, alert.severity).inc()
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
        ids, positions, with_reports = series.service_positions()
        counted = ids[:with_reports]
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
        if len(ids) > with_reports:  # services of open incidents without reports
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



# Limits of the HTTP endpoint. Its clients are Prometheus and the kubelet's
# probes: a small GET every few seconds, answered in milliseconds. A client
# that is much bigger or slower than that is broken or hostile, and is cut off
# before it can hold a socket, memory or the event loop.

# Request line plus headers. A scrape's head is about 300 bytes; 16 KiB leaves
# room for a large bearer token (OIDC tokens with group claims pass 8 KiB) and
# is still small enough that reading it costs nothing. Beyond it: 431.
MAX_HEAD_BYTES = 16 * 1024
# Time to receive the whole head, not per line: a real client sends it in one
# packet, so 5 s is generous even over a congested link, and it is what a
# client dribbling a line every few seconds can hold a connection for. Beyond
# it: 408.
HEAD_TIMEOUT_SECONDS = 5.0
# Time to deliver the answer and close. Prometheus gives up on a scrape after
# its default scrape_timeout of 10 s anyway; a client that stops reading is
# dropped then rather than holding the socket for good.
WRITE_TIMEOUT_SECONDS = 10.0
# Connections served at once. Legitimate load is one or two Prometheus servers
# and a probe or two, each connection lasting milliseconds; 64 is ample for
# that plus a person with curl, and keeps the descriptors a socket flood can
# take far below the usual limit of 1024, which the Kafka clients share.
MAX_CONNECTIONS = 64
# The kernel queues connections not yet accepted; they wait there while the
# server is at its cap.
LISTEN_BACKLOG = 64
# When accept() fails for want of descriptors (the Kafka clients share the
# limit) and the server holds none to give back, it waits this long instead of
# spinning.
ACCEPT_RETRY_SECONDS = 0.1
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# After an error answer the server keeps reading, and discarding, for a moment
# before it closes (RFC 9112, section 9.6): closing with a request still
# arriving makes the kernel send a reset, which can destroy the answer before
# the client reads it. 1 s and 4 MiB cover the rest of an oversized head sent
# in one go; more than that is not worth waiting for.
LINGER_SECONDS = 1.0
LINGER_MAX_BYTES = 4 * 1024 * 1024


class _HeadTooLarge(Exception):
    """The request line and headers passed `max_head_bytes`."""


class HttpServer:
    """A tiny HTTP server on the event loop, hardened for the open network; a
    subclass says what each request target is answered with (`answer`).

    Small enough to own: prometheus-client's own server runs in a thread and
    knows nothing of health, and a web framework would be a dependency for
    a handful of routes. One request per connection (`Connection: close`), GET and
    HEAD only, and every phase of a connection bounded by the limits above.
    The server accepts one connection at a time, and one that takes it past
    `max_connections` displaces the oldest connection
    that has not finished sending its request (or is being answered with an
    error), which is where slow and hostile clients sit, while a scrape passes
    through that state in a millisecond; when every connection is being
    answered, the oldest of them, a reader that slow, is displaced. So the
    descriptors it holds never pass the cap by more than one, however fast a flood arrives
    (asyncio's own server accepts a burst before any handler can run), and a
    probe is answered even while slow readers hold every connection.
    """

    def __init__(
        self,
        *,
        max_head_bytes: int = MAX_HEAD_BYTES,
        head_timeout: float = HEAD_TIMEOUT_SECONDS,
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        linger: float = LINGER_SECONDS,
    ):
        self.max_head_bytes = max_head_bytes
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.linger = linger
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task] = []
        # Every connection, and the displaceable ones, oldest first (a dict keeps
        # insertion order).
        self._connections: dict[asyncio.StreamWriter, None] = {}
        self._handlers: set[asyncio.Task] = set()
        self._displaceable: dict[asyncio.StreamWriter, None] = {}

    async def start(self, host: str, port: int) -> int:
        """Listen on every address `host` names; returns the port (chosen when `port` is 0)."""
        loop = asyncio.get_running_loop()
        addresses = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
        try:
            for family, _, _, _, address in dict.fromkeys(
                    (info[0], *info[1:4], info[4][:2]) for info in addresses):
                if self._listeners:  # the same port on each address, as asked or as chosen
                    address = (address[0], self._listeners[0].getsockname()[1])
                listener = socket.create_server(address, family=family, backlog=LISTEN_BACKLOG)
                listener.setblocking(False)
                self._listeners.append(listener)
        except OSError:
            self._close_listeners()
            raise
        self._accepting = [asyncio.create_task(self._accept_loop(listener))
                           for listener in self._listeners]
        return self._listeners[0].getsockname()[1]

    async def stop(self) -> None:
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        self._close_listeners()
        for writer in list(self._connections):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners = []

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    # The displaced socket closes on the loop's next turn.
                    await asyncio.sleep(0 if self._displace_oldest() else ACCEPT_RETRY_SECONDS)
                continue  # or the client left before it was accepted
            if len(self._connections) >= self.max_connections:
                self._displace_oldest()  # its socket closes while the new one is set up
            try:
                reader, writer = await self._streams(connection)
            except OSError:
                connection.close()
                continue
            self._connections[writer] = None
            self._displaceable[writer] = None
            handler = asyncio.create_task(self._handle(reader, writer))
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)

    async def _streams(self, connection: socket.socket
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        # The reader's buffer limit is the head cap, so one endless line is
        # refused once it passes the cap instead of being buffered.
        reader = asyncio.StreamReader(limit=self.max_head_bytes)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, connection)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except ConnectionError:
            pass  # the client went away; there is no one to answer
        finally:
            self._forget(writer)
            if not writer.transport.is_closing():
                writer.transport.abort()

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        self._connections.pop(writer, None)
        self._displaceable.pop(writer, None)

    def _displace_oldest(self) -> bool:
        """Drop the oldest connection still sending its request or being refused, or
        failing that, the oldest being answered: when `max_connections` others
        arrived while it was answered, it reads far slower than any scraper."""
        oldest = next(iter(self._displaceable or self._connections), None)
        if oldest is None:
            return False
        self._forget(oldest)
        oldest.transport.abort()
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.head_timeout):
                request_line = await self._read_head(reader)
        except TimeoutError:
            return await self._refuse(reader, writer, 408, b"request head too slow\n")
        except (asyncio.LimitOverrunError, _HeadTooLarge):
            return await self._refuse(reader, writer, 431, b"request head too large\n")
        except asyncio.IncompleteReadError:
            # Closed before a whole head (a TCP probe, or a displaced client).
            return await self._close(writer)
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return await self._refuse(reader, writer, 400, b"bad request line\n")
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return await self._refuse(reader, writer, 405, b"only GET and HEAD\n",
                                      b"Allow: GET, HEAD\r\n")
        self._displaceable.pop(writer, None)  # it may have been displaced meanwhile
        status, ctype, body, headers = self.answer(target)
        writer.write(_response_head(status, ctype, len(body), headers)
                     + (body if method == b"GET" else b""))
        await self._close(writer)

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        """The request line, once the whole head has arrived (the headers are not used)."""
        size = 0
        request_line = b""
        while True:
            line = await reader.readuntil(b"\n")
            size += len(line)
            if size > self.max_head_bytes:
                raise _HeadTooLarge
            if line not in (b"\r\n", b"\n"):
                request_line = request_line or line
            elif request_line:
                return request_line
            # else: an empty line before the request line, which RFC 9112
            # (section 2.2) asks servers to ignore; it still counts to the cap.

    def answer(self, target: bytes) -> tuple[int, str, bytes, bytes]:
        """Status, content type, body and extra header lines for a GET of `target`
        (path and query, as sent)."""
        raise NotImplementedError

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      status: int, body: bytes, extra_headers: bytes = b"") -> None:
        """Answer an error, then read and discard a while before closing (see LINGER_SECONDS)."""
        writer.write(_response_head(status, "text/plain", len(body), extra_headers) + body)
        writer.write_eof()
        discarded = 0
        try:
            async with asyncio.timeout(self.linger):
                while discarded < LINGER_MAX_BYTES:
                    chunk = await reader.read(64 * 1024)
                    if not chunk:
                        break
                    discarded += len(chunk)
        except OSError:  # TimeoutError and ConnectionError are both OSErrors
            pass
        await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close once the answer is delivered, or drop the client at the write deadline."""
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), self.write_timeout)
        except OSError:  # TimeoutError and ConnectionError are both OSErrors
            writer.transport.abort()


class MetricsServer(HttpServer):
    """/metrics, /healthz and /readyz of the detector."""

    def __init__(
        self,
        metrics: DetectorMetrics,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        **limits: float,
    ):
        super().__init__(**limits)
        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready

    def answer(self, target: bytes) -> tuple[int, str, bytes, bytes]:
        return (*self._route(target.split(b"?")[0]), b"")

    def _route(self, path: bytes) -> tuple[int, str, bytes]:
        if path == b"/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics.exposition()
        if path == b"/healthz":
            return _probe(self.healthy(), b"ok\n", b"unhealthy\n")
        if path == b"/readyz":
            return _probe(self.ready(), b"ready\n", b"not ready\n")
        return 404, "text/plain", b"not found\n"


def _response_head(status: int, ctype: str, length: int, extra: bytes = b"") -> bytes:
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n")
    return head.encode("latin-1") + extra + b"\r\n"


def _probe(ok: bool, yes: bytes, no: bytes) -> tuple[int, str, bytes]:
    return (200, "text/plain", yes) if ok else (503, "text/plain", no)
