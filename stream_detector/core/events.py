"""Decoding report messages: bytes in, a validated report or a reason out.

`decode_report` is the definition of a valid report. The detector's counting
loop (`_counting.count_reports`) reads the common shape of a report itself
and calls it only for the rest, to name what is wrong or to convert an ISO
timestamp, so a change to what is valid here must be made there too
(tests/unit/test_detector.py checks that the two agree).
"""

from __future__ import annotations

from datetime import datetime

import orjson

# Reasons travel in the dead-letter header and label a metric, so they are a
# small fixed set.
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
BAD_TIMESTAMP = "bad_timestamp"
TOO_LARGE = "too_large"
REASONS = (NOT_JSON, NOT_OBJECT, MISSING_FIELD, BAD_TYPE, BAD_TIMESTAMP, TOO_LARGE)

MAX_MESSAGE_BYTES = 16 * 1024
MAX_FIELD_CHARS = 256
# Reports stamped before 2000 or after 2100 are clock bugs, not reports.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000


class InvalidReport(ValueError):
    """A message that is not a report; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# (service, ts_ms, region, problem, reporter): a plain tuple, because one is
# built per report and a named tuple costs noticeably more on this path.
Report = tuple[str, int, "str | None", "str | None", "str | None"]


def decode_report(raw: bytes | None) -> Report:
    """Validate one message value.

    >>> decode_report(b'{"service": "x", "ts": 1767571200971, "region": "US"}')
    ('x', 1767571200971, 'US', None, None)
    >>> decode_report(b'{"service": "x", "ts": "2026-01-05T00:00:00Z"}')[1]
    1767571200000
    >>> decode_report(b'{"ts": 1}')
    Traceback (most recent call last):
    ...
    stream_detector.core.events.InvalidReport: missing_field: 'service' is required
    """
    if raw is None:  # a Kafka message may have no value at all
        raise InvalidReport(NOT_JSON, "the message has no value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidReport(TOO_LARGE, f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidReport(NOT_JSON, str(exc)) from None
    if type(doc) is not dict:
        raise InvalidReport(NOT_OBJECT, f"expected a JSON object, got {type(doc).__name__}")
    get = doc.get
    service = get("service")
    ts = get("ts")
    # The common case is checked inline; the helpers only run to name what is wrong.
    if type(service) is not str or not 0 < len(service) <= MAX_FIELD_CHARS:
        _reject_service(service)
    if type(ts) is not int or not MIN_TS_MS <= ts < MAX_TS_MS:
        ts = _timestamp_ms(ts)
    region = get("region")
    problem = get("problem")
    reporter = get("reporter")
    if region is not None and (type(region) is not str or len(region) > MAX_FIELD_CHARS):
        _reject_text("region", region)
    if problem is not None and (type(problem) is not str or len(problem) > MAX_FIELD_CHARS):
        _reject_text("problem", problem)
    if reporter is not None and (type(reporter) is not str or len(reporter) > MAX_FIELD_CHARS):
        _reject_text("reporter", reporter)
    return service, ts, region or None, problem or None, reporter or None


def _reject_service(service: object) -> None:
    if service is None:
        raise InvalidReport(MISSING_FIELD, "'service' is required")
    if type(service) is not str or not service:
        raise InvalidReport(BAD_TYPE, "'service' must be a non-empty string")
    raise InvalidReport(TOO_LARGE, f"'service' is longer than {MAX_FIELD_CHARS} characters")


def _reject_text(name: str, value: object) -> None:
    if type(value) is not str:
        raise InvalidReport(BAD_TYPE, f"'{name}' must be a string")
    raise InvalidReport(TOO_LARGE, f"'{name}' is longer than {MAX_FIELD_CHARS} characters")


def _timestamp_ms(ts: object) -> int:
    if ts is None:
        raise InvalidReport(MISSING_FIELD, "'ts' is required")
    # bool is an int subclass; `true` is never a timestamp.
    if type(ts) is int:
        ts_ms = ts
    elif type(ts) is str:
        try:
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            raise InvalidReport(BAD_TIMESTAMP, f"'ts' is not ISO-8601: {ts[:40]!r}") from None
        if parsed.tzinfo is None:
            raise InvalidReport(BAD_TIMESTAMP, "'ts' needs a UTC offset or 'Z'")
        ts_ms = int(parsed.timestamp() * 1000)
    else:
        raise InvalidReport(BAD_TYPE, "'ts' must be epoch milliseconds or an ISO-8601 string")
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        raise InvalidReport(BAD_TIMESTAMP, f"'ts' {ts_ms} is outside 2000..2100")
    return ts_ms
