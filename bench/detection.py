"""Detection figures on every corpus and seed in one table, with the model's cost per series.

Replays, with the default settings and nothing chosen per input:

- the outage-dev corpora (`../shared/data/outage-dev/corpus-*.events.jsonl.gz`),
  scored by that directory's own `score.py` (recall, false incidents per
  service-month, page delay median and p90, incidents from floods);
- the project's simulator, seeds 1, 2 and 3 (21 days, 30 services), scored
  by `backtest --labels`' evaluation (the same figures);

then `bench/model_cost.py` at 100,000 series (bytes and microseconds per
series-bucket of the seasonal model's bank; the evidence test adds 48 bytes a
series and the quarter-hour shape 768 bytes a service, outside that bank).

    .venv/bin/python bench/detection.py [--data ../shared/data/outage-dev] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_detector.backtest import (  # noqa: E402
    backtest_events,
    load_labels,
    percentile,
    run_labelled_backtest,
)
from stream_detector.core.detector import DetectorConfig  # noqa: E402
from stream_detector.sim import simulate, write_jsonl, write_labels  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "outage-dev"
SUMMARY = re.compile(
    r"recall=(\d+)/(\d+)=\S+ false_per_service_month=(\S+) delay_median_min=(\S+) "
    r"delay_p90_min=\S+ page_median_min=(\S+) page_p90_min=(\S+) spam_false=(\d+)"
)


def corpus_row(events: Path, truth: Path, out_dir: Path) -> dict:
    alerts = out_dir / f"{events.name}.alerts.jsonl"
    started = time.perf_counter()
    backtest_events(events, alerts, DetectorConfig(), progress=None)
    seconds = time.perf_counter() - started
    scored = subprocess.run([sys.executable, str(truth.parent / "score.py"), str(truth),
                             str(alerts)], capture_output=True, text=True, check=True).stdout
    m = SUMMARY.search(scored)
    assert m, scored
    detected, outages, rate, delay, page, p90, floods = m.groups()
    return {"recall": f"{detected}/{outages}", "false": float(rate), "page": float(page),
            "p90": float(p90), "delay": float(delay), "floods": int(floods), "s": seconds}


def seed_row(seed: int, out_dir: Path) -> dict:
    events = out_dir / f"sim-{seed}.jsonl"
    services, outages, reports = simulate(30, 21.0, seed)
    write_jsonl(reports, events)
    write_labels(outages, out_dir / f"sim-{seed}.labels.json")
    labels = load_labels(out_dir / f"sim-{seed}.labels.json")
    started = time.perf_counter()
    run = run_labelled_backtest(events, out_dir / f"sim-{seed}.alerts.jsonl", DetectorConfig(),
                                labels, progress=None)
    seconds = time.perf_counter() - started
    ev = run.evaluation
    assert ev is not None
    pages = ev.page_delays
    minutes = ev.bucket_ms / 60_000
    return {"recall": f"{ev.detected}/{len(ev.outages)}", "false": ev.false_per_series_month,
            "page": statistics.median(pages) if pages else float("nan"),
            "p90": percentile(pages, 0.9) or float("nan"),
            "delay": statistics.median(ev.delays) * minutes if ev.delays else float("nan"),
            "floods": len({id(lb) for lb, _ in ev.flood_incidents}), "s": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--no-cost", action="store_true", help="skip the model's cost")
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="detection-") as tmp:
        out_dir = Path(tmp)
        corpora = sorted(args.data.glob("corpus-*.events.jsonl.gz"))
        if not corpora:
            parser.error(f"no corpus-*.events.jsonl.gz in {args.data}; give the outage-dev "
                         "folder with --data")
        for events in corpora:
            truth = events.with_name(events.name.replace(".events.jsonl.gz", ".truth.json"))
            print(f"replaying {events.name} ...", file=sys.stderr)
            rows[f"outage-dev {events.name.split('.')[0].split('-')[1]}"] = corpus_row(
                events, truth, out_dir)
        for seed in args.seeds:
            print(f"simulating and replaying seed {seed} ...", file=sys.stderr)
            rows[f"simulator seed {seed}"] = seed_row(seed, out_dir)
    print("| corpus / seed | recall | false / service-month | page median / p90, min "
          "| delay median, min | floods with an incident | replay, s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['recall']} | {r['false']:.2f} | {r['page']:g} / {r['p90']:g} "
              f"| {r['delay']:g} | {r['floods']} | {r['s']:.0f} |")
    if not args.no_cost:
        print("\nmodel cost (bench/model_cost.py --series 100000):", flush=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "model_cost.py"), "--series",
                        "100000", "--repeats", "1"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
