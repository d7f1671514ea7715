"""100,000 messages, about a third of them garbage: the detector keeps going and loses nothing.

Every malformed message must reach the dead-letter topic byte for byte, with
the reason it was refused in `error.reason`; every valid report must be
counted as accepted. Expectations come from how each message was built, not
from running the decoder.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream_detector.app import serve
from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    T0,
    create_topic,
    detector_settings,
    http_get,
    read_all,
    scrape,
)

pytestmark = pytest.mark.integration

TOTAL = 100_000
SERVICES = [f"svc-{i}" for i in range(20)] + ["café", "東京-bank"]
HOUR = 3_600_000


def valid(rng: random.Random, i: int, ts: int) -> bytes:
    doc: dict = {"service": rng.choice(SERVICES), "ts": ts}
    shape = i % 4
    if shape == 0:
        doc["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000)) + (
            f".{ts % 1000:03d}Z")
    if shape != 1:
        doc |= {"region": rng.choice(["US", "GB", "DE"]), "problem": "login"}
    if shape == 2:
        doc["reporter"] = f"r{i}"  # unique, so never a duplicate
    if shape == 3:
        doc["extra"] = {"ignored": [1, 2, 3]}
    return orjson.dumps(doc)


def malformed(rng: random.Random, i: int, ts: int, now_ms: int) -> tuple[bytes | None, str]:
    """One malformed message (unique by `i`, but for the empty ones) and its reason."""
    kind = i % 17
    if kind == 16:  # no value at all (a tombstone)
        return None, "not_json"
    good = {"service": f"svc-{i % 20}", "ts": ts, "n": i}
    if kind == 0:  # truncated JSON
        raw = orjson.dumps(good)
        return raw[:rng.randrange(1, len(raw) - 1)], "not_json"
    if kind == 1:
        return orjson.dumps(good)[:-1] + b',"x":', "not_json"
    if kind == 2:  # invalid UTF-8 inside a string
        return b'{"service": "svc-\xff\xfe", "ts": %d, "n": %d}' % (ts, i), "not_json"
    if kind == 3:  # the right text in another encoding
        text = f'{{"service": "Zürich-{i}", "ts": {ts}}}'
        encoding = "latin-1" if i % 32 == 3 else "utf-16"
        return text.encode(encoding), "not_json"
    if kind == 4:  # not objects
        return rng.choice([b"[1, 2, %d]" % i, b"%d" % i, b'"svc-%d"' % i, b"null", b"true",
                           b"[]"]), "not_object"
    if kind == 5:
        return orjson.dumps({"ts": ts, "n": i}), "missing_field"
    if kind == 6:
        return orjson.dumps({"service": "svc-1", "n": i}), "missing_field"
    if kind == 7:  # wrong types
        return orjson.dumps(good | {"service": i}), "bad_type"
    if kind == 8:
        return orjson.dumps(good | {"ts": rng.choice([ts / 7, True, [ts], {"ms": ts}])}), (
            "bad_type")
    if kind == 9:
        return orjson.dumps(good | {"region": 44, "problem": None}), "bad_type"
    if kind == 10:  # huge: the message alone is over 16 KiB (a few MB of them in all)
        if i % 5 == 0:
            return orjson.dumps(good | {"problem": "x" * (16 * 1024 + i % 500)}), "too_large"
        return orjson.dumps(good | {"service": "s" * 257}), "too_large"
    if kind == 11:  # a field over its limit in a message of normal size
        return orjson.dumps(good | {"reporter": "r" * 300}), "too_large"
    if kind == 12:  # far in the past
        return orjson.dumps(good | {"ts": rng.choice([0, -5, 946_684_799_999, 86_400_000])}), (
            "bad_timestamp")
    if kind == 13:
        return orjson.dumps(good | {"ts": "1999-12-31T23:59:59Z"}), "bad_timestamp"
    if kind == 14:  # ahead of the wall clock by more than max_future (1h)
        ahead = now_ms + 2 * HOUR + rng.randrange(30 * 24 * HOUR)
        return orjson.dumps(good | {"ts": ahead}), "bad_timestamp"
    # a clock bug beyond 2100, or a local time without an offset
    return orjson.dumps(good | {"ts": rng.choice([4_102_444_800_000 + i,
                                                  "2026-01-05T00:00:00"])}), "bad_timestamp"


def build(seed: int) -> tuple[list[bytes | None], list[str | None]]:
    """TOTAL message values and the reason each must be refused with (None: valid)."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    values: list[bytes | None] = []
    reasons: list[str | None] = []
    bad = 0
    for i in range(TOTAL):
        # Event time only moves forward, so no valid report is ever late.
        ts = T0 + i * 10
        if rng.random() < 0.35:
            raw, reason = malformed(rng, bad, ts, now_ms)
            bad += 1
        else:
            raw, reason = valid(rng, i, ts), None
        values.append(raw)
        reasons.append(reason)
    return values, reasons


async def test_malformed_messages_go_to_the_dlq_and_valid_ones_all_count(broker, unique):
    settings = detector_settings(broker.bootstrap_servers, unique, model="ewma",
                                 checkpoint_interval="1s")
    values, reasons = build(seed=1234)
    expected_bad = Counter((v, r) for v, r in zip(values, reasons, strict=True) if r)
    n_bad = sum(expected_bad.values())
    n_valid = TOTAL - n_bad
    assert set(r for _, r in expected_bad) == {"not_json", "not_object", "missing_field",
                                               "bad_type", "bad_timestamp", "too_large"}

    await create_topic(broker.bootstrap_servers, settings.reports_topic, 3)

    stop = asyncio.Event()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop, on_listening=listening.set_result))
    try:
        port = await asyncio.wait_for(listening, 30)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers,
                                    enable_idempotence=False, linger_ms=20)
        await producer.start()
        try:
            futures = [await producer.send(settings.reports_topic, value,
                                           key=str(i % 7).encode())
                       for i, value in enumerate(values)]
            await asyncio.gather(*futures)  # raises if any message was not stored
        finally:
            await producer.stop()

        async def all_counted() -> bool:
            m = await scrape(port)
            return sum(m.get(("stream_detector_reports_total", (("outcome", o),)), 0)
                       for o in ("accepted", "invalid", "late", "duplicate")) >= TOTAL

        await wait_for(all_counted, 60, every=0.5)
        metrics = await scrape(port)
        dead = await read_all(broker.bootstrap_servers, settings.dlq_topic,
                              lambda m: len(m) >= n_bad, timeout=60)
        # Still serving after all of it.
        assert not task.done()
        assert (await asyncio.to_thread(http_get, port, "/healthz"))[0] == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    def outcome(name: str) -> float:
        return metrics.get(("stream_detector_reports_total", (("outcome", name),)), 0)

    assert outcome("accepted") == n_valid
    assert outcome("invalid") == n_bad
    assert outcome("late") == outcome("duplicate") == 0
    by_reason = Counter(r for _, r in expected_bad.elements())
    for reason, n in by_reason.items():
        assert metrics[("stream_detector_dlq_messages_total", (("reason", reason),))] == n

    assert len(dead) == n_bad
    got = Counter((m.value, dict(m.headers)["error.reason"].decode()) for m in dead)
    assert got == expected_bad
    for m in dead:
        headers = dict(m.headers)
        assert headers["source.topic"] == settings.reports_topic.encode()
        assert headers["error.detail"]
        offset, partition = int(headers["source.offset"]), int(headers["source.partition"])
        assert 0 <= partition < 3 and offset >= 0
