"""Grouping simultaneous incidents of different services into outage events.

Incidents of different services come from different partitions and
instances, so grouping is a second stage that reads alert messages (the
alerts topic's JSON) and writes outage event messages. It is pure: the same
`Correlator` runs behind `stream-detector correlate`, inside `run` with
`correlate = true`, and in `backtest --outages`, so offline equals online.

How grouping decides. Only an incident's onset (`started_at`) counts. When a
new incident arrives, the firing incidents not yet in an event whose onsets
fall within `window_buckets` of each other are counted by distinct service.
They form an event when there are at least `min_services` of them and that
many onsets so close together are unlikely by chance: the chance of at least
k onsets in one window, under a Poisson count whose mean is the recent onset
rate times the window, must be below `max_chance`. The recent rate is the
onsets of the last `rate_lookback_ms`, where an event counts once (a provider
outage that took down twenty services is one cause, and must not make the
next one look ordinary), and never below `base_onsets_per_hour`, so a quiet
history does not turn any three incidents into an event. Regional incidents
are tested a second time among the regional incidents of their region alone,
against that region's onset rate ("everything in BR").

Once an event is open, a firing incident joins it while its onset lies
within `join_buckets` of the event's latest member onset: an outage that spreads
keeps one event. The event resolves when its last member resolves.

Alerts are handled in event time, not arrival order: they are buffered by
`bucket_start` and a bucket is handled only once the stream has moved
`settle_buckets` past it, in a fixed order (onset, service, region), so two
partitions' interleaving, or a replay after a restart, gives the same events
with the same ids.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from stream_detector.core.incidents import Alert, Change
from stream_detector.core.times import iso_ms, iso_utc

FIRING = "firing"
RESOLVED = "resolved"
HOUR_MS = 3_600_000
TOP = 5


@dataclass(frozen=True)
class CorrelationPolicy:
    """When incidents become one outage event."""

    bucket_ms: int = 60_000
    window_buckets: int = 5
    """Onsets this many buckets apart or closer may be one event."""
    join_buckets: int = 10
    """An incident joins an open event when its onset is at most this many buckets
    after the event's latest member onset. Wider than the window: an incident is
    dated from its first anomalous bucket, and a dependant that rises less than
    the rest is found minutes later than they are."""
    min_services: int = 3
    """Fewest distinct services an event starts with."""
    max_chance: float = 1e-3
    """The most likely by chance a group of onsets may be and still be an event."""
    rate_lookback_ms: int = 24 * HOUR_MS
    """How far back the recent onset rate is counted."""
    base_onsets_per_hour: float = 1.0
    """The lowest onset rate assumed, whatever the history."""
    settle_buckets: int = 2
    """How far the stream moves past a bucket before its alerts are handled."""
    providers: tuple[str, ...] = ()
    """Services declared as providers: a member that is one is the suspected cause."""
    dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Service -> the providers it depends on."""

    @property
    def window_ms(self) -> int:
        return self.window_buckets * self.bucket_ms


def poisson_tail(k: int, mean: float) -> float:
    """P(X >= k) for X Poisson with this mean.

    >>> round(poisson_tail(3, 0.1), 6), poisson_tail(0, 2.0)
    (0.000155, 1.0)
    """
    if k <= 0:
        return 1.0
    term = math.exp(-mean)
    below = term
    for i in range(1, k):
        term *= mean / i
        below += term
    # 1 - below loses everything below 1e-16; sum the tail instead when small.
    if below < 0.999:
        return max(0.0, 1.0 - below)
    tail, term = 0.0, math.exp(-mean) * mean ** k / math.factorial(k)
    i = k
    while term > 1e-300 and i < k + 200:
        tail += term
        i += 1
        term *= mean / i
    return tail


@dataclass
class Member:
    """One incident as the correlator knows it: its latest alert message."""

    alert: dict
    onset_ms: int
    event_id: str | None = None

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.onset_ms, self.alert["service"], self.alert.get("region") or "")

    @property
    def firing(self) -> bool:
        return self.alert["status"] == FIRING


@dataclass
class OutageEvent:
    event_id: str
    region: str | None
    """None for an event of any region; a region for a regional one."""
    members: list[Member]
    status: str = FIRING

    @property
    def latest_onset_ms(self) -> int:
        return max(m.onset_ms for m in self.members)


@dataclass(frozen=True)
class GroupedAlert:
    """A member incident's alert with its outage event's id, for whoever pushes it
    on (Alertmanager labels it `outage_event`, so one route pages once per event)."""

    alert: Alert
    outage_event: str

    @property
    def change(self) -> Change:
        return self.alert.change


@dataclass
class Output:
    """What handling alerts produced: event messages, and member alerts tagged with
    their event's id (`outage_event`) for whoever pushes them on (Alertmanager)."""

    events: list[dict] = field(default_factory=list)
    tagged: list[GroupedAlert] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        self.events.extend(other.events)
        self.tagged.extend(other.tagged)


class Correlator:
    """Alert messages in, outage event messages out. Pure and deterministic."""

    def __init__(self, policy: CorrelationPolicy | None = None):
        self.policy = policy or CorrelationPolicy()
        self.incidents: dict[str, Member] = {}
        self.events: dict[str, OutageEvent] = {}
        self.pending: dict[int, list[dict]] = {}
        self.handled_through_ms: int | None = None
        # Recent onsets for the rate: (onset ms, region, alert_id).
        self.onsets: deque[tuple[int, str | None, str]] = deque()
        self.clock_ms: int | None = None

    # --- input ---------------------------------------------------------------

    def add(self, alert: dict) -> Output:
        """Take one alert message of a single ordered stream (a file); return what
        became due (see `advance`)."""
        self.buffer(alert)
        return self.advance(self.clock_ms)

    def buffer(self, alert: dict) -> int:
        """Hold one alert until its bucket is due; return its bucket start (ms).

        Raises `ValueError` (or `KeyError`/`TypeError`) for a message that is not an alert.
        """
        check_alert(alert)
        start = iso_ms(alert["bucket_start"])
        self.pending.setdefault(start, []).append(alert)
        if self.clock_ms is None or start > self.clock_ms:
            self.clock_ms = start
        return start

    def advance(self, watermark_ms: int) -> Output:
        """Handle every buffered bucket `settle_buckets` or more before `watermark_ms`."""
        due = watermark_ms - self.policy.settle_buckets * self.policy.bucket_ms
        out = Output()
        for start in sorted(s for s in self.pending if s <= due):
            out.extend(self._handle(start, self.pending.pop(start)))
        return out

    def flush(self) -> Output:
        """Handle everything buffered (end of a file)."""
        out = Output()
        for start in sorted(self.pending):
            out.extend(self._handle(start, self.pending.pop(start)))
        return out

    # --- one bucket ----------------------------------------------------------

    def _handle(self, start_ms: int, alerts: list[dict]) -> Output:
        if self.handled_through_ms is None or start_ms > self.handled_through_ms:
            self.handled_through_ms = start_ms
        self._forget_before(start_ms - self.policy.rate_lookback_ms)
        touched: set[str] = set()
        tagged: list[GroupedAlert] = []
        order = sorted(alerts, key=lambda a: (a["started_at"], a["service"],
                                              a.get("region") or "", a["status"] == RESOLVED,
                                              a["bucket_start"], a["alert_id"]))
        for alert in order:
            member = self.incidents.get(alert["alert_id"])
            if member is None:
                if alert["status"] != FIRING:
                    continue  # an incident seen only as it ends: nothing to group
                member = Member(alert, iso_ms(alert["started_at"]))
                self.incidents[alert["alert_id"]] = member
                self.onsets.append((member.onset_ms, alert.get("region"), alert["alert_id"]))
                joined = self._join(member)
                event = joined or self._form(member)
                if event is not None:
                    touched.add(event.event_id)
                    # A new event tags all its founders; a joiner tags itself.
                    tagged.extend(self._tag(m) for m in ([member] if joined else event.members))
                continue
            member.alert = alert
            if member.event_id is not None:
                touched.add(member.event_id)
                tagged.append(self._tag(member))
            elif alert["status"] == RESOLVED:
                del self.incidents[alert["alert_id"]]
        out = Output(tagged=tagged)
        for event_id in sorted(touched):
            event = self.events[event_id]
            if event.status == FIRING and not any(m.firing for m in event.members):
                event.status = RESOLVED
            out.events.append(self.message(event))
            if event.status == RESOLVED:
                self._close(event)
        return out

    def _tag(self, member: Member) -> GroupedAlert:
        return GroupedAlert(Alert.from_message(member.alert), member.event_id)

    def _join(self, member: Member) -> OutageEvent | None:
        region = member.alert.get("region")
        window = self.policy.window_ms
        for event in sorted(self.events.values(), key=lambda e: (e.region is not None,
                                                                 e.event_id)):
            if event.status != FIRING or (event.region is not None and event.region != region):
                continue
            first = min(m.onset_ms for m in event.members)
            join = self.policy.join_buckets * self.policy.bucket_ms
            if first - window <= member.onset_ms <= event.latest_onset_ms + join:
                self._enrol(event, member)
                return event
        return None

    def _form(self, member: Member) -> OutageEvent | None:
        region = member.alert.get("region")
        scopes: list[str | None] = [None] + ([region] if region is not None else [])
        for scope in scopes:
            group = self._densest_group(member, scope)
            services = {m.alert["service"] for m in group}
            if len(services) < self.policy.min_services:
                continue
            if poisson_tail(len(services), self._expected_onsets(scope)) >= self.policy.max_chance:
                continue
            group.sort(key=lambda m: m.key)
            first = group[0]
            event_id = f"{first.alert['started_at']}/{first.alert['service']}"
            if scope is not None:
                event_id += f"/{scope}"
            event = OutageEvent(event_id, scope, [])
            for m in group:
                self._enrol(event, m)
            self.events[event_id] = event
            return event
        return None

    def _densest_group(self, member: Member, scope: str | None) -> list[Member]:
        """The ungrouped firing incidents (in `scope`) of the window holding `member`
        with the most distinct services; the earliest such window on a tie."""
        window = self.policy.window_ms
        near = [m for m in self.incidents.values()
                if m.event_id is None and m.firing
                and abs(m.onset_ms - member.onset_ms) <= window
                and (scope is None or m.alert.get("region") == scope)]
        best: list[Member] = []
        best_count = 0
        for begin in sorted({m.onset_ms for m in near if m.onset_ms <= member.onset_ms}):
            inside = [m for m in near if begin <= m.onset_ms <= begin + window]
            if member not in inside:
                continue
            count = len({m.alert["service"] for m in inside})
            if count > best_count:
                best, best_count = inside, count
        return list(best)

    def _expected_onsets(self, scope: str | None) -> float:
        """Mean count of independent onsets in one window at the recent rate."""
        seen_events: set[str] = set()
        count = 0
        for _, region, alert_id in self.onsets:
            if scope is not None and region != scope:
                continue
            member = self.incidents.get(alert_id)
            event_id = member.event_id if member is not None else None
            if event_id is not None:
                if event_id in seen_events:
                    continue
                seen_events.add(event_id)
            count += 1
        per_ms = max(count / self.policy.rate_lookback_ms,
                     self.policy.base_onsets_per_hour / HOUR_MS)
        return per_ms * self.policy.window_ms

    def _enrol(self, event: OutageEvent, member: Member) -> None:
        member.event_id = event.event_id
        event.members.append(member)

    def _close(self, event: OutageEvent) -> None:
        del self.events[event.event_id]
        for m in event.members:
            # Forgotten once out of the rate's lookback too (see `_forget_before`).
            if m.onset_ms < (self.handled_through_ms or 0) - self.policy.rate_lookback_ms:
                self.incidents.pop(m.alert["alert_id"], None)

    def _forget_before(self, oldest_ms: int) -> None:
        while self.onsets and self.onsets[0][0] < oldest_ms:
            _, _, alert_id = self.onsets.popleft()
            member = self.incidents.get(alert_id)
            if member is None or member.firing:
                continue
            if member.event_id is None or member.event_id not in self.events:
                del self.incidents[alert_id]

    # --- output --------------------------------------------------------------

    def message(self, event: OutageEvent) -> dict:
        """The outage event message (the `outages` topic's JSON)."""
        members = sorted(event.members, key=lambda m: m.key)
        regions: Counter[str] = Counter()
        problems: Counter[str] = Counter()
        for m in members:
            regions.update(dict((name, count) for name, count in m.alert.get("regions") or []))
            problems.update(dict((name, count) for name, count in m.alert.get("problems") or []))
        ended = None
        if event.status == RESOLVED:
            ended = max(iso_ms(m.alert["ended_at"]) for m in members if m.alert.get("ended_at"))
        return {
            "event_id": event.event_id,
            "status": event.status,
            "started_at": members[0].alert["started_at"],
            "ended_at": iso_utc(ended) if ended is not None else None,
            "services": [[m.alert["service"], m.alert.get("region"), m.alert["alert_id"]]
                         for m in members],
            "suspected_cause": suspected_cause([m.alert["service"] for m in members],
                                               self.policy),
            "regions": _top(regions),
            "problems": _top(problems),
            "reports": sum(int(m.alert.get("reports") or 0) for m in members),
        }

    # --- what a restart must replay -----------------------------------------

    def needed_alert_ids(self) -> set[str]:
        """Incidents a restart must see again to rebuild this state: the open ones,
        those in the rate's lookback, and every member of an event holding one."""
        return set(self.incidents) | {alert_id for _, _, alert_id in self.onsets}


ALERT_FIELDS = ("alert_id", "status", "service", "severity", "started_at", "bucket_start")


def check_alert(alert: object) -> None:
    """Refuse what cannot be an alert message, naming what is wrong."""
    if not isinstance(alert, dict):
        raise ValueError("an alert message must be a JSON object")
    for name in ALERT_FIELDS:
        if not isinstance(alert.get(name), str):
            raise ValueError(f"alert message has no text field {name}")
    if alert["status"] not in (FIRING, RESOLVED):
        raise ValueError(f"alert message has unknown status {alert['status']!r}")
    for name in ("started_at", "bucket_start"):
        iso_ms(alert[name])
    for name in ("regions", "problems"):
        counts = alert.get(name) or []
        if not isinstance(counts, list) or not all(
                isinstance(c, list) and len(c) == 2 and isinstance(c[0], str)
                and isinstance(c[1], int | float) and not isinstance(c[1], bool)
                for c in counts):
            raise ValueError(f"alert message field {name} is not a list of [name, count]")
    for name in ("reports", "expected", "score", "bucket_seconds"):
        value = alert.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"alert message field {name} is not a number")
    if alert["status"] == RESOLVED:
        if not isinstance(alert.get("ended_at"), str):
            raise ValueError("resolved alert message has no ended_at")
        iso_ms(alert["ended_at"])


def suspected_cause(services: Iterable[str], policy: CorrelationPolicy) -> str | None:
    """A member that is a declared provider, or that other members depend on;
    failing that, a provider at least two members depend on; else None.

    >>> p = CorrelationPolicy(providers=("aws",), dependencies={"shop": ("gcp",),
    ...                                                         "mail": ("gcp",)})
    >>> suspected_cause(["shop", "aws", "mail"], p), suspected_cause(["shop", "mail"], p)
    ('aws', 'gcp')
    """
    services = list(services)
    depended: Counter[str] = Counter()
    for s in services:
        depended.update(set(policy.dependencies.get(s, ())))
    for s in services:
        if s in policy.providers or depended.get(s, 0) > 0:
            return s
    common = [(-n, name) for name, n in depended.items() if n >= 2]
    return min(common)[1] if common else None


def _top(counts: Counter[str]) -> list[list]:
    return [[name, count] for name, count in sorted(counts.items(),
                                                     key=lambda kv: (-kv[1], kv[0]))[:TOP]]
