"""The seasonal model's NAB score on realTweets must not slip.

Runs `bench/nab_realtweets.py`'s scoring for the default model (about 5 s)
and fails if the score at the best shared threshold falls more than
`TOLERANCE` below the figure recorded when the model was tuned.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from stream_detector.evaluation import nab_best_threshold

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "nab-realtweets"
# Measured with direction "both", default settings, every file alike.
RECORDED_SCORE = 20.05
TOLERANCE = 2.0


def _bench():
    path = ROOT / "bench" / "nab_realtweets.py"
    spec = importlib.util.spec_from_file_location("nab_realtweets", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not (DATA / "windows.json").is_file(),
    reason=f"NAB realTweets data not found at {DATA} (the shared folder beside the repo)",
)
def test_seasonal_model_nab_score_holds():
    bench = _bench()
    files = bench.run_model(bench.load_realtweets(DATA), "seasonal-poisson", direction="both")
    result = nab_best_threshold(files)
    assert result.total >= RECORDED_SCORE - TOLERANCE, (
        f"NAB score {result.total:.2f} is more than {TOLERANCE} below the recorded "
        f"{RECORDED_SCORE} (threshold {result.threshold:.6g}, "
        f"{result.detected_windows} of {result.windows} windows, "
        f"{result.false_positives} false positives)"
    )
