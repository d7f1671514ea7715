"""The correlate stage offline: alert messages in, outage events out, and their scoring.

`backtest --outages` feeds the alerts the detector core wrote to the same
`Correlator` that `stream-detector correlate` runs, in the same event-time
order, so the file holds what the `outages` topic would.

With labels that mark outages of one cause with a shared `group` (the
simulator's `provider` shape does), grouping is scored: a group is found when
one event holds at least half of its labelled outages; members right is the
share of all grouped outages that sit in their group's best event; a false
grouping is an event of `min_services` or more services whose incidents come
from more than one cause (an incident that matches no label is a cause of its
own).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from stream_detector.backtest import IncidentSpan, Label, covers
from stream_detector.core.correlate import CorrelationPolicy, Correlator
from stream_detector.core.incidents import Alert


def alert_messages(alerts: Iterable[Alert]) -> Iterator[dict]:
    """Alerts as the alerts topic carries them, which is what the correlate stage reads."""
    for alert in alerts:
        yield orjson.loads(alert.to_json())


def correlate_alerts(alerts: Iterable[dict], policy: CorrelationPolicy,
                     output_path: str | Path | None = None) -> list[dict]:
    """Every outage event message the stage would publish, in order; written
    as JSON lines to `output_path` when given."""
    correlator = Correlator(policy)
    messages: list[dict] = []
    for alert in alerts:
        messages.extend(correlator.add(alert).events)
    messages.extend(correlator.flush().events)
    if output_path is not None:
        try:
            with Path(output_path).open("wb") as out:
                for message in messages:
                    out.write(orjson.dumps(message) + b"\n")
        except OSError as exc:
            raise ValueError(f"cannot write outages file {output_path}: {exc.strerror}") from None
    return messages


def final_events(messages: Iterable[dict]) -> list[dict]:
    """The last message of each event, in order of first appearance."""
    last: dict[str, dict] = {}
    for message in messages:
        last[message["event_id"]] = message
    return list(last.values())


@dataclass
class GroupingEvaluation:
    groups: int = 0
    found: int = 0
    grouped_outages: int = 0
    members_right: int = 0
    events: int = 0
    false_groupings: list[dict] = field(default_factory=list)
    per_group: list[tuple[str, int, int, str | None]] = field(default_factory=list)
    """(group, outages in it, of them in its best event, that event's id)."""


def _cause(incident: IncidentSpan, labels: Sequence[Label]) -> str:
    for label in labels:
        if covers(incident, label):
            return label.group or f"{label.name}@{label.start_ms}"
    return f"unlabelled:{incident.alert_id}"


def evaluate_grouping(events: Sequence[dict], incidents: Sequence[IncidentSpan],
                      labels: Sequence[Label], min_services: int) -> GroupingEvaluation:
    by_id = {i.alert_id: i for i in incidents}
    ev = GroupingEvaluation(events=len(events))
    groups: dict[str, list[Label]] = {}
    for label in labels:
        if label.group and label.is_outage:
            groups.setdefault(label.group, []).append(label)
    for event in events:
        members = [by_id[alert_id] for _, _, alert_id in event["services"] if alert_id in by_id]
        services = {m.service for m in members}
        causes = Counter(_cause(m, labels) for m in members)
        if len(services) >= min_services and len(causes) > 1:
            ev.false_groupings.append({"event_id": event["event_id"], "causes": dict(causes)})
    for name, outages in sorted(groups.items()):
        if len(outages) < 2:
            continue
        ev.groups += 1
        ev.grouped_outages += len(outages)
        best, best_id = 0, None
        for event in events:
            members = [by_id[a] for _, _, a in event["services"] if a in by_id]
            held = sum(1 for label in outages if any(covers(m, label) for m in members))
            if held > best:
                best, best_id = held, event["event_id"]
        ev.members_right += best
        if best * 2 >= len(outages):
            ev.found += 1
        ev.per_group.append((name, len(outages), best, best_id))
    return ev


def format_grouping(ev: GroupingEvaluation) -> str:
    lines = [f"outage events: {ev.events}; grouped outages found {ev.found}/{ev.groups}, "
             f"members right {ev.members_right}/{ev.grouped_outages}, "
             f"false groupings {len(ev.false_groupings)}"]
    for name, size, held, event_id in ev.per_group:
        lines.append(f"  group {name}: {held} of {size} outages in event {event_id}")
    for false in ev.false_groupings:
        lines.append(f"  false grouping {false['event_id']}: causes {false['causes']}")
    return "\n".join(lines)
