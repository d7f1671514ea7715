"""The status board's view: alert and outage-event messages folded into open and recent state."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.core.board_view import (
    BREAKDOWN_ROWS,
    DAY_MS,
    HISTORY_PER_SERVICE,
    POINTS_PER_INCIDENT,
    BadMessage,
    BoardView,
)
from stream_detector.core.times import iso_utc

T0 = 1_767_571_200_000
MINUTE = 60_000


def alert(service: str, start: int, bucket: int, status: str = "firing", *,
          region: str | None = None, severity: str = "critical", reports: int = 100,
          expected: float = 5.0, end: int | None = None) -> dict:
    """An alert message as the detector writes it; times in minutes after T0."""
    return {
        "alert_id": f"{service}/{region or '*'}/{iso_utc(T0 + start * MINUTE)}",
        "status": status, "service": service, "region": region, "severity": severity,
        "started_at": iso_utc(T0 + start * MINUTE),
        "ended_at": iso_utc(T0 + end * MINUTE) if end is not None else None,
        "bucket_start": iso_utc(T0 + bucket * MINUTE), "bucket_seconds": 60,
        "reports": reports, "expected": expected, "score": 1.0,
        "regions": [["US", reports]], "problems": [["login", reports]],
    }


def resolved(service: str, start: int, bucket: int, **kw) -> dict:
    return alert(service, start, bucket, "resolved", end=bucket, reports=4, **kw)


def event(event_id: str, start: int, members: list[tuple[str, int]], status: str = "firing",
          end: int | None = None, cause: str | None = "aws") -> dict:
    """An outage event as issue 17's contract has it: members as (service, incident start)."""
    return {
        "event_id": event_id, "status": status,
        "started_at": iso_utc(T0 + start * MINUTE),
        "ended_at": iso_utc(T0 + end * MINUTE) if end is not None else None,
        "services": [[s, None, f"{s}/*/{iso_utc(T0 + m * MINUTE)}"] for s, m in members],
        "suspected_cause": cause, "regions": [["US", 300]], "problems": [["login", 200]],
        "reports": 900,
    }


def fold(messages: list[dict], view: BoardView | None = None) -> BoardView:
    view = view or BoardView()
    for message in messages:
        if "event_id" in message:
            view.apply_outage(orjson.dumps(message))
        else:
            view.apply_alert(orjson.dumps(message))
    return view


def test_an_incident_opens_updates_and_resolves():
    view = fold([alert("x", 0, 0, severity="warning"), alert("x", 0, 1)])
    [shown] = view.incidents("open")
    assert shown == alert("x", 0, 1)  # the latest message, every field as sent
    assert view.incidents("resolved") == []

    fold([resolved("x", 0, 6)], view)
    assert view.incidents("open") == []
    assert [a["status"] for a in view.incidents("resolved")] == ["resolved"]
    assert view.incidents() == view.incidents("resolved")


def test_re_sent_messages_change_nothing_and_older_ones_never_undo_newer():
    messages = [alert("x", 0, 0), alert("x", 0, 1), resolved("x", 0, 2)]
    view = fold(messages)
    version = view.version
    # A detector restarted from an earlier checkpoint sends them again.
    for message in messages[:2] + messages:
        assert view.apply_alert(orjson.dumps(message)) is False
    assert view.version == version
    assert [a["status"] for a in view.incidents()] == ["resolved"]


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(6)))
def test_any_order_of_an_incidents_messages_gives_the_same_view(order):
    messages = [alert("x", 0, b, reports=10 * b) for b in range(5)] + [resolved("x", 0, 5)]
    in_order = fold(messages).service("x")
    assert fold([messages[i] for i in order]).service("x") == in_order


def test_open_incidents_worst_first_and_filtered_by_service():
    view = fold([alert("a", 0, 0, severity="warning"), alert("b", 1, 1),
                 alert("c", 2, 2, severity="warning"), alert("b", 3, 3, region="BR")])
    assert [(a["service"], a["region"]) for a in view.incidents("open")] == [
        ("b", "BR"), ("b", None), ("c", None), ("a", None)]
    assert [a["region"] for a in view.incidents("open", "b")] == ["BR", None]
    assert view.incidents("open", "nobody") == []


def test_resolved_stay_on_the_board_for_the_recent_window_of_the_messages_own_time():
    view = fold([alert("x", 0, 0), resolved("x", 0, 10)], BoardView(recent_ms=DAY_MS))
    day = DAY_MS // MINUTE
    fold([alert("y", day, day)], view)  # 24 h minus 10 min after x ended: still recent
    assert [a["service"] for a in view.incidents("resolved")] == ["x"]
    fold([alert("y", day, day + 11)], view)
    assert view.incidents("resolved") == []
    # It has left the board, not the service's history.
    assert [i["alert"]["status"] for i in view.service("x")["incidents"]] == ["resolved"]


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "not_json"),
    (b"[1, 2]", "not_object"),
    (orjson.dumps({k: v for k, v in alert("x", 0, 0).items() if k != "alert_id"}),
     "missing_field"),
    (orjson.dumps({**alert("x", 0, 0), "status": "maybe"}), "bad_type"),
    (orjson.dumps({**alert("x", 0, 0), "service": ""}), "bad_type"),
    (orjson.dumps({**alert("x", 0, 0), "reports": "many"}), "bad_type"),
    (orjson.dumps({**alert("x", 0, 0), "regions": [["US"]]}), "bad_type"),
    # Past a 64-bit count: once crashed the board, at every restart.
    (orjson.dumps({**alert("x", 0, 0), "reports": 2**63}), "bad_type"),
    (orjson.dumps({**alert("x", 0, 0), "reports": 2**64 - 1}), "bad_type"),
    (orjson.dumps({**alert("x", 0, 0), "reports": -1}), "bad_type"),
    # Deeper than orjson writes: kept, it made every answer that held it fail.
    (orjson.dumps(alert("x", 0, 0))[:-1] + b',"extra":' + b"[" * 300 + b"]" * 300 + b"}",
     "too_deep"),
    (orjson.dumps({**alert("x", 0, 0), "started_at": "yesterday"}), "bad_timestamp"),
    (orjson.dumps({**alert("x", 0, 0), "bucket_start": "2026-01-08T19:07:00"}), "bad_timestamp"),
    # Read as UTC by the page, so only UTC with Z.
    (orjson.dumps({**alert("x", 0, 0), "bucket_start": "2026-01-08T19:07:00+05:00"}),
     "bad_timestamp"),
    (orjson.dumps({**alert("x", 0, 0), "bucket_start": "20260108T190700Z"}), "bad_timestamp"),
    (orjson.dumps({**alert("x", 0, 0), "started_at": "2026-W02-4T19:07:00Z"}), "bad_timestamp"),
    (orjson.dumps({**alert("x", 0, 0), "started_at": "2026-02-30T19:07:00Z"}), "bad_timestamp"),
    (orjson.dumps({**alert("x", 0, 0, "resolved")}), "missing_field"),
])
def test_an_unusable_alert_is_refused_with_its_reason_and_counted(raw, reason):
    view = fold([alert("y", 0, 0)])
    before = (view.version, view.incidents())
    with pytest.raises(BadMessage) as refused:
        view.apply_alert(raw)
    assert refused.value.reason == reason
    assert view.skipped[reason] == 1
    assert (view.version, view.incidents()) == before


@pytest.mark.parametrize(("raw", "reason"), [
    (orjson.dumps({**event("e1", 0, [("a", 0)]), "services": [["a", None]]}), "bad_type"),
    (orjson.dumps(event("e1", 0, [("a", 0)]))[:-1] + b',"x":{"y":' + b"[" * 300
     + b"]" * 300 + b"}}", "too_deep"),
])
def test_an_unusable_outage_event_is_refused(raw, reason):
    view = BoardView()
    with pytest.raises(BadMessage) as refused:
        view.apply_outage(raw)
    assert refused.value.reason == reason
    assert view.outages() == []
    # What the board serves can still be written.
    orjson.dumps(view.board(10))


def test_sparkline_points_are_per_bucket_sorted_without_repeats_and_capped():
    buckets = list(range(POINTS_PER_INCIDENT + 30))
    view = fold([alert("x", 0, b, reports=b) for b in reversed(buckets[:10])]
                + [alert("x", 0, b, reports=b) for b in buckets] + [alert("x", 0, 3)])
    points = view.service("x")["incidents"][0]["points"]
    kept = buckets[-POINTS_PER_INCIDENT:]
    assert points == {"bucket_start_ms": [T0 + b * MINUTE for b in kept], "reports": kept,
                      "expected": [5.0] * len(kept)}


def test_a_services_history_keeps_its_latest_incidents_and_every_open_one():
    messages = []
    for k in range(HISTORY_PER_SERVICE + 10):
        messages += [alert("x", 10 * k, 10 * k), resolved("x", 10 * k, 10 * k + 5)]
    view = fold(messages + [alert("x", 10_000, 10_000)])
    incidents = view.service("x")["incidents"]
    assert len(incidents) == HISTORY_PER_SERVICE
    assert incidents[0]["alert"]["status"] == "firing"
    oldest_kept = HISTORY_PER_SERVICE + 10 - (HISTORY_PER_SERVICE - 1)
    assert incidents[-1]["alert"]["started_at"] == iso_utc(T0 + 10 * oldest_kept * MINUTE)

    opens = fold([alert("y", k, k, region=f"R{k}") for k in range(HISTORY_PER_SERVICE + 5)])
    assert len(opens.incidents("open", "y")) == HISTORY_PER_SERVICE + 5


def test_an_outage_event_grows_resolves_and_is_not_reopened_by_a_re_sent_state():
    first = event("e1", 0, [("aws", 0), ("netflix", 1), ("slack", 2)])
    grown = event("e1", 0, [("aws", 0), ("netflix", 1), ("slack", 2), ("zoom", 3)])
    done = {**grown, "status": "resolved", "ended_at": iso_utc(T0 + 60 * MINUTE)}
    view = fold([first, grown])
    assert view.outages() == [grown]
    fold([done, first, grown], view)  # a correlate stage replaying after a restart
    assert view.outages() == [done]


def test_open_events_come_first_and_resolved_ones_leave_after_the_window():
    view = BoardView(recent_ms=DAY_MS)
    old = event("old", 0, [("a", 0)], "resolved", end=30)
    live = event("live", 100, [("b", 100)])
    fold([old, live], view)
    assert [e["event_id"] for e in view.outages()] == ["live", "old"]
    day = DAY_MS // MINUTE
    fold([event("later", day + 31, [("c", day + 31)], "resolved", end=day + 40)], view)
    assert [e["event_id"] for e in view.outages()] == ["live", "later"]


def test_the_page_feed_links_incidents_to_their_event_and_cuts_long_lists():
    view = fold([alert(f"s{k}", k, k) for k in range(5)]
                + [event("e1", 0, [("s0", 0), ("s1", 1), ("s2", 2)])])
    feed = view.board(max_rows=3)
    assert feed["open_total"] == 5 and len(feed["open"]) == 3
    linked = {row["alert"]["service"]: row["event_id"] for row in feed["open"]}
    assert linked == {"s4": None, "s3": None, "s2": "e1"}
    assert feed["outages_total"] == 1 and feed["outages"][0]["event_id"] == "e1"
    assert feed["open"][0]["points"] == {"bucket_start_ms": [T0 + 4 * MINUTE],
                                         "reports": [100], "expected": [5.0]}
    assert view.service("s1")["outages"] == [feed["outages"][0]]


def test_a_time_far_past_the_wall_clock_is_refused_and_empties_nothing():
    view = BoardView(clock_ms=lambda: T0 + 10 * MINUTE)
    fold([alert("x", 0, 0), resolved("x", 0, 5), alert("y", 8, 8)], view)
    far = alert("z", 0, 0)
    far["bucket_start"] = "2099-01-01T00:00:00Z"
    with pytest.raises(BadMessage) as refused:
        view.apply_alert(orjson.dumps(far))
    assert refused.value.reason == "bad_timestamp"
    with pytest.raises(BadMessage):
        view.apply_outage(orjson.dumps(event("e1", 60 * 24 * 365, [("y", 8)])))
    # Still "now" as the messages say, so x's resolve is still recent.
    assert view.now_ms == T0 + 8 * MINUTE
    assert [a["service"] for a in view.incidents("resolved")] == ["x"]
    # Within the allowance: a bucket a little ahead of this host's clock.
    fold([alert("w", 30, 30)], view)
    assert view.now_ms == T0 + 30 * MINUTE


def test_breakdowns_are_cut_to_their_largest_rows():
    big = alert("x", 0, 0)
    big["regions"] = [[f"r{i}", i] for i in range(140_000)]
    view = fold([big, {**event("e1", 0, [("x", 0)]), "problems": big["regions"]}])
    [shown] = view.incidents("open")
    assert shown["regions"] == [[f"r{i}", i] for i in range(139_999, 139_999 - BREAKDOWN_ROWS, -1)]
    assert len(view.outages()[0]["problems"]) == BREAKDOWN_ROWS
    assert shown["problems"] == big["problems"]  # short ones kept as sent
