"""Times as the project writes and reads them: epoch milliseconds in, ISO-8601 UTC out.

Every time inside the core is an integer of epoch milliseconds; text appears
only at the edges (alert messages, labels files, progress lines, logs), and
every conversion between the two is here, so an alert's `started_at` and a
label's `start` are read and written by the same rule.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with a `Z`, the format of every alert time.

    >>> iso_utc(1767571200000)
    '2026-01-05T00:00:00Z'
    """
    return _utc(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_minute(ms: int) -> str:
    """To the minute, for tables people read.

    >>> iso_minute(1767571260000)
    '2026-01-05T00:01Z'
    """
    return _utc(ms).strftime("%Y-%m-%dT%H:%MZ")


def readable_minute(ms: int) -> str:
    """Date and minute with a space, for progress lines.

    >>> readable_minute(1767571260000)
    '2026-01-05 00:01Z'
    """
    return _utc(ms).strftime("%Y-%m-%d %H:%MZ")


def clock_minute(ms: int) -> str:
    """The time of day alone.

    >>> clock_minute(1767571260000)
    '00:01Z'
    """
    return _utc(ms).strftime("%H:%MZ")


def iso_millis(seconds: float) -> str:
    """Epoch seconds as ISO-8601 UTC to the millisecond, the time of a log line.

    >>> iso_millis(1767571200.1234)
    '2026-01-05T00:00:00.123Z'
    """
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """An ISO-8601 time; one without an offset is taken as UTC.

    >>> parse_iso("2026-01-05T00:01:00Z") == parse_iso("2026-01-05T01:01:00+01:00")
    True
    """
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def iso_ms(text: str) -> int:
    """An ISO-8601 time as epoch milliseconds (without an offset: UTC).

    >>> iso_ms("2026-01-05T00:00:00Z")
    1767571200000
    """
    return int(parse_iso(text).timestamp() * 1000)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
