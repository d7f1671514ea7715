# cython: language_level=3, boundscheck=False, wraparound=False
"""The detector's per-report loop, compiled: reading and counting reports.

It runs once per report, so at a few hundred thousand reports a second the
interpreter's own overhead was most of its cost. It is written against
`PartitionDetector`'s state, which owns its meaning; see `detector.py` for
the rules it applies. The rules of time and bucketing are those of the
event clock (`watermark.EventClock`) and the buckets (`buckets.BucketCounter`),
called through their compiled methods.
"""

from cpython.bytes cimport PyBytes_AS_STRING
from libc.string cimport memcmp

from stream_detector.core.buckets cimport BucketCounter
from stream_detector.core.reporters cimport HourSet, ReporterFilter, pair_key_utf8
from stream_detector.core.tally cimport BucketTally, SeriesIndex
from stream_detector.core.watermark cimport EventClock

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


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL


# --- the common report, read straight from its bytes -----------------------
#
# Nearly every message is a flat JSON object of short plain strings and one
# integer. `scan_report` reads such a message without building a dict or a
# string per field name: it finds the five fields and checks that the whole
# message is JSON. Anything it does not fully understand (an escape, a
# nested value, a float timestamp, a number with an exponent or over 18
# integer digits, a field given twice, a byte that is not ASCII in a string,
# a malformed message) makes it give up, and the message takes the exact
# path (`decode_report`, over `orjson.loads`), so what is accepted never
# differs from what orjson and `decode_report` accept. Only ASCII is taken as
# read because its bytes are valid UTF-8 as they are.

cdef struct Text:
    const unsigned char* start
    Py_ssize_t size
    bint present  # the field occurs, as a string; absent and null are both "not present"


cdef struct Scanned:
    Text service, region, problem, reporter
    long long ts
    bint has_ts


cdef inline Py_ssize_t skip_space(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (p[i] == 32 or p[i] == 9 or p[i] == 10 or p[i] == 13):
        i += 1
    return i


cdef inline Py_ssize_t scan_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                   bint* ascii) noexcept nogil:
    """Index after the closing quote of the plain string starting after p[i - 1] == '"';
    -1 for an escape, a control character or no end."""
    ascii[0] = True
    while i < n:
        if p[i] == 34:  # '"'
            return i + 1
        if p[i] == 92 or p[i] < 32:  # '\\' or a control character
            return -1
        if p[i] >= 128:
            ascii[0] = False
        i += 1
    return -1


cdef inline Py_ssize_t scan_digits(const unsigned char* p, Py_ssize_t i,
                                   Py_ssize_t n) noexcept nogil:
    """Index after the one or more digits at p[i]; -1 if there are none."""
    cdef Py_ssize_t start = i
    while i < n and 48 <= p[i] <= 57:
        i += 1
    return i if i > start else -1


cdef inline Py_ssize_t scan_number(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                   bint* integer, bint* plain) noexcept nogil:
    """Index after the JSON number at p[i]; -1 if it is not one.

    `plain`: no exponent and at most 18 digits before the point, so orjson
    cannot find it beyond a double's range (it refuses those).
    """
    cdef Py_ssize_t start
    integer[0] = True
    plain[0] = True
    if i < n and p[i] == 45:  # '-'
        i += 1
    start = i
    if i < n and p[i] == 48:  # '0' stands alone
        i += 1
    elif i < n and 49 <= p[i] <= 57:
        while i < n and 48 <= p[i] <= 57:
            i += 1
        if i - start > 18:
            plain[0] = False
    else:
        return -1
    if i < n and p[i] == 46:  # '.'
        integer[0] = False
        i = scan_digits(p, i + 1, n)
        if i < 0:
            return -1
    if i < n and (p[i] == 101 or p[i] == 69):  # 'e' or 'E'
        integer[0] = False
        plain[0] = False
        i += 1
        if i < n and (p[i] == 43 or p[i] == 45):
            i += 1
        i = scan_digits(p, i, n)
    return i


cdef inline bint is_key(const unsigned char* key, Py_ssize_t size, const char* name,
                        Py_ssize_t name_size) noexcept nogil:
    return size == name_size and memcmp(key, name, name_size) == 0


cdef bint scan_report(const unsigned char* p, Py_ssize_t n, Scanned* out) noexcept nogil:
    """Read a common report; False where the exact path must decide."""
    cdef Py_ssize_t i, key_at, key_size, value_at, end
    cdef bint ascii, integer, plain, is_string, is_null
    cdef Text* text
    cdef long long ts
    cdef int field, seen = 0
    out.service.present = out.region.present = out.problem.present = False
    out.reporter.present = out.has_ts = False
    i = skip_space(p, 0, n)
    if i >= n or p[i] != 123:  # '{'
        return False
    i = skip_space(p, i + 1, n)
    if i < n and p[i] == 125:  # '}': no fields, so no service
        return False
    while True:
        if i >= n or p[i] != 34:
            return False
        key_at = i + 1
        i = scan_string(p, key_at, n, &ascii)
        if i < 0 or not ascii:
            return False
        key_size = i - 1 - key_at
        i = skip_space(p, i, n)
        if i >= n or p[i] != 58:  # ':'
            return False
        i = skip_space(p, i + 1, n)
        if i >= n:
            return False
        value_at = i
        is_string = is_null = False
        integer = False
        plain = True
        if p[i] == 34:
            is_string = True
            i = scan_string(p, i + 1, n, &ascii)
        elif p[i] == 45 or 48 <= p[i] <= 57:
            i = scan_number(p, i, n, &integer, &plain)
        elif n - i >= 4 and memcmp(p + i, b"null", 4) == 0:
            is_null = True
            i += 4
        elif n - i >= 4 and memcmp(p + i, b"true", 4) == 0:
            i += 4
        elif n - i >= 5 and memcmp(p + i, b"false", 5) == 0:
            i += 5
        else:
            return False  # a nested value, or not JSON
        if i < 0 or (is_string and not ascii):
            return False  # not JSON, or UTF-8 that would need checking
        text = NULL
        field = 0
        if is_key(p + key_at, key_size, b"service", 7):
            text, field = &out.service, 1
        elif is_key(p + key_at, key_size, b"region", 6):
            text, field = &out.region, 2
        elif is_key(p + key_at, key_size, b"problem", 7):
            text, field = &out.problem, 4
        elif is_key(p + key_at, key_size, b"reporter", 8):
            text, field = &out.reporter, 8
        elif is_key(p + key_at, key_size, b"ts", 2):
            field = 16
            # Epoch milliseconds of at most 18 digits; anything else is for the exact path.
            if not integer or p[value_at] == 45 or i - value_at > 18:
                return False
            ts = 0
            for end in range(value_at, i):
                ts = ts * 10 + (p[end] - 48)
            out.ts = ts
            out.has_ts = True
        if not plain:
            return False  # a number orjson might find beyond a double's range
        if field & seen:
            return False  # a field given twice: orjson's rule (the last wins) decides
        seen |= field
        if text != NULL:
            if is_string:
                text.start = p + value_at + 1
                text.size = i - value_at - 2
                text.present = True
            elif not is_null:
                return False
        i = skip_space(p, i, n)
        if i >= n:
            return False
        if p[i] == 44:  # ','
            i = skip_space(p, i + 1, n)
            continue
        if p[i] != 125:
            return False
        break
    return skip_space(p, i + 1, n) == n and out.service.present and out.has_ts


cdef inline bint usable(Text* text, bint required, bint short_message) noexcept nogil:
    """A field the counting loop takes as read: absent (unless required), or non-empty
    and within the length limit (a message that short cannot hold a longer field)."""
    if not text.present:
        return not required
    return text.size > 0 and (short_message or text.size <= C_MAX_FIELD_CHARS)


cdef inline void point_at(Text* text, object value) except *:
    """Make `text` the UTF-8 of a decoded field (None: absent); `value` must outlive it."""
    text.present = value is not None
    if text.present:
        text.start = <const unsigned char*>PyUnicode_AsUTF8AndSize(value, &text.size)


def count_reports(detector, values, wall_ms):
    """Count message values into `detector`'s open buckets, in order.

    Returns how many were late and duplicate, and the invalid ones as
    (index in `values`, `InvalidReport`). A common report is read and
    checked inline (`scan_report`, `usable`); anything else goes through
    `decode_report`, which names what is wrong or converts an ISO
    timestamp.
    """
    config = detector.config
    cdef EventClock clock = detector.clock
    # Newest acceptable timestamp: the valid range and the future limit in one bound.
    cdef long long newest_ms = MAX_TS_MS - 1
    if wall_ms is not None and wall_ms + config.max_future_ms < newest_ms:
        newest_ms = wall_ms + config.max_future_ms
    cdef long long observed_wall_ms = wall_ms if wall_ms is not None else -1
    # 0 stands for "nothing closed yet": every timestamp is later.
    cdef long long next_close_ms = detector.next_close_ms or 0
    cdef BucketCounter counter = detector.counter
    cdef ReporterFilter reporters = detector.reporters
    cdef SeriesIndex index = detector.index
    # The bucket and the reporter hour of the previous report, as ranges of
    # event time: consecutive reports almost always share both, and
    # comparing timestamps is much cheaper than dividing them. `bucket` is
    # None until a report counts in it, so no empty bucket is ever opened.
    cdef long long bucket_start = -1, bucket_end = -1
    cdef long long hour_start = -1, hour_end = -1, ts_ms = 0
    cdef Py_ssize_t index_in_values = 0, size, service_id, region_id, problem_id
    cdef long long late = 0, duplicate = 0
    cdef BucketTally bucket = None
    cdef HourSet seen_in_hour = None
    cdef list invalid = []
    cdef object raw, ts
    # The decoded fields of a message that took the exact path; its Texts point into them.
    cdef object service = None, region = None, problem = None, reporter = None
    cdef Scanned scanned
    cdef bint short_message
    for raw in values:
        size = len(raw) if raw is not None else 0
        short_message = size <= C_MAX_FIELD_CHARS
        service = region = problem = reporter = None
        if not (
            type(raw) is bytes and size <= C_MAX_MESSAGE_BYTES
            and scan_report(<const unsigned char*>PyBytes_AS_STRING(raw), size, &scanned)
            and C_MIN_TS_MS <= scanned.ts <= newest_ms
            and usable(&scanned.service, True, short_message)
            and usable(&scanned.region, False, short_message)
            and usable(&scanned.problem, False, short_message)
            and usable(&scanned.reporter, False, short_message)
        ):
            try:
                service, ts, region, problem, reporter = decode_report(raw)
                if ts > newest_ms:
                    raise InvalidReport(BAD_TIMESTAMP, f"'ts' {ts} is in the future")
            except InvalidReport as exc:
                invalid.append((index_in_values, exc))
                index_in_values += 1
                continue
            scanned.ts = ts
            point_at(&scanned.service, service)
            point_at(&scanned.region, region)
            point_at(&scanned.problem, problem)
            point_at(&scanned.reporter, reporter)
        index_in_values += 1
        ts_ms = scanned.ts
        if not bucket_start <= ts_ms < bucket_end:
            bucket_start = counter.start_of(ts_ms)
            bucket_end = bucket_start + counter.width_ms
            bucket = None
        # Late by event time alone, or late because the wall clock already closed
        # its bucket while the partition was quiet.
        if clock.passed(bucket_end) or bucket_start < next_close_ms:
            late += 1
            continue
        if scanned.reporter.present:
            if not hour_start <= ts_ms < hour_end:
                hour_start = reporters.hour_start(ts_ms)
                hour_end = hour_start + C_HOUR_MS
                seen_in_hour = reporters.pairs_from(hour_start)
            if not seen_in_hour.add(pair_key_utf8(
                <const char*>scanned.service.start, scanned.service.size,
                <const char*>scanned.reporter.start, scanned.reporter.size,
            )):
                duplicate += 1
                continue
        if bucket is None:
            bucket = counter.bucket_at(bucket_start)
        service_id = index.service(<const char*>scanned.service.start, scanned.service.size,
                                   service)
        region_id = problem_id = -1
        if scanned.region.present:
            region_id = index.region(service_id, <const char*>scanned.region.start,
                                     scanned.region.size, region)
        if scanned.problem.present:
            problem_id = index.problem(<const char*>scanned.problem.start,
                                       scanned.problem.size, problem)
        bucket.count(service_id, region_id, problem_id)
        clock.observe(ts_ms, observed_wall_ms)
    return late, duplicate, invalid
