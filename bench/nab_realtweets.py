"""NAB standard-profile score of the models on NAB's ten realTweets files.

Runs every model named (by default the EWMA baseline and the seasonal count
model) over the ten files in one run, through the same `score_series` path as
`stream-detector backtest --input --direction both`, with the same settings
for every file. It prints, per model, the NAB score at the best single
threshold shared by the ten files, the score at the detector's own default
alert threshold, a per-file breakdown and the runtime.

    .venv/bin/python bench/nab_realtweets.py [--data ../shared/data/nab-realtweets]

Drops are scored too (`--direction both`, the default here): some labelled
events are volume falling to zero. The ten files are a development set: the
model's general parameters were tuned on them, so the figure is optimistic
for unseen series.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_detector.evaluation import (  # noqa: E402
    NabFile,
    NabResult,
    nab_best_threshold,
    nab_score,
    nab_window_rows,
)
from stream_detector.series_backtest import (  # noqa: E402
    DEFAULT_THRESHOLD,
    read_series_csv,
    score_series,
)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nab-realtweets"
DEFAULT_MODELS = ("ewma", "seasonal-poisson")


@dataclass(frozen=True)
class NabSeries:
    name: str
    rows: list[tuple[str, float]]
    windows: list[tuple[int, int]]


def load_nab(data: Path) -> list[NabSeries]:
    """The files `windows.json` in `data` names (paths relative to it), with their windows.

    Files are read as `backtest --input` reads them (`read_series_csv`).
    """
    if not (data / "windows.json").is_file():
        raise ValueError(f"{data}: no windows.json there; pass --data")
    windows = json.loads((data / "windows.json").read_text())
    series = []
    for name in sorted(windows):
        rows = read_series_csv(data / name)
        stamps = [r[0] for r in rows]
        series.append(NabSeries(name, rows, nab_window_rows(stamps, windows[name])))
    return series


def load_realtweets(data: Path) -> list[NabSeries]:
    """The ten realTweets files with their labelled windows as row indices."""
    return load_nab(data)


def corpus_line(series: list[NabSeries], direction: str) -> str:
    return (f"{len(series)} files, {sum(len(s.rows) for s in series):,} rows, "
            f"{sum(len(s.windows) for s in series)} windows; direction {direction}")


def run_model(series: list[NabSeries], model: str | None, **options) -> list[NabFile]:
    """Anomaly scores of `model` (None: the one picked from the values) for every file."""
    files = []
    for s in series:
        scores = [row["anomaly_score"] for row in score_series(s.rows, model, **options)]
        files.append(NabFile(s.name, scores, s.windows))
    return files


def describe(model: str, best: NabResult, at_default: NabResult, seconds: float) -> str:
    lines = [
        f"{model}: NAB score {best.total:.2f} of {best.windows} at the best shared threshold "
        f"{best.threshold:.6g} ({best.detected_windows} windows caught, "
        f"{best.false_positives} false positives); at the default threshold "
        f"{DEFAULT_THRESHOLD}: {at_default.total:.2f}; {seconds:.1f} s",
        f"  {'file':<26}{'score':>8}{'caught':>8}{'FP':>5}",
    ]
    for f in best.files:
        caught = f"{f.detected_windows}/{f.windows}"
        lines.append(f"  {f.name:<26}{f.score:>8.2f}{caught:>8}{f.false_positives:>5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with the realTweets CSV files and windows.json")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--direction", choices=["up", "down", "both"], default="both")
    args = parser.parse_args(argv)
    try:
        series = load_realtweets(args.data)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(corpus_line(series, args.direction))
    for model in args.models:
        started = time.perf_counter()
        files = run_model(series, model, direction=args.direction)
        seconds = time.perf_counter() - started
        print(describe(model, nab_best_threshold(files), nab_score(files, DEFAULT_THRESHOLD),
                       seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
