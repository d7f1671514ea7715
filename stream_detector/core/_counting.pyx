# cython: language_level=3, boundscheck=False, wraparound=False
"""The detector's two per-item loops, compiled: counting reports, and listing a bucket's series.

Both run once per report or once per series and bucket, so at a few
hundred thousand reports a second the interpreter's own overhead was most
of their cost. They are written against `PartitionDetector`'s state, which
owns their meaning; see `detector.py` for the rules they apply.
"""

from cpython.long cimport PyLong_AsLongLongAndOverflow

from stream_detector.core.reporters cimport HourSet, ReporterFilter, pair_key

import orjson

from stream_detector.core.events import (
    BAD_TIMESTAMP,
    MAX_FIELD_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_TS_MS,
    MIN_TS_MS,
    InvalidReport,
    decode_report,
)
from stream_detector.core.reporters import HOUR_MS

cdef long long C_MIN_TS_MS = MIN_TS_MS
cdef long long C_HOUR_MS = HOUR_MS
cdef Py_ssize_t C_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES
cdef Py_ssize_t C_MAX_FIELD_CHARS = MAX_FIELD_CHARS
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


cdef inline bint optional_text(object value) noexcept:
    return value is None or (type(value) is str and len(<str>value) > 0)


cdef inline bint fits(object value) noexcept:
    return value is None or len(<str>value) <= C_MAX_FIELD_CHARS


def count_reports(detector, values, wall_ms):
    """Count message values into `detector`'s open buckets, in order.

    Returns how many were late and duplicate, and the invalid ones as
    (index in `values`, `InvalidReport`). It checks the common shape of a
    report inline, falling back to `decode_report` only to name what is
    wrong or to convert an ISO timestamp, and inlines the reporter filter,
    the bucket counter and the event clock.
    """
    config = detector.config
    clock = detector.clock
    cdef long long width = config.bucket_ms
    cdef long long lateness_ms = clock.lateness_ms
    # Newest acceptable timestamp: the valid range and the future limit in one bound.
    cdef long long newest_ms = MAX_TS_MS - 1
    if wall_ms is not None and wall_ms + config.max_future_ms < newest_ms:
        newest_ms = wall_ms + config.max_future_ms
    # -1 and 0 stand for "no report yet" and "nothing closed yet": every
    # timestamp is later than both, so no bucket is late against them.
    cdef long long max_event_ms = -1 if clock.max_event_ms is None else clock.max_event_ms
    cdef long long wall_at_max_ms = clock.wall_at_max_ms
    cdef long long observed_wall_ms = wall_ms if wall_ms is not None else 0
    cdef long long next_close_ms = detector.next_close_ms or 0
    counter = detector.counter
    cdef dict open_buckets = counter.open
    cdef ReporterFilter reporters = detector.reporters
    # The bucket and the reporter hour of the previous report, as ranges of
    # event time: consecutive reports almost always share both, and
    # comparing timestamps is much cheaper than dividing them. `bucket` is
    # None until a report counts in it, so no empty bucket is ever opened.
    cdef long long bucket_start = -1, bucket_end = -1, bucket_late_ms = -1
    cdef long long hour_start = -1, hour_end = -1, ts_ms = 0
    cdef int overflow = 0
    cdef Py_ssize_t index = 0, size
    cdef long long late = 0, duplicate = 0
    cdef object bucket = None
    cdef HourSet seen_in_hour = None
    cdef list invalid = []
    cdef object doc, service, ts, region, problem, reporter, counts
    cdef dict regions, problems
    cdef bytes raw
    try:
        for raw in values:
            size = len(raw)
            doc = None
            if size <= C_MAX_MESSAGE_BYTES:
                try:
                    doc = _loads(raw)
                except _JSONDecodeError:
                    pass
            service = None  # fails the check below, so decode_report names the problem
            if type(doc) is dict:
                service = (<dict>doc).get("service")
                ts = (<dict>doc).get("ts")
                region = (<dict>doc).get("region")
                problem = (<dict>doc).get("problem")
                reporter = (<dict>doc).get("reporter")
                if type(ts) is int:
                    ts_ms = PyLong_AsLongLongAndOverflow(ts, &overflow)
            # The common shape of a report, checked inline. A message of at
            # most MAX_FIELD_CHARS bytes cannot hold a longer string.
            if not (
                type(service) is str and len(<str>service) > 0
                and type(ts) is int and not overflow and C_MIN_TS_MS <= ts_ms <= newest_ms
                and optional_text(region) and optional_text(problem) and optional_text(reporter)
                and (size <= C_MAX_FIELD_CHARS
                     or (fits(service) and fits(region) and fits(problem) and fits(reporter)))
            ):
                overflow = 0
                try:
                    service, ts, region, problem, reporter = decode_report(raw)
                    if ts > newest_ms:
                        raise InvalidReport(BAD_TIMESTAMP, f"'ts' {ts} is in the future")
                except InvalidReport as exc:
                    invalid.append((index, exc))
                    index += 1
                    continue
                ts_ms = ts
            index += 1
            if not bucket_start <= ts_ms < bucket_end:
                bucket_start = ts_ms - ts_ms % width
                bucket_end = bucket_start + width
                # The bucket is late by event time once the clock reaches this.
                bucket_late_ms = bucket_end + lateness_ms
                bucket = open_buckets.get(bucket_start)
            # Late by event time alone (deterministic for a given message order), or
            # late because the wall clock already closed its bucket while the
            # partition was quiet.
            if max_event_ms >= bucket_late_ms or bucket_start < next_close_ms:
                late += 1
                continue
            if reporter is not None:
                if not hour_start <= ts_ms < hour_end:
                    hour_start = ts_ms - ts_ms % C_HOUR_MS
                    hour_end = hour_start + C_HOUR_MS
                    seen_in_hour = reporters.hour_set(hour_start // C_HOUR_MS)
                if not seen_in_hour.add(pair_key(service, reporter)):
                    duplicate += 1
                    continue
            if bucket is None:
                bucket = counter.bucket(bucket_start)
            counts = (<dict>bucket).get(service)
            if counts is None:
                counts = (<dict>bucket)[service] = [1, {}, {}]
            else:
                (<list>counts)[0] += 1
            if region is not None:
                regions = (<list>counts)[1]
                regions[region] = regions.get(region, 0) + 1
            if problem is not None:
                problems = (<list>counts)[2]
                problems[problem] = problems.get(problem, 0) + 1
            if ts_ms > max_event_ms:
                max_event_ms = ts_ms
                wall_at_max_ms = observed_wall_ms
    finally:
        if max_event_ms >= 0:
            clock.max_event_ms = max_event_ms
            clock.wall_at_max_ms = wall_at_max_ms
    return late, duplicate, invalid


def list_series(dict counts, dict known, add, bint regional, list rows, list reports,
                dict first):
    """Append the bank row and report count of each series with reports in a bucket.

    Each service comes first, then its regions in the order of its region
    counts; `first` gets each service's index. Series seen for the first
    time get a row from `add()`; `known` maps a service to its row and its
    regions' rows.
    """
    cdef object service, entry, row
    cdef list counted
    cdef dict regions, region_rows
    for service, counted in counts.items():
        entry = known.get(service)
        if entry is None:
            entry = known[service] = (add(), {})
        first[service] = len(rows)
        rows.append((<tuple>entry)[0])
        reports.append(counted[0])
        regions = counted[1]
        if regional and regions:
            region_rows = (<tuple>entry)[1]
            for region, n in regions.items():
                row = region_rows.get(region)
                if row is None:
                    row = region_rows[region] = add()
                rows.append(row)
                reports.append(n)
