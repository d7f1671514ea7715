"""river's estimators as per-series models: through the bank, into a snapshot and back."""

from __future__ import annotations

import json
import random

import numpy as np
import orjson
import pytest

from stream_detector.core import snapshot
from stream_detector.core.detector import DetectorConfig, PartitionDetector
from stream_detector.core.models import model_bank, model_factory
from tests.unit.test_snapshot import run

STEP = 300.0
T0 = 1_767_571_200_000
MINUTE = 60_000


@pytest.mark.parametrize("name", ["river:GaussianScorer", "river:HalfSpaceTrees",
                                  "river:HoltWinters", "river:SNARIMAX"])
def test_a_river_model_runs_in_the_bank_and_its_state_round_trips_as_json(name):
    rng = random.Random(4)
    bank = model_bank(name, STEP)
    rows = np.array([bank.add(), bank.add()])
    for i in range(400):
        bank.score(rows, STEP * i, np.array([20 + rng.gauss(0, 1), 5 + rng.gauss(0, 1)]))
        bank.learn()
    restored = model_bank(name, STEP)
    restored.load_state(json.loads(json.dumps(bank.state())))
    x = np.array([80.0, 5.0])
    a, b = bank.score(rows, STEP * 400, x), restored.score(rows, STEP * 400, x)
    assert a.score.tolist() == b.score.tolist()
    assert a.score[0] > 0.9 and a.score[0] > a.score[1]


def test_any_river_anomaly_class_is_a_model_and_a_wrong_name_is_one_sentence():
    model = model_factory("river:LODA")(STEP)
    for i in range(50):
        model.learn_one(STEP * i, float(i % 7))
    assert 0.0 <= model.score_one(STEP * 50, 3.0).score <= 1.0
    with pytest.raises(ValueError, match="unknown river estimator 'Nope'"):
        model_factory("river:Nope")


def messages(minutes: range):
    rng = random.Random(2)
    for minute in minutes:
        n = 200 if 150 <= minute < 160 else rng.randint(10, 20)
        for _ in range(n):
            yield orjson.dumps({"service": "x", "ts": T0 + minute * MINUTE + rng.randrange(MINUTE),
                                "region": "US"})


def test_a_detector_with_a_river_model_restores_from_its_snapshot_and_continues_alike():
    config = DetectorConfig(model="river:GaussianScorer", lateness_ms=5_000)
    batch = list(messages(range(0, 200)))
    cut = len(batch) // 2
    straight = PartitionDetector(config)
    expected = run(straight, batch) + straight.flush()
    first = PartitionDetector(config)
    before = run(first, batch[:cut])
    restored = snapshot.decode(snapshot.encode(first, config.model), config, wall_ms=0)
    after = run(restored, batch[cut:]) + restored.flush()
    assert [(b.start_ms, b.counts, b.alerts) for b in before + after] == [
        (b.start_ms, b.counts, b.alerts) for b in expected
    ]
    assert len(restored.bank) >= 1 and restored.bank.models[0].seen > 100
