"""`stream-detector board`: the live status board's asyncio shell.

`BoardFeed` reads the alerts and outages topics from their beginning into a
`BoardView` (`core/board_view.py`), with no consumer group: every board
process reads every partition and holds the whole view, so replicas behind
a load balancer agree, and there are no offsets to commit because a start
rebuilds the view from the logs. When the broker answers again after it did
not, its logs may be new ones (a broker that keeps them in memory comes back
empty, and offsets start again at 0), so the feed reads both topics again from
their beginning into a fresh view and serves it once caught up; until then it
serves the old one and `/readyz` says 503. `BoardServer` answers the page and the JSON
API from that view, behind the limits of the metrics endpoint (`HttpServer`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from urllib.parse import parse_qs, quote, unquote, urlsplit

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from stream_detector.config import Settings
from stream_detector.core.board_view import BadMessage, BoardView
from stream_detector.io.checkpoint import Position
from stream_detector.io.clients import CONSUMER_FETCH, start_client, stop_client, watch_broker
from stream_detector.io.listening import start_listening
from stream_detector.io.metrics import HttpServer
from stream_detector.io.reports_log import ReportsLog, record_mark

log = logging.getLogger("stream_detector.board")

MAX_BATCH = 10_000
# Rows of each list the page is sent; the JSON API gives them all. A page of
# 10,000 rows helps no one, and polling it every two seconds would cost more.
PAGE_ROWS = 200
# A new topic (the outages topic, once a correlate stage first publishes) is
# seen at the next metadata refresh; aiokafka's default waits five minutes.
METADATA_MAX_AGE_MS = 30_000
# How often the board reads back a record of each partition to see that the
# broker still has the logs it read (see BoardFeed._read).
LOG_CHECK_EVERY_S = 5.0
# At most one warning per reason this often about messages skipped, with the count.
SKIP_WARNING_EVERY_S = 60.0


class BoardFeed:
    """The alerts and outages topics, from their beginning, into the view."""

    def __init__(self, settings: Settings, view: BoardView):
        self.settings = settings
        self.view = view
        """The view served; replaced by `_next` once a rebuild has caught up."""
        self._next: BoardView | None = None
        self.connected = False
        self._rebuild_due = False
        self._topics = {settings.alerts_topic: BoardView.apply_alert,
                        settings.outages_topic: BoardView.apply_outage}
        # End offsets of each partition when it was first assigned: the view
        # is caught up once every partition's position has reached them.
        self._ends: dict[TopicPartition, int] = {}
        self._behind: set[TopicPartition] = set()
        self._assigned = False
        self._warned_at: dict[str, float] = {}
        self._skipped_since: dict[str, int] = {}
        # Where each partition was read to, with a mark of a record read (as the
        # detector keeps for its reports): a broker that came back with other
        # logs between two of the watch's looks is found by reading it back.
        self._read: dict[TopicPartition, Position] = {}
        self._log: ReportsLog | None = None
        self._checked_at = time.monotonic()

    def caught_up(self) -> bool:
        """Whether the view holds every message that was on the topics when the
        board started (and when each partition it reads first appeared)."""
        return self._assigned and not self._behind

    def build_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            *self._topics,
            **self.settings.kafka_client_options(),
            group_id=None,
            enable_auto_commit=False,
            # A position outside its log is a sign of new logs (see run), not
            # something to skip past silently.
            auto_offset_reset="none",
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            **CONSUMER_FETCH,
        )

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.build_consumer()
        try:
            await start_client(consumer, self.settings)
        except BaseException:
            await stop_client(consumer)  # frees what the failed start opened
            raise
        self.connected = True
        watching = asyncio.create_task(watch_broker(consumer, stop, self._set_connected))
        self._log = ReportsLog(consumer, self.settings.kafka_client_options())
        try:
            while not stop.is_set():
                if self._rebuild_due:
                    await self._rebuild(consumer)
                try:
                    batch = await consumer.getmany(timeout_ms=500, max_records=MAX_BATCH)
                except NoOffsetForPartitionError as exc:  # first read of a partition
                    await consumer.seek_to_beginning(*exc.args)
                    continue
                except OffsetOutOfRangeError as exc:
                    # The broker came back with other logs faster than the watch
                    # noticed it was gone: read them again like a reconnect does.
                    log.warning("a position is outside its log", extra={
                        "positions": {f"{tp.topic}/{tp.partition}": offset
                                      for tp, offset in exc.args[0].items()}})
                    self._rebuild_due = True
                    continue
                target = self._next or self.view
                for tp, messages in batch.items():
                    apply = self._topics[tp.topic]
                    for message in messages:
                        self._apply(target, apply, message)
                    if messages:
                        self._read[tp] = Position(messages[-1].offset + 1,
                                                  record_mark(messages[0]))
                await self._track_progress(consumer)
                await self._check_logs()
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            await self._log.stop()
            await stop_client(consumer)

    async def _check_logs(self) -> None:
        """Every LOG_CHECK_EVERY_S, whether the logs still hold the records read."""
        if time.monotonic() - self._checked_at < LOG_CHECK_EVERY_S or not self.connected:
            return
        self._checked_at = time.monotonic()
        try:
            other = await self._log.unmatched(self._read)
        except KafkaError:
            return  # asked again at the next check
        if other:
            log.warning("a topic's log no longer holds the records read", extra={
                "partitions": [f"{tp.topic}/{tp.partition}" for tp in other]})
            self._rebuild_due = True

    def _set_connected(self, connected: bool) -> None:
        if connected and not self.connected:
            self._rebuild_due = True
        self.connected = connected

    async def _rebuild(self, consumer: AIOKafkaConsumer) -> None:
        """Read both topics again from their beginning into a fresh view: the logs
        the broker came back with may not be the ones the view was folded from."""
        self._rebuild_due = False
        self._read.clear()
        self._next = BoardView(self.view.recent_ms, self.view.clock_ms)
        self._ends.clear()
        self._behind.clear()
        self._assigned = False
        if consumer.assignment():
            await consumer.seek_to_beginning()
        log.warning("reading the topics again from their beginning")

    def _apply(self, view: BoardView, apply: Callable[[BoardView, bytes], bool],
               message) -> None:
        try:
            apply(view, message.value if message.value is not None else b"")
        except BadMessage as exc:
            self._warn_skipped(exc, message)

    def _warn_skipped(self, exc: BadMessage, message) -> None:
        """A warning naming the first message skipped for a reason, then at most one
        a minute per reason with how many were skipped since."""
        reason = exc.reason
        self._skipped_since[reason] = self._skipped_since.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._warned_at.get(reason, -SKIP_WARNING_EVERY_S) < SKIP_WARNING_EVERY_S:
            return
        self._warned_at[reason] = now
        log.warning("skipped a message the board cannot use", extra={
            "reason": reason, "detail": str(exc), "topic": message.topic,
            "partition": message.partition, "offset": message.offset,
            "skipped": self._skipped_since.pop(reason)})

    async def _track_progress(self, consumer: AIOKafkaConsumer) -> None:
        assignment = consumer.assignment()
        new = [tp for tp in assignment if tp not in self._ends]
        if new:
            try:
                ends = await consumer.end_offsets(new)
            except KafkaError:
                return  # asked again after the next batch
            self._ends.update(ends)
            self._behind.update(new)
        self._assigned = self._assigned or bool(assignment)
        for tp in list(self._behind):
            if tp not in assignment:
                self._behind.discard(tp)  # the topic went away
            elif await consumer.position(tp) >= self._ends[tp]:
                self._behind.discard(tp)
                if not self._behind:
                    if self._next is not None:
                        self.view, self._next = self._next, None
                    log.info("board caught up", extra={"incidents_open": len(
                        self.view.incidents("open"))})


def _page() -> tuple[bytes, bytes]:
    """The page, and its Content-Security-Policy header: only its own inline script
    and style run (by their hashes), so markup that reached the page (it should
    not: the script writes every value as text) could run no script."""
    html = resources.files("stream_detector.io").joinpath("board.html").read_bytes()

    def digest(tag: bytes) -> str:
        body = re.search(rb"<%s>(.*?)</%s>" % (tag, tag), html, re.S)
        if body is None:
            raise RuntimeError(f"board.html has no <{tag.decode()}> element")
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.group(1)).digest()).decode() + "'"

    policy = (f"default-src 'none'; script-src {digest(b'script')}; "
              f"style-src {digest(b'style')}; connect-src 'self'; img-src 'self' data:; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, f"Content-Security-Policy: {policy}\r\n".encode()


JSON = "application/json"
Answer = tuple[int, str, bytes, bytes]
_NO_STORE = b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
# JSON answers are kept until the view changes, so clients polling an unchanged
# view cost a lookup. Keyed by what the answer depends on (path, status,
# service), not the raw target, so extra query parameters share an entry; and
# capped in bytes, as the service asked about is the client's choice. 16 MiB
# holds the full list of 10,000 open incidents (4 MB) a few times over.
CACHE_BYTES = 16 * 1024 * 1024


class BoardServer(HttpServer):
    """The page at `/`, the JSON API under `/api/v1/`, `/healthz` and `/readyz`."""

    def __init__(self, feed: BoardFeed, grafana_url: str | None = None, **limits: float):
        super().__init__(**limits)
        self.feed = feed
        self.grafana_url = grafana_url.rstrip("/") if grafana_url else None
        self.page, self.page_policy = _page()
        self._cache: dict[tuple, Answer] = {}
        self._cache_bytes = 0
        self._cached_for: tuple[BoardView, int, bool] | None = None

    @property
    def view(self) -> BoardView:
        return self.feed.view

    def answer(self, target: bytes) -> Answer:
        try:
            parts = urlsplit(target.decode("utf-8"))
        except UnicodeDecodeError:
            return _error(400, "the request target is not UTF-8")
        path, query = parts.path, parse_qs(parts.query)
        if not path.startswith("/api/"):
            return self._route(path, query)
        # The view itself too: a rebuilt one starts its version again.
        state = (self.view, self.view.version, self.feed.caught_up())
        if state != self._cached_for:
            self._cache.clear()
            self._cache_bytes = 0
            self._cached_for = state
        key = (path, _one(query, "status"), _one(query, "service"))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._route(path, query)
            size = len(cached[2])
            if self._cache_bytes + size > CACHE_BYTES:
                self._cache.clear()
                self._cache_bytes = 0
            if size <= CACHE_BYTES:
                self._cache[key] = cached
                self._cache_bytes += size
        return cached

    def _route(self, path: str, query: dict[str, list[str]]) -> Answer:
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", self.page, self.page_policy + _NO_STORE
        if path == "/healthz":
            ok = self.feed.connected
            return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"unhealthy\n", b""
        if path == "/readyz":
            ready = self.feed.connected and self.feed.caught_up()
            return (200 if ready else 503), "text/plain", (
                b"ready\n" if ready else b"not ready\n"), b""
        if path == "/api/v1/incidents":
            status = _one(query, "status")
            if status not in (None, "open", "resolved"):
                return _error(400, "status must be open or resolved")
            return _json({"incidents": self.view.incidents(status, _one(query, "service"))})
        if path == "/api/v1/outages":
            return _json({"outages": self.view.outages()})
        if path.startswith("/api/v1/services/") or path == "/api/v1/services":
            # ?service=NAME too: a browser resolves a name "." or ".." in the path
            # (even as %2E%2E) before it asks.
            name = (unquote(path.removeprefix("/api/v1/services/")) if path != "/api/v1/services"
                    else _one(query, "service") or "")
            if not name:
                return _error(400, "name a service: /api/v1/services/NAME or ?service=NAME")
            detail = self.view.service(name)
            if detail is None:
                return _error(404, "no incident of this service on the board")
            return _json({**detail, "grafana": self._grafana(name)})
        if path == "/api/v1/board":
            return _json({**self.view.board(PAGE_ROWS), "caught_up": self.feed.caught_up(),
                          "grafana_url": self.grafana_url,
                          "skipped": sum(self.view.skipped.values())})
        return _error(404, "not found")

    def _grafana(self, service: str) -> str | None:
        if self.grafana_url is None:
            return None
        return f"{self.grafana_url}/d/stream-detector?var-service={quote(service, safe='')}"


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _json(body: dict) -> Answer:
    return 200, JSON, orjson.dumps(body), _NO_STORE


def _error(status: int, message: str) -> Answer:
    return status, JSON, orjson.dumps({"error": message}), _NO_STORE


async def serve_board(
    settings: Settings,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = False,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Serve the board until `stop` is set or SIGTERM/SIGINT arrives.

    The page is served from the start; until the feed has read the topics it
    shows that it is catching up, and `/readyz` says 503.
    """
    stop = stop or asyncio.Event()
    view = BoardView(int(settings.board_recent * 1000), lambda: int(time.time() * 1000))
    feed = BoardFeed(settings, view)
    server = BoardServer(feed, settings.grafana_url)
    await start_listening(server.start, settings.board_host, settings.board_port, "board_port",
                          stop, install_signal_handlers, on_listening, "board")
    try:
        await feed.run(stop)
    finally:
        await server.stop()
    log.info("stopped")
