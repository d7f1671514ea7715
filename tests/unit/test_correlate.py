"""The correlate core: which incidents become one outage event, and the event messages."""

from __future__ import annotations

import math
import random

import pytest

from stream_detector.backtest import Label, incident_spans
from stream_detector.core.correlate import (
    CorrelationPolicy,
    Correlator,
    check_alert,
    poisson_tail,
    suspected_cause,
)
from stream_detector.core.incidents import Alert
from stream_detector.core.times import iso_utc
from stream_detector.outage_backtest import correlate_alerts, evaluate_grouping, final_events

T0 = 1_767_571_200_000
MIN = 60_000


def alert(service: str, onset: int, bucket: int, status: str = "firing",
          region: str | None = None, reports: int = 100, ended: int | None = None) -> dict:
    started = iso_utc(T0 + onset * MIN)
    return {"alert_id": f"{service}/{region or '*'}/{started}", "status": status,
            "service": service, "region": region, "severity": "critical",
            "started_at": started,
            "ended_at": iso_utc(T0 + (ended if ended is not None else bucket) * MIN)
            if status == "resolved" else None,
            "bucket_start": iso_utc(T0 + bucket * MIN), "bucket_seconds": 60,
            "reports": reports, "expected": 5.0, "score": 1.0,
            "regions": [[region or "US", reports]], "problems": [["login", reports]]}


def incident_stream(service: str, onset: int, end: int, region: str | None = None) -> list[dict]:
    """One incident's messages: firing every bucket from its onset, then one resolve."""
    out = [alert(service, onset, b, region=region) for b in range(onset, end)]
    out.append(alert(service, onset, end, "resolved", region=region, ended=end))
    return out


def in_time_order(*streams: list[dict]) -> list[dict]:
    merged = [a for s in streams for a in s]
    merged.sort(key=lambda a: (a["bucket_start"], a["service"]))
    return merged


def run(alerts: list[dict], **policy) -> list[dict]:
    return correlate_alerts(alerts, CorrelationPolicy(**policy))


def test_poisson_tail_matches_the_sum_of_the_distribution():
    for k in range(0, 8):
        for mean in (1e-4, 0.05, 0.5, 3.0, 12.0):
            exact = 1 - sum(math.exp(-mean) * mean ** i / math.factorial(i) for i in range(k))
            assert poisson_tail(k, mean) == pytest.approx(max(exact, 0.0), rel=1e-6, abs=1e-15)
    # Far in the tail the subtraction would give 0; the sum of the tail does not.
    assert 0 < poisson_tail(10, 1e-3) < 1e-30


def test_three_services_at_once_are_one_event_that_resolves_with_its_last_member():
    alerts = in_time_order(incident_stream("cloud", 100, 160), incident_stream("shop", 101, 150),
                           incident_stream("mail", 103, 170), incident_stream("calm", 400, 420))
    messages = run(alerts, providers=("cloud",))
    [event] = final_events(messages)
    assert event["event_id"] == "2026-01-05T01:40:00Z/cloud"
    assert [s for s, _, _ in event["services"]] == ["cloud", "shop", "mail"]
    assert event["services"][1][2] == "shop/*/2026-01-05T01:41:00Z"
    assert event["status"] == "resolved"
    assert event["started_at"] == "2026-01-05T01:40:00Z"
    assert event["ended_at"] == iso_utc(T0 + 170 * MIN)
    assert event["suspected_cause"] == "cloud"
    assert [m["status"] for m in messages].count("resolved") == 1
    assert all(m["status"] == "firing" and m["ended_at"] is None for m in messages[:-1])
    # Member counts summed: three members' latest bucket of 100 each while all fire.
    assert max(m["reports"] for m in messages) == 300
    assert event["problems"] == [["login", 300]]


def test_two_services_are_not_enough_and_onsets_far_apart_are_not_one_event():
    pair = in_time_order(incident_stream("a", 100, 130), incident_stream("b", 100, 130))
    assert run(pair) == []
    spread = in_time_order(incident_stream("a", 100, 130), incident_stream("b", 108, 130),
                           incident_stream("c", 116, 140))
    assert run(spread) == []


def test_a_busy_history_makes_three_at_once_ordinary():
    # 80 unrelated onsets in the last day (all resolving at once): three within
    # five minutes are then expected about once a day and do not group.
    history = [incident_stream(f"h{i}", 10 * i, 10 * i + 3) for i in range(80)]
    now = 80 * 10 + 60
    burst = [incident_stream(s, now, now + 20) for s in ("a", "b", "c")]
    assert run(in_time_order(*history, *burst)) == []
    # Without the history they do.
    assert len(final_events(run(in_time_order(*burst)))) == 1


def test_regional_incidents_group_by_region_against_that_regions_rate():
    # Service-wide onsets make three at once ordinary overall, but BR is quiet.
    history = [incident_stream(f"h{i}", 10 * i, 10 * i + 3) for i in range(80)]
    now = 860
    br = [incident_stream(s, now, now + 20, region="BR") for s in ("a", "b", "c")]
    [event] = final_events(run(in_time_order(*history, *br)))
    assert event["event_id"].endswith("/BR")
    assert {r for _, r, _ in event["services"]} == {"BR"}
    assert event["regions"] == [["BR", 300]]


def test_a_late_dependant_joins_the_open_event_but_not_a_resolved_one():
    base = [incident_stream(s, 100, 200) for s in ("a", "b", "c")]
    joins = incident_stream("e", 109, 150)  # within join_buckets (10) of the latest onset
    late = incident_stream("d", 120, 150)  # 11 buckets after e's, the latest: too late
    after = incident_stream("f", 205, 230)  # the event resolved at 200
    [event] = final_events(run(in_time_order(*base, late, joins, after)))
    assert [s for s, _, _ in event["services"]] == ["a", "b", "c", "e"]


def test_the_same_alerts_in_another_arrival_order_give_the_same_messages():
    streams = [incident_stream("cloud", 100, 160), incident_stream("shop", 101, 150),
               incident_stream("mail", 103, 170, region="BR"), incident_stream("tv", 104, 140)]
    ordered = in_time_order(*streams)
    expected = run(ordered)
    assert expected
    # Within the settle time (2 buckets), partitions interleave any way.
    rng = random.Random(3)
    for _ in range(5):
        shuffled = sorted(ordered, key=lambda a: (a["bucket_start"], rng.random()))
        assert run(shuffled) == expected


def test_tagged_members_carry_the_event_id():
    correlator = Correlator()
    for a in in_time_order(incident_stream("a", 100, 110), incident_stream("b", 100, 110),
                           incident_stream("c", 101, 110)):
        correlator.buffer(a)
    out = correlator.flush()
    event_ids = {e["event_id"] for e in out.events}
    assert len(event_ids) == 1
    assert {t.outage_event for t in out.tagged} == event_ids
    assert {t.alert.service for t in out.tagged} == {"a", "b", "c"}
    assert [t.alert.status for t in out.tagged if t.alert.service == "a"][-1] == "resolved"


def test_suspected_cause_from_the_dependency_map():
    policy = CorrelationPolicy(dependencies={"netflix": ("aws",), "hulu": ("aws",),
                                             "mail": ("gcp",)})
    assert suspected_cause(["netflix", "hulu", "mail"], policy) == "aws"
    assert suspected_cause(["netflix", "mail", "tv"], policy) is None
    assert suspected_cause(["netflix", "aws", "tv"], policy) == "aws"


@pytest.mark.parametrize("change, problem", [
    ({"status": "open"}, "unknown status"),
    ({"alert_id": None}, "alert_id"),
    ({"started_at": "yesterday"}, "isoformat"),
    ({"status": "resolved", "ended_at": None}, "ended_at"),
    ({"regions": "US 5"}, "regions"),
    ({"problems": [["login"]]}, "problems"),
    ({"reports": "many"}, "reports"),
])
def test_a_message_that_is_not_an_alert_is_refused(change, problem):
    with pytest.raises(ValueError, match=problem):
        check_alert({**alert("a", 0, 0), **change})
    with pytest.raises(ValueError):
        check_alert(["not", "an", "object"])


def test_needed_alerts_cover_what_a_restart_must_replay():
    correlator = Correlator()
    for a in in_time_order(*[incident_stream(s, 100, 120) for s in ("a", "b", "c")],
                           incident_stream("old", 0, 5)):
        correlator.add(a)
    correlator.flush()
    needed = correlator.needed_alert_ids()
    # The event's members, and the old incident still within the rate's lookback.
    assert needed == {"a/*/2026-01-05T01:40:00Z", "b/*/2026-01-05T01:40:00Z",
                      "c/*/2026-01-05T01:40:00Z", "old/*/2026-01-05T00:00:00Z"}
    # A day later with nothing open, the old ones are forgotten.
    for a in incident_stream("late", 100 + 1500, 100 + 1510):
        correlator.add(a)
    correlator.flush()
    assert needed.isdisjoint(correlator.needed_alert_ids())


def test_grouping_score_counts_found_groups_and_false_groupings():
    streams = [incident_stream(s, 100, 160) for s in ("cloud", "shop", "mail")]
    alerts = in_time_order(*streams)
    events = final_events(run(alerts))
    spans = incident_spans(Alert.from_message(a) for a in alerts)

    def label(service: str, group: str | None) -> Label:
        return Label(service, None, T0 + 99 * MIN, T0 + 160 * MIN, "dependant", True,
                     group=group)

    right = evaluate_grouping(events, spans, [label(s, "p1") for s in ("cloud", "shop", "mail")],
                              3)
    assert (right.found, right.groups, right.members_right, len(right.false_groupings)) == (
        1, 1, 3, 0)
    # "mail" was really a separate outage: the event mixes two causes.
    mixed = evaluate_grouping(events, spans, [label("cloud", "p1"), label("shop", "p1"),
                                              label("mail", None)], 3)
    assert len(mixed.false_groupings) == 1 and mixed.members_right == 2


def test_settings_reach_the_policy_from_toml_and_the_environment(tmp_path):
    from stream_detector.config import ConfigError, load_settings

    toml = tmp_path / "s.toml"
    toml.write_text('providers = ["aws"]\ncorrelate_window = 4\n'
                    '[dependencies]\nnetflix = ["aws", "akamai"]\n')
    policy = load_settings({}, toml, environ={}).correlation_policy()
    assert policy.providers == ("aws",) and policy.window_buckets == 4
    assert policy.dependencies == {"netflix": ("aws", "akamai")}
    env = {"STREAM_DETECTOR_PROVIDERS": "aws, cloudflare",
           "STREAM_DETECTOR_DEPENDENCIES": "hulu=aws|gcp"}
    policy = load_settings({}, environ=env).correlation_policy()
    assert policy.providers == ("aws", "cloudflare")
    assert policy.dependencies == {"hulu": ("aws", "gcp")}
    with pytest.raises(ConfigError, match="setting dependencies"):
        load_settings({}, environ={"STREAM_DETECTOR_DEPENDENCIES": "hulu"})
    with pytest.raises(ConfigError, match="setting correlate_min_services"):
        load_settings({"correlate_min_services": "1"}, environ={})
