"""What the status board shows, folded from alert and outage-event messages.

Pure: it takes the messages' bytes, one at a time in the order their topics
hold them, and answers what is open, what resolved recently, and a service's
history. The board's process feeds it from the alerts and outages topics read
from their beginning, so its state is a function of those logs alone and a
restart rebuilds the same view.

Both topics are at-least-once: a detector or correlate stage that restarts
re-sends what it sent since its last checkpoint, byte for byte. So applying a
message is idempotent, and a re-sent older message never undoes a newer one:
an incident keeps the message of its latest bucket (a resolve wins over a
firing message of the same bucket), and a resolved outage event is not
reopened by a re-sent firing message of it.

"Now" is the newest time any message carries, not the wall clock: the board
of a replay, or of the demo's simulated days, reads as it did live, and the
view is the same whenever it is rebuilt. Only a time later than the wall
clock (given by the shell) plus FUTURE_ALLOWANCE_MS is refused: one message
from the far future would otherwise end "recent" for every other message.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson

DAY_MS = 86_400_000
FIRING = "firing"
RESOLVED = "resolved"
STATUSES = (FIRING, RESOLVED)

# Incidents kept per service for its history view, besides every open one.
# Incidents are rare per service; fifty reach back months for most.
HISTORY_PER_SERVICE = 50
# Buckets of reports against expected kept per incident for its sparkline:
# two hours of one-minute buckets, about the width of a phone's row in pixels.
POINTS_PER_INCIDENT = 120

# Why a message was skipped. The board reads topics it does not own, so it
# counts and skips what it cannot use rather than stopping.
REASONS = ("not_json", "not_object", "missing_field", "bad_type", "bad_timestamp", "too_deep")
# A count the board keeps in a 64-bit array; a larger one is no count of reports.
MAX_COUNT = 2**63 - 1
# Nesting a message may have. The contracts' messages nest three levels; orjson
# reads 1024 but writes at most 254, so a message kept deeper than that could be
# read yet never served again.
MAX_DEPTH = 32
# [name, count] pairs of `regions` and `problems` kept per message: the largest.
# A detector sends a few; a message of 140,000 would cost memory in every
# answer and no reader looks past the first rows.
BREAKDOWN_ROWS = 50
# How far ahead of the wall clock a message's times may be: clocks of other
# hosts drift by seconds, a bucket starts at most its width ahead.
FUTURE_ALLOWANCE_MS = 3_600_000


class BadMessage(ValueError):
    """A message the board cannot use; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# The messages' times: extended ISO-8601 in UTC with `Z`. Other forms
# fromisoformat takes (an offset, the basic format, week dates) would be shown
# as sent, so read as UTC by the page; they are refused instead.
_UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d{1,6})?)?Z")


def parse_time(value: Any, field: str) -> int:
    """Epoch milliseconds of an ISO-8601 UTC time with `Z`, as the messages carry.

    >>> parse_time("2026-01-08T19:07:00Z", "started_at")
    1767899220000
    """
    if not isinstance(value, str):
        raise BadMessage("bad_type", f"{field} is not a time string")
    if not _UTC_TIME.fullmatch(value):
        raise BadMessage("bad_timestamp", f"{field} {value[:40]!r} is not ISO-8601 UTC with Z")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadMessage("bad_timestamp", f"{field} {value[:40]!r} is not a date") from None
    return int(moment.timestamp() * 1000)


def _decode(raw: bytes) -> dict:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadMessage("not_json", "the value is not JSON") from None
    if not isinstance(message, dict):
        raise BadMessage("not_object", "the value is not a JSON object")
    _check_depth(message)
    return message


def _check_depth(message: dict) -> None:
    level: list = [message]
    for _ in range(MAX_DEPTH):
        level = [child for value in level
                 for child in (value.values() if isinstance(value, dict) else value)
                 if isinstance(child, dict | list)]
        if not level:
            return
    raise BadMessage("too_deep", f"the value nests deeper than {MAX_DEPTH} levels")


def _field(message: dict, name: str, kinds: type | tuple[type, ...], nullable: bool = False):
    if name not in message:
        raise BadMessage("missing_field", f"no {name}")
    value = message[name]
    if value is None and nullable:
        return None
    # true/false is an int to Python, never a count here.
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise BadMessage("bad_type", f"{name} has the wrong type")
    return value


def _name(message: dict, name: str, nullable: bool = False) -> str | None:
    value = _field(message, name, str, nullable)
    if value is not None and not value:
        raise BadMessage("bad_type", f"{name} is empty")
    return value


def _counts(message: dict, name: str) -> None:
    """`regions` and `problems`: a list of [name, count] pairs, when present; cut
    in place to the BREAKDOWN_ROWS largest."""
    value = message.get(name, [])
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
        and isinstance(pair[1], int | float) and not isinstance(pair[1], bool)
        for pair in value
    ):
        raise BadMessage("bad_type", f"{name} is not a list of [name, count]")
    if len(value) > BREAKDOWN_ROWS:
        message[name] = sorted(value, key=lambda pair: -pair[1])[:BREAKDOWN_ROWS]


def _lifetime(message: dict) -> tuple[str, int, int | None]:
    """`status`, `started_at` and `ended_at` (epoch ms; None while firing) of an
    alert or an outage event."""
    status = _field(message, "status", str)
    if status not in STATUSES:
        raise BadMessage("bad_type", f"status {status[:20]!r} is not firing or resolved")
    start_ms = parse_time(message.get("started_at"), "started_at")
    ended = _field(message, "ended_at", str, nullable=True)
    end_ms = parse_time(ended, "ended_at") if ended is not None else None
    if status == RESOLVED and end_ms is None:
        raise BadMessage("missing_field", "resolved without ended_at")
    return status, start_ms, end_ms


class _Incident:
    """One incident: its latest alert message, and reports against expected per bucket."""

    __slots__ = ("alert", "rank", "start_ms", "end_ms", "times", "reports", "expected")

    def __init__(self, alert: dict, rank: tuple[int, int], start_ms: int, end_ms: int | None):
        self.alert = alert
        self.rank = rank
        """(bucket start, 1 if resolved): a message of a higher rank replaces the alert."""
        self.start_ms = start_ms
        self.end_ms = end_ms
        # Sorted by bucket start; arrays, as 10,000 open incidents hold a
        # million points at most and a list of lists would be ten times larger.
        self.times = array("q")
        self.reports = array("q")
        self.expected = array("d")

    @property
    def open(self) -> bool:
        return self.alert["status"] == FIRING

    def add_point(self, bucket_ms: int, reports: int, expected: float) -> bool:
        times = self.times
        at = len(times) if not times or bucket_ms > times[-1] else bisect_left(times, bucket_ms)
        if at < len(times) and times[at] == bucket_ms:
            return False  # a re-sent bucket
        if at == 0 and len(times) >= POINTS_PER_INCIDENT:
            return False  # older than every bucket kept
        times.insert(at, bucket_ms)
        self.reports.insert(at, reports)
        self.expected.insert(at, expected)
        if len(times) > POINTS_PER_INCIDENT:
            for column in (times, self.reports, self.expected):
                del column[0]
        return True

    def points(self) -> dict[str, list]:
        """The kept buckets, oldest first, as columns: start (epoch ms), reports, expected."""
        return {"bucket_start_ms": self.times.tolist(), "reports": self.reports.tolist(),
                "expected": self.expected.tolist()}


class _Outage:
    __slots__ = ("event", "start_ms", "end_ms")

    def __init__(self, event: dict, start_ms: int, end_ms: int | None):
        self.event = event
        self.start_ms = start_ms
        self.end_ms = end_ms

    @property
    def open(self) -> bool:
        return self.event["status"] == FIRING


class BoardView:
    """Open and recent incidents and outage events, and each service's history.

    >>> view = BoardView()
    >>> view.apply_alert(orjson.dumps({"alert_id": "x/*/2026-01-08T19:07:00Z",
    ...     "status": "firing", "service": "x", "region": None, "severity": "critical",
    ...     "started_at": "2026-01-08T19:07:00Z", "ended_at": None,
    ...     "bucket_start": "2026-01-08T19:09:00Z", "reports": 2315, "expected": 14.2}))
    True
    >>> [a["alert_id"] for a in view.incidents("open")], view.incidents("resolved")
    (['x/*/2026-01-08T19:07:00Z'], [])
    """

    def __init__(self, recent_ms: int = DAY_MS, clock_ms: Callable[[], int] | None = None):
        self.recent_ms = recent_ms
        self.clock_ms = clock_ms
        """The wall clock in epoch ms, to refuse times far past it; None takes any."""
        """Resolved incidents and events stay on the board this long after they end."""
        self.now_ms = 0
        """The newest time any message applied carries."""
        self.version = 0
        """Rises with every change, so a reader can tell that nothing changed."""
        self.skipped = dict.fromkeys(REASONS, 0)
        self._incidents: dict[str, _Incident] = {}
        self._open: dict[str, None] = {}
        self._by_service: dict[str, list[str]] = {}
        self._outages: dict[str, _Outage] = {}

    # -- applying messages -------------------------------------------------

    def apply_alert(self, raw: bytes) -> bool:
        """Fold one alert message in; whether the view changed. A message the board
        cannot use is counted in `skipped` and raises BadMessage."""
        return self._apply(self._apply_alert, raw)

    def apply_outage(self, raw: bytes) -> bool:
        """Fold one outage-event message in; as `apply_alert`."""
        return self._apply(self._apply_outage, raw)

    def _apply(self, fold: Callable[[dict], bool], raw: bytes) -> bool:
        try:
            return fold(_decode(raw))
        except BadMessage as exc:
            self.skipped[exc.reason] += 1
            raise

    def _apply_alert(self, alert: dict) -> bool:
        alert_id = _name(alert, "alert_id")
        status, start_ms, end_ms = _lifetime(alert)
        service = _name(alert, "service")
        _name(alert, "region", nullable=True)
        _name(alert, "severity")
        bucket_ms = parse_time(alert.get("bucket_start"), "bucket_start")
        reports = _field(alert, "reports", int)
        if not 0 <= reports <= MAX_COUNT:
            raise BadMessage("bad_type", "reports is not a count")
        expected = _field(alert, "expected", int | float)
        for name in ("regions", "problems"):
            _counts(alert, name)

        changed = self._see_time(self._not_future(bucket_ms, start_ms, end_ms))
        rank = (bucket_ms, status == RESOLVED)
        incident = self._incidents.get(alert_id)
        if incident is None:
            incident = self._incidents[alert_id] = _Incident(alert, rank, start_ms, end_ms)
            self._index(service, alert_id)
            changed = True
        elif rank > incident.rank:
            incident.alert, incident.rank = alert, rank
            incident.start_ms, incident.end_ms = start_ms, end_ms
            changed = True
        if incident.open:
            self._open[alert_id] = None
        else:
            self._open.pop(alert_id, None)
        changed |= incident.add_point(bucket_ms, reports, float(expected))
        if changed:
            self.version += 1
        return changed

    def _index(self, service: str, alert_id: str) -> None:
        """Add the incident to its service's history, dropping the oldest resolved
        one past HISTORY_PER_SERVICE (open ones always stay)."""
        history = self._by_service.setdefault(service, [])
        history.append(alert_id)
        if len(history) > HISTORY_PER_SERVICE:
            for i, old in enumerate(history):
                if not self._incidents[old].open:
                    del history[i]
                    del self._incidents[old]
                    break

    def _apply_outage(self, event: dict) -> bool:
        event_id = _name(event, "event_id")
        status, start_ms, end_ms = _lifetime(event)
        services = _field(event, "services", list)
        if not all(isinstance(m, list) and len(m) == 3 and isinstance(m[0], str)
                   and (m[1] is None or isinstance(m[1], str)) and isinstance(m[2], str)
                   for m in services):
            raise BadMessage("bad_type", "services is not a list of [service, region, alert_id]")
        _name(event, "suspected_cause", nullable=True)
        for name in ("regions", "problems"):
            _counts(event, name)
        _field(event, "reports", int | float)

        changed = self._see_time(self._not_future(start_ms, end_ms))
        current = self._outages.get(event_id)
        # The latest message wins, except that a re-sent firing message of an
        # event already resolved (a correlate stage replaying after a restart)
        # does not reopen it.
        if current is None or (current.event != event and (current.open or status == RESOLVED)):
            self._outages[event_id] = _Outage(event, start_ms, end_ms)
            changed = True
            if status == RESOLVED:
                self._forget_old_outages()
        if changed:
            self.version += 1
        return changed

    def _not_future(self, *times: int | None) -> int:
        """The latest of `times`, refused if later than the wall clock allows."""
        latest = max(t or 0 for t in times)
        if self.clock_ms is not None and latest > self.clock_ms() + FUTURE_ALLOWANCE_MS:
            raise BadMessage("bad_timestamp", "a time more than an hour past the wall clock")
        return latest

    def _see_time(self, ms: int) -> bool:
        if ms <= self.now_ms:
            return False
        self.now_ms = ms
        return True

    # -- reading -----------------------------------------------------------

    def _recent(self, end_ms: int | None) -> bool:
        return end_ms is not None and end_ms >= self.now_ms - self.recent_ms

    def _open_records(self, service: str | None = None) -> list[_Incident]:
        if service is None:
            records = [self._incidents[i] for i in self._open]
        else:
            records = [self._incidents[i] for i in self._by_service.get(service, ())
                       if self._incidents[i].open]
        # The worst first: critical before warning, then the newest onset.
        records.sort(key=lambda r: (r.alert["severity"] != "critical", -r.start_ms))
        return records

    def _resolved_records(self, service: str | None = None) -> list[_Incident]:
        ids: Iterable[str] = (self._incidents if service is None
                              else self._by_service.get(service, ()))
        records = [r for r in (self._incidents[i] for i in ids)
                   if not r.open and self._recent(r.end_ms)]
        records.sort(key=lambda r: -(r.end_ms or 0))
        return records

    def incidents(self, status: str | None = None, service: str | None = None) -> list[dict]:
        """Latest alert message of each open (`status="open"`) or recently resolved
        (`"resolved"`) incident, or of both (None), optionally of one service."""
        records = []
        if status in (None, "open"):
            records += self._open_records(service)
        if status in (None, "resolved"):
            records += self._resolved_records(service)
        return [r.alert for r in records]

    def outages(self) -> list[dict]:
        """Open outage events (newest onset first), then those resolved recently."""
        live = [o for o in self._outages.values() if o.open or self._recent(o.end_ms)]
        live.sort(key=lambda o: (not o.open, -(o.start_ms if o.open else o.end_ms or 0)))
        return [o.event for o in live]

    def services(self) -> list[str]:
        return list(self._by_service)

    def service(self, name: str) -> dict | None:
        """A service's incidents, newest onset first, each with its sparkline points,
        and the outage events it took part in; None for a service with none."""
        history = self._by_service.get(name)
        if not history:
            return None
        records = sorted((self._incidents[i] for i in history), key=lambda r: -r.start_ms)
        return {
            "service": name,
            "open": sum(r.open for r in records),
            "incidents": [{"alert": r.alert, "points": r.points()} for r in records],
            "outages": [o.event for o in self._outages.values()
                        if any(member[0] == name for member in o.event["services"])],
        }

    def board(self, max_rows: int) -> dict:
        """What the page shows: outage events, open incidents with their points and
        the event each belongs to, recently resolved ones; lists cut to `max_rows`,
        with their full lengths beside them."""
        outages = self.outages()
        event_of = {member[2]: o["event_id"] for o in outages if o["status"] == FIRING
                    for member in o["services"]}
        open_records = self._open_records()
        resolved = self._resolved_records()
        return {
            "version": self.version,
            "now": self.now_ms,
            "outages": outages[:max_rows],
            "outages_total": len(outages),
            "open": [{"alert": r.alert, "points": r.points(),
                      "event_id": event_of.get(r.alert["alert_id"])}
                     for r in open_records[:max_rows]],
            "open_total": len(open_records),
            "resolved": [{"alert": r.alert} for r in resolved[:max_rows]],
            "resolved_total": len(resolved),
        }

    def _forget_old_outages(self) -> None:
        """Drop outage events that ended more than `recent_ms` ago (incidents are
        kept per service instead, for their history)."""
        for event_id in [k for k, o in self._outages.items()
                         if not o.open and not self._recent(o.end_ms)]:
            del self._outages[event_id]
