"""NAB standard-profile score on the 38 labelled files in ../shared/data, one run, one threshold.

The ten realTweets files (`nab-realtweets`) and the 28 files of `nab-metrics`
(artificial series, AWS CloudWatch metrics) are scored together, each through
the same path as `stream-detector backtest --input FILE --direction both`
with default settings: the model is the one `backtest --input` picks from the
values (`model_for_values`: counts or the general metric model) unless
`--models` names others, and no setting differs between files.

One threshold is shared by all 38 files. As NAB does for every detector, it
is the threshold that maximises the whole corpus' score (an exact sweep,
`nab_best_threshold`); the score at the detector's fixed a-priori alert
threshold (0.99, `DEFAULT_THRESHOLD`) is printed beside it. The normalised
score is NAB's: `100 * (raw - null) / (perfect - null)`, null being the
detector that never alerts and perfect the one that alerts once at the start
of every window (both scored by the same scorer).

    .venv/bin/python bench/nab.py [--models auto metric ewma] [--files]

These files are a development set: general settings were chosen on them,
never per-file or per-category ones; the rest of NAB's corpus is held out.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nab_realtweets import NabSeries, corpus_line, load_nab, run_model  # noqa: E402

from stream_detector.evaluation import (  # noqa: E402
    NabFile,
    NabResult,
    nab_best_threshold,
    nab_probation_rows,
    nab_score,
)
from stream_detector.series_backtest import (  # noqa: E402
    DEFAULT_THRESHOLD,
    model_for_values,
)

SHARED = ROOT.parent / "shared" / "data"
DEFAULT_FOLDERS = (SHARED / "nab-realtweets", SHARED / "nab-metrics")
AUTO = "auto"


def category(name: str) -> str:
    """NAB's category of a file: its folder, or realTweets for the flat realTweets folder."""
    return name.split("/")[0] if "/" in name else "realTweets"


def load_corpus(folders: list[Path]) -> list[NabSeries]:
    return [s for folder in folders for s in load_nab(folder)]


def run(series: list[NabSeries], model: str, direction: str = "both") -> tuple[list[NabFile],
                                                                                list[str]]:
    """Every file's anomaly scores under `model` ("auto": the one picked from the values)."""
    files = run_model(series, None if model == AUTO else model, direction=direction)
    used = [model_for_values(v for _, v in s.rows) if model == AUTO else model for s in series]
    return files, used


def bounds(files: list[NabFile]) -> tuple[float, float]:
    """Raw scores of the null detector (never alerts) and the perfect one."""
    null = nab_score([NabFile(f.name, [0.0] * len(f.scores), f.windows) for f in files], 0.5)
    perfect = []
    for f in files:
        scores = [0.0] * len(f.scores)
        first = nab_probation_rows(len(f.scores))
        for left, right in f.windows:
            if max(left, first) <= right:
                scores[max(left, first)] = 1.0
        perfect.append(NabFile(f.name, scores, f.windows))
    return null.total, nab_score(perfect, 0.5).total


def normalised(raw: float, null: float, perfect: float) -> float:
    return 100.0 * (raw - null) / (perfect - null)


def describe(result: NabResult, null: float, perfect: float, label: str) -> list[str]:
    by_cat: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0, 0])
    for f in result.files:
        c = by_cat[category(f.name)]
        c[0] += f.score
        c[1] += f.detected_windows
        c[2] += f.windows
        c[3] += f.false_positives
    lines = [f"  {label}: threshold {result.threshold:.6g}, raw {result.total:.2f} "
             f"(null {null:.0f}, perfect {perfect:.0f}), normalised "
             f"{normalised(result.total, null, perfect):.1f}; {result.detected_windows} of "
             f"{result.windows} windows caught, {result.false_positives} false positives"]
    for name in sorted(by_cat):
        raw, caught, windows, fps = by_cat[name]
        lines.append(f"    {name:<24} raw {raw:>7.2f}  caught {caught:>2}/{windows:<2}  FP {fps}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", default=list(DEFAULT_FOLDERS),
                        help="folders each holding a windows.json and the files it names")
    parser.add_argument("--models", nargs="+", default=[AUTO],
                        help="'auto' (the model backtest --input picks) or model names")
    parser.add_argument("--direction", choices=["up", "down", "both"], default="both")
    parser.add_argument("--files", action="store_true", help="also print a per-file table")
    args = parser.parse_args(argv)
    try:
        series = load_corpus(args.data)
    except ValueError as exc:
        parser.error(str(exc))  # exits with status 2
    print(corpus_line(series, args.direction))
    for model in args.models:
        started = time.perf_counter()
        files, used = run(series, model, args.direction)
        seconds = time.perf_counter() - started
        null, perfect = bounds(files)
        best = nab_best_threshold(files)
        print(f"{model} ({', '.join(f'{n} {used.count(n)}' for n in sorted(set(used)))} files;"
              f" {seconds:.1f} s)")
        for line in describe(best, null, perfect, "best shared threshold (NAB's rule)"):
            print(line)
        for line in describe(nab_score(files, DEFAULT_THRESHOLD), null, perfect,
                             f"fixed threshold {DEFAULT_THRESHOLD}"):
            print(line)
        if args.files:
            for f, name in zip(best.files, used, strict=True):
                print(f"    {f.name:<56}{name:<18}{f.score:>7.2f} "
                      f"{f.detected_windows}/{f.windows} FP {f.false_positives}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
