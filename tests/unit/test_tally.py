"""Bucket tallies: counts by interned names, read back as the mapping and as the scored arrays."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.core.detector import DetectorConfig, PartitionDetector
from stream_detector.core.tally import BucketTally, SeriesIndex

T0 = 1_767_571_200_000  # Monday 2026-01-05 00:00 UTC

# Few names, so they repeat; some are not ASCII, which takes the exact path.
SERVICES = st.sampled_from(["x", "y", "bank", "Société Générale", "東京"])
REGIONS = st.sampled_from([None, "US", "DE", "Île-de-France"])
PROBLEMS = st.sampled_from([None, "login", "app", "paiement échoué"])
REPORTS = st.lists(st.tuples(SERVICES, REGIONS, PROBLEMS), max_size=80)


def message(service: str, region: str | None, problem: str | None) -> bytes:
    doc = {"service": service, "ts": T0}
    if region is not None:
        doc["region"] = region
    if problem is not None:
        doc["problem"] = problem
    return orjson.dumps(doc)


def expected_counts(reports) -> dict:
    """The same counts in plain dicts: everything in the order of its first report."""
    counts: dict = {}
    for service, region, problem in reports:
        entry = counts.setdefault(service, [0, {}, {}])
        entry[0] += 1
        if region is not None:
            entry[1][region] = entry[1].get(region, 0) + 1
        if problem is not None:
            entry[2][problem] = entry[2].get(problem, 0) + 1
    return counts


@settings(max_examples=60, deadline=None)
@given(REPORTS, st.booleans())
def test_a_tally_reads_as_the_counts_and_lists_each_service_before_its_regions(reports, regional):
    d = PartitionDetector(DetectorConfig(model="ewma", regions=regional))
    outcomes, invalid = d.add_many([message(*r) for r in reports])
    assert not invalid and outcomes["accepted"] == len(reports)
    expected = expected_counts(reports)
    tally = d.counter.open.get(T0, BucketTally(d.index))
    assert tally.to_dict() == expected and tally == expected
    assert list(tally) == list(expected) and len(tally) == len(expected)

    rows, reports_, first, services, region_at, regions = tally.listing()
    listed = []
    for service, (n, by_region, _) in expected.items():
        listed.append((d.row_of((service, None)), n))
        if regional:
            listed.extend((d.row_of((service, region)), m) for region, m in by_region.items())
    assert list(zip(rows.tolist(), reports_.tolist(), strict=True)) == listed
    names = d.index.services.names
    assert [names[i] for i in services.tolist()] == list(expected)
    assert [rows[at] for at in first.tolist()] == [d.row_of((s, None)) for s in expected]
    assert (region_at >= 0).all() if regional else (region_at == -1).all()


def test_a_tally_read_mid_bucket_still_sees_what_is_counted_after():
    """Reading groups a tally's entries by service; a later region or problem of a
    service already counted (a snapshot taken mid-bucket, then more reports) joins it."""
    index = SeriesIndex(iter(range(10)).__next__, regional=True)
    tally = BucketTally(index)
    tally.add("x", 1, {"US": 1}, {"login": 1})
    assert tally.to_dict() == {"x": [1, {"US": 1}, {"login": 1}]}
    tally.add("x", 1, {"DE": 1}, {"app": 1})
    assert tally["x"] == [2, {"US": 1, "DE": 1}, {"login": 1, "app": 1}]
    rows, reports, _, _, _, _ = tally.listing()
    assert rows.tolist() == [0, 1, 2] and reports.tolist() == [2, 1, 1]


def test_the_doctests_of_the_compiled_modules_pass():
    """pytest does not collect doctests from compiled modules."""
    import doctest

    from stream_detector.core import reporters, tally
    from stream_detector.core.models import _seasonal_kernel
    for module in (tally, reporters, _seasonal_kernel):
        failed, attempted = doctest.testmod(module)
        assert attempted and not failed, module.__name__


def test_the_same_region_of_two_services_is_two_series():
    index = SeriesIndex(iter(range(10)).__next__, regional=True)
    tally = BucketTally(index)
    tally.add("a", 1, {"US": 1}, {})
    tally.add("b", 2, {"US": 2}, {"login": 2})
    assert index.row_of("a", "US") != index.row_of("b", "US")
    assert tally["b"] == [2, {"US": 2}, {"login": 2}] and tally["a"][2] == {}
    assert tally.get("c") is None and "c" not in tally and "a" in tally
    assert isinstance(tally, Mapping) and dict(tally.items()) == tally.to_dict()


def test_a_bucket_of_thousands_of_names_keeps_every_count_through_growth():
    index = SeriesIndex(iter(range(100_000)).__next__, regional=True)
    tally = BucketTally(index)
    expected = {}
    for i in range(3_000):
        regions = {f"r{j}": j + 1 for j in range(i % 4)}
        problems = {f"p{i % 50}": 1}
        tally.add(f"svc-{i}", 10, regions, problems)
        expected[f"svc-{i}"] = [10, regions, problems]
    assert tally.to_dict() == expected
    assert len(index.services) == 3_000 and len(index.problems) == 50
    rows, _, _, _, _, _ = tally.listing()
    assert sorted(rows.tolist()) == list(range(len(index.services) + len(index.regions)))
    assert index.items()[7] == ["svc-7", index.row_of("svc-7"),
                                {f"r{j}": index.row_of("svc-7", f"r{j}") for j in range(3)}]


def test_an_index_restored_from_its_items_finds_every_series_at_its_row():
    index = SeriesIndex(iter(range(100)).__next__, regional=True)
    tally = BucketTally(index)
    tally.add("x", 1, {"US": 1, "DE": 1}, {})
    tally.add("y", 1, {"US": 1}, {})
    restored = SeriesIndex(iter(range(100, 200)).__next__, regional=True)
    restored.load(index.items())
    for key in [("x", None), ("x", "US"), ("x", "DE"), ("y", None), ("y", "US")]:
        assert restored.row_of(*key) == index.row_of(*key)
    assert restored.row_of("z") is None and restored.row_of("x", "FR") is None
    # A new series after the restore gets a new row, not one of the restored.
    BucketTally(restored).add("z", 1, {}, {})
    assert restored.row_of("z") == 100


def test_python_callers_cannot_reach_past_the_tables():
    index = SeriesIndex(iter(range(10)).__next__, regional=True)
    BucketTally(index).add("x", 1, {"US": 1}, {})
    with pytest.raises(TypeError):
        BucketTally(None)
    with pytest.raises(IndexError):
        index.services.row(1)
    with pytest.raises(IndexError):
        index.regions.scope(-1)
    assert index.services.names == ("x",)  # a copy: the table's own list stays as it is
    tally = BucketTally(index)
    assert tally.get(None, 0) == 0 and 1 not in tally
    with pytest.raises(KeyError):
        tally[1]


# Fails the k-th allocation of one growing step, under the debug allocator, which
# fills freed memory: a table left pointing at freed memory gives wrong ids or crashes.
GROWTH_FAILURE = """
import itertools, _testcapi
from stream_detector.core.tally import BucketTally, SeriesIndex
for k in range(1, 12):
    index = SeriesIndex(itertools.count().__next__, regional=True)
    tally = BucketTally(index)
    for i in range({n}):
        tally.add(f"s{{i}}", 1, {{}}, {{}})
    name = "s{n}"
    _testcapi.set_nomemory(k, k + 1)
    try:
        tally.add(name, 1, {{}}, {{}})
        failed = False
    except MemoryError:
        failed = True
    finally:
        _testcapi.remove_mem_hooks()
    # A failure may leave the name interned without its count, never half added.
    assert [index.service_id(f"s{{i}}") for i in range({n})] == list(range({n})), k
    assert len(index.services) == len(index.services.names), k
    assert len(tally) == {n} + (not failed), k
    tally.add(name, 1, {{}}, {{}})
    assert index.service_id(name) == {n} and tally[name][0] >= 1, k
    assert index.row_of(name) == {n}, k  # no bank row was spent on a failed add
    assert list(tally) == [f"s{{i}}" for i in range({n} + 1)], k
"""


@pytest.mark.parametrize("n", [16, 64])  # a bucket's first growth, the names' first growth
def test_a_failed_allocation_while_growing_leaves_the_tables_as_they_were(n):
    pytest.importorskip("_testcapi")
    env = {**os.environ, "PYTHONMALLOC": "debug"}
    result = subprocess.run([sys.executable, "-c", GROWTH_FAILURE.format(n=n)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
