"""Detection quality on three simulated weeks: the default model against the EWMA baseline.

Simulates 21 days of 30 services with the simulator's mix of injected events
(sudden, gradual, regional, tiny, the X outage, and single-reporter floods
that are not outages), writes the reports once, then replays the file through
the detector core (`backtest`) with each model, alternating, and scores the
incidents against the labels. Optionally also replays the default model with
a few other incident policies, to show what each threshold trades.

    .venv/bin/python bench/simulator_eval.py [--days 21] [--services 30] [--seed 1]
                                             [--rounds 1] [--variants]

Figures: recall overall, on outages of at least 3x the baseline and per
shape; false incidents per service per 30 days; detection delay in minutes
(incident start, which is its first anomalous bucket, minus outage start) and
page delay (when the first firing message could be published: the close of
its bucket, minus outage start); whether any flood produced an incident; and
the replay time.

Targets (issue 3): recall >= 95% on outages of >= 3x baseline, <= 1 false
incident per service per 30 days, median delay <= 3 min, no incident from a
single reporter's flood.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_detector.backtest import (  # noqa: E402
    LabelEvaluation,
    load_labels,
    percentile,
    run_labelled_backtest,
)
from stream_detector.core.detector import DetectorConfig  # noqa: E402
from stream_detector.core.incidents import Alert, IncidentPolicy  # noqa: E402
from stream_detector.core.models import DEFAULT_MODEL  # noqa: E402
from stream_detector.sim import simulate, write_jsonl, write_labels  # noqa: E402

BASE = DetectorConfig()
# Other policies for the default model; each changes one thing from the default.
VARIANTS = {
    "min_reports=6": dataclasses.replace(BASE, policy=IncidentPolicy(min_reports=6)),
    "open_score=0.9999": dataclasses.replace(BASE, policy=IncidentPolicy(open_score=0.9999)),
    "critical_ratio=8": dataclasses.replace(BASE, policy=IncidentPolicy(critical_ratio=8.0)),
    "false_alarm_rate=0.1": dataclasses.replace(
        BASE, policy=IncidentPolicy(false_alarm_rate=0.1)),
    "false_alarm_rate=0.001": dataclasses.replace(
        BASE, policy=IncidentPolicy(false_alarm_rate=0.001)),
    "regions off": dataclasses.replace(BASE, regions=False),
}


def figures(ev: LabelEvaluation, alerts: list[Alert], bucket_ms: int) -> dict:
    minutes = bucket_ms / 60_000
    big = [o for o in ev.outages if o.label.peak_multiplier >= 3.0]
    # Page delay: when the first firing message could go out (the close of its bucket).
    alert_delays = ev.page_delays
    delays = [d * minutes for d in ev.delays]
    return {
        "recall": ev.recall,
        "detected": ev.detected,
        "outages": len(ev.outages),
        "recall_3x": sum(o.incident is not None for o in big) / len(big) if big else 1.0,
        "n_3x": len(big),
        "shapes": ev.by_shape(),
        "false": len(ev.false_incidents),
        "false_rate": len(ev.false_incidents) / max(ev.services, 1) * 30 / max(ev.days, 1e-9),
        "delay_med": statistics.median(delays) if delays else None,
        "delay_max": max(delays) if delays else None,
        "alert_med": statistics.median(alert_delays) if alert_delays else None,
        "alert_p90": percentile(alert_delays, 0.9),
        "alert_max": max(alert_delays) if alert_delays else None,
        "floods": len(ev.floods),
        "flood_incidents": len({id(lb) for lb, _ in ev.flood_incidents}),
        "nab": ev.nab_normalized,
        "missed": [o.label for o in ev.outages if o.incident is None],
        "false_list": ev.false_incidents,
    }


def run(events: Path, labels, config: DetectorConfig, out_dir: Path, name: str):
    started = time.perf_counter()
    result = run_labelled_backtest(events, out_dir / f"alerts-{name}.jsonl", config, labels,
                                   progress=None)
    seconds = time.perf_counter() - started
    assert result.evaluation is not None
    return figures(result.evaluation, result.alerts, config.bucket_ms), seconds


def _f(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def print_table(rows: dict[str, tuple[dict, list[float]]]) -> None:
    names = list(rows)
    width = max(22, *(len(n) + 2 for n in names))
    print(f"{'':<28}" + "".join(f"{n:>{width}}" for n in names))

    def line(title: str, cell) -> None:
        print(f"{title:<28}" + "".join(f"{cell(*rows[n]):>{width}}" for n in names))

    line("recall", lambda f, t: f"{f['detected']}/{f['outages']} = {f['recall']:.1%}")
    line("recall, peak >= 3x", lambda f, t: f"{f['recall_3x']:.1%} of {f['n_3x']}")
    shapes = sorted({s for f, _ in rows.values() for s in f["shapes"]})
    for shape in shapes:
        line(f"  {shape}", lambda f, t, s=shape: "{}/{}".format(*f["shapes"].get(s, (0, 0))))
    line("false incidents", lambda f, t: str(f["false"]))
    line("  per service per 30 days", lambda f, t: f"{f['false_rate']:.2f}")
    line("delay median / max, min", lambda f, t: f"{_f(f['delay_med'], '{:g}')} / "
         f"{_f(f['delay_max'], '{:g}')}")
    line("page delay med / p90 / max", lambda f, t: f"{_f(f['alert_med'], '{:g}')} / "
         f"{_f(f['alert_p90'], '{:g}')} / {_f(f['alert_max'], '{:g}')}")
    line("floods with an incident", lambda f, t: f"{f['flood_incidents']} of {f['floods']}")
    line("NAB-style score (0-100)", lambda f, t: _f(f["nab"]))
    line("replay time, s (median)", lambda f, t: f"{statistics.median(t):.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=21.0)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="replays per model, alternating")
    parser.add_argument("--variants", action="store_true",
                        help="also replay the default model with other incident policies")
    args = parser.parse_args()

    total_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="simulator-eval-") as tmp:
        out_dir = Path(tmp)
        events = out_dir / "reports.jsonl"
        started = time.perf_counter()
        services, outages, reports = simulate(args.services, args.days, args.seed)
        n = write_jsonl(reports, events)
        write_labels(outages, out_dir / "labels.json")
        labels = load_labels(out_dir / "labels.json")
        print(f"simulated {len(services)} services x {args.days:g} days (seed {args.seed}): "
              f"{n:,} reports, {sum(o.is_outage for o in outages)} outages and "
              f"{sum(not o.is_outage for o in outages)} floods, "
              f"in {time.perf_counter() - started:.1f}s", file=sys.stderr)

        configs = {
            DEFAULT_MODEL: BASE,
            "ewma": dataclasses.replace(BASE, model="ewma"),
        }
        rows: dict[str, tuple[dict, list[float]]] = {}
        for _ in range(args.rounds):
            for name, config in configs.items():
                print(f"replaying with {name} ...", file=sys.stderr)
                fig, seconds = run(events, labels, config, out_dir, name)
                rows.setdefault(name, (fig, []))[1].append(seconds)
        if args.variants:
            for name, config in VARIANTS.items():
                print(f"replaying {DEFAULT_MODEL} with {name} ...", file=sys.stderr)
                fig, seconds = run(events, labels, config, out_dir, name)
                rows[name] = (fig, [seconds])

    print()
    print_table({k: rows[k] for k in configs})
    if args.variants:
        print(f"\n{DEFAULT_MODEL} with other incident policies (one change each):")
        print_table({DEFAULT_MODEL: rows[DEFAULT_MODEL], **{k: rows[k] for k in VARIANTS}})
    for name, (fig, _) in rows.items():
        if fig["missed"]:
            print(f"\n{name} missed: " + "; ".join(
                f"{lb.shape} {lb.name} x{lb.peak_multiplier:g}" for lb in fig["missed"]))
    print(f"\ntotal runtime {time.perf_counter() - total_started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
