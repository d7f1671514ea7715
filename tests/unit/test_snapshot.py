"""A restored detector continues exactly as the one it was taken from."""

from __future__ import annotations

import dataclasses
import random
import zlib

import numpy as np
import orjson
import pytest

from stream_detector.core import snapshot
from stream_detector.core.detector import DetectorConfig, PartitionDetector
from stream_detector.core.models import MODELS

T0 = 1_767_571_200_000
MINUTE = 60_000


def reports(rng: random.Random, minutes: range):
    for minute in minutes:
        n = 300 if 200 <= minute < 215 else rng.randint(10, 30)
        for _ in range(n):
            yield orjson.dumps({
                "service": rng.choice(["x", "x", "y"]),
                "ts": T0 + minute * MINUTE + rng.randrange(MINUTE),
                "region": rng.choice(["US", "GB"]),
                "problem": rng.choice(["login", "app"]),
                "reporter": f"{rng.getrandbits(20):x}",
            })


def run(detector: PartitionDetector, messages) -> list:
    out = []
    for raw in messages:
        detector.add(raw)
        out.extend(detector.advance())
    return out


@pytest.mark.parametrize("model", sorted(MODELS))
def test_restore_mid_run_gives_identical_results(model):
    config = DetectorConfig(model=model, lateness_ms=5_000)
    messages = list(reports(random.Random(1), range(0, 260)))
    cut = len(messages) * 205 // 260  # inside the outage, with an incident open

    straight = PartitionDetector(config)
    expected = run(straight, messages) + straight.flush()

    first = PartitionDetector(config)
    before = run(first, messages[:cut])
    data = snapshot.encode(first, model)
    restored = snapshot.decode(data, config, wall_ms=0)
    if model == "ewma":  # the others are still warming up after four hours
        assert restored.incidents.open, "the cut should fall inside an open incident"
    after = run(restored, messages[cut:]) + restored.flush()

    assert [(b.start_ms, b.counts, b.alerts) for b in before + after] == [
        (b.start_ms, b.counts, b.alerts) for b in expected
    ]
    assert [b.scores for b in before + after] == [b.scores for b in expected]


def test_incompatible_snapshots_are_refused_with_the_reason():
    config = DetectorConfig(model="ewma")
    d = PartitionDetector(config)
    run(d, reports(random.Random(2), range(0, 5)))
    data = snapshot.encode(d, "ewma")
    with pytest.raises(snapshot.SnapshotError, match="bucket"):
        snapshot.decode(data, dataclasses.replace(config, bucket_ms=300_000), 0)
    other = next(name for name in MODELS if name != "ewma")
    with pytest.raises(snapshot.SnapshotError, match="model"):
        snapshot.decode(data, dataclasses.replace(config, model=other), 0)
    with pytest.raises(snapshot.SnapshotError, match="format"):
        snapshot.decode(b"garbage", config, 0)


def test_incident_history_survives_a_restore():
    """The recent incidents that make a recurring anomaly learnable are state too."""
    config = DetectorConfig(model="ewma", lateness_ms=5_000)
    d = PartitionDetector(config)
    run(d, reports(random.Random(3), range(0, 240)))
    assert d.incidents.history, "the outage at minute 200 should have resolved"
    restored = snapshot.decode(snapshot.encode(d, "ewma"), config, wall_ms=0)
    assert restored.incidents.history == d.incidents.history


def _rewrite(data: bytes, change) -> bytes:
    doc = orjson.loads(zlib.decompress(data[len(snapshot.MAGIC):]))
    change(doc)
    return snapshot.MAGIC + zlib.compress(orjson.dumps(doc))


def test_the_reporter_filter_survives_a_restore_also_from_format_3():
    """Format 3 kept (service, reporter) pairs; a restore from it still knows who reported."""
    config = DetectorConfig(model="ewma")
    d = PartitionDetector(config)
    first = orjson.dumps({"service": "x", "ts": T0, "reporter": "a81f"})
    again = orjson.dumps({"service": "x", "ts": T0 + 1000, "reporter": "a81f"})
    other = orjson.dumps({"service": "x", "ts": T0 + 2000, "reporter": "b2c3"})
    assert d.add(first) == "accepted"
    data = snapshot.encode(d, "ewma")

    def as_format_3(doc):
        doc["version"] = 3
        doc["reporters"] = [[T0 // 3_600_000, [["x", "a81f"]]]]

    for restored_from in (data, _rewrite(data, as_format_3)):
        restored = snapshot.decode(restored_from, config, wall_ms=0)
        assert restored.reporters.state() == d.reporters.state()
        assert restored.add(again) == "duplicate"
        assert restored.add(other) == "accepted"

    with pytest.raises(snapshot.SnapshotError, match="format version 2"):
        snapshot.decode(_rewrite(data, lambda doc: doc.update(version=2)), config, 0)


def test_a_format_5_snapshot_restores_under_the_detectors_slot_priors():
    """Format 5's seasonal rows had no `slot_prior_reports`; same layout, so they carry over."""
    config = DetectorConfig()
    d = PartitionDetector(config)
    run(d, reports(random.Random(3), range(180)))
    data = snapshot.encode(d, config.model)
    running = d.bank.config_key
    assert "slot_prior_reports" in running

    def as_format_5(doc):
        doc["version"] = 5
        doc["models"]["config"] = "(60.0, 'up', ())"

    restored = snapshot.decode(_rewrite(data, as_format_5), config, wall_ms=0)
    assert restored.bank.config_key == running
    assert np.array_equal(restored.bank.data[: len(d.bank)], d.bank.data[: len(d.bank)],
                          equal_nan=True)

    def other_settings(doc):
        as_format_5(doc)
        doc["models"]["config"] = "(60.0, 'up', (('score_offset', 2.0),))"

    with pytest.raises(snapshot.SnapshotError, match="model state does not fit"):
        snapshot.decode(_rewrite(data, other_settings), config, wall_ms=0)
