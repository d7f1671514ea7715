"""Grouping of incidents into outage events, on every outage-dev corpus and simulator seed.

For each input it does what `backtest --events ... --labels ... --outages ...`
does, with the default settings and nothing chosen per input: the detector
core writes the alerts, the correlate core groups them, and the grouping is
scored against the truth.

- outage-dev corpora (`../shared/data/outage-dev/corpus-*`): the truth file's
  `correlated` outages are one group (six services within four minutes);
  every other outage is a cause of its own. Reported: services of the
  correlated outage in its best event (of six), events, and false groupings
  (events of three or more services whose incidents come from more than one
  cause; an incident matching no outage is a cause of its own).
- the simulator with a `provider` outage (`--provider-dependants 6`, seeds
  1-3, 16 services, 7 days): the same figures against its labels' group.

    .venv/bin/python bench/correlation.py [--data ../shared/data/outage-dev] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_detector.backtest import Label, load_labels, run_labelled_backtest  # noqa: E402
from stream_detector.config import load_settings  # noqa: E402
from stream_detector.outage_backtest import (  # noqa: E402
    alert_messages,
    correlate_alerts,
    evaluate_grouping,
    final_events,
)
from stream_detector.sim import simulate, write_jsonl, write_labels  # noqa: E402


def truth_labels(truth_path: Path, out: Path) -> list[Label]:
    """The corpus truth as a labels file, the correlated outages sharing one group."""
    truth = json.loads(truth_path.read_text())
    labels = [{"service": o["service"], "region": o["region"], "start": o["start"],
               "end": o["end"], "shape": o["kind"], "peak_multiplier": o["mult"],
               "group": "correlated" if o["kind"] == "correlated" else None}
              for o in truth["outages"]]
    labels += [{"service": f["service"], "start": f["start"], "end": f["end"], "shape": "spam",
                "is_outage": False} for f in truth["spam"]]
    out.write_text(json.dumps(labels))
    return load_labels(out)


def score(name: str, events_path: Path, labels: list[Label], work: Path) -> dict:
    settings = load_settings({}, environ={})
    policy = settings.correlation_policy()
    run = run_labelled_backtest(events_path, work / f"{name}.alerts.jsonl",
                                settings.detector_config(), labels, progress=None)
    messages = correlate_alerts(alert_messages(run.alerts), policy, work / f"{name}.outages.jsonl")
    events = final_events(messages)
    ev = evaluate_grouping(events, run.incidents, labels, policy.min_services)
    return {"input": name, "incidents": len(run.incidents), "events": len(events),
            "group": [f"{held}/{size}" for _, size, held, _ in ev.per_group],
            "found": f"{ev.found}/{ev.groups}", "false_groupings": len(ev.false_groupings),
            "event_sizes": sorted(len({s for s, _, _ in e["services"]}) for e in events)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # ../shared beside the repository; a worktree one level deeper finds it one up.
    near = [p / "shared/data/outage-dev" for p in (ROOT.parent, ROOT.parent.parent)]
    parser.add_argument("--data", default=str(next((p for p in near if p.is_dir()), near[0])))
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for truth in sorted(Path(args.data).glob("corpus-*.truth.json")):
            name = truth.name.removesuffix(".truth.json")
            labels = truth_labels(truth, work / f"{name}.labels.json")
            rows.append(score(name, truth.with_name(f"{name}.events.jsonl.gz"), labels, work))
        for seed in args.seeds:
            name = f"sim-seed-{seed}"
            _, outages, reports = simulate(16, 7.0, seed, provider_dependants=6)
            write_jsonl(reports, work / f"{name}.jsonl")
            write_labels(outages, work / f"{name}.labels.json")
            rows.append(score(name, work / f"{name}.jsonl",
                              load_labels(work / f"{name}.labels.json"), work))
    print("| input | incidents | events (services in each) | grouped outage in its best event "
          "| groups found | false groupings |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['incidents']} | {r['events']} "
              f"({', '.join(map(str, r['event_sizes'])) or '-'}) | {', '.join(r['group'])} "
              f"| {r['found']} | {r['false_groupings']} |")


if __name__ == "__main__":
    main()
