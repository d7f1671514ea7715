import orjson
import pytest

from stream_detector.core.events import (
    BAD_TIMESTAMP,
    BAD_TYPE,
    MISSING_FIELD,
    NOT_JSON,
    NOT_OBJECT,
    TOO_LARGE,
    InvalidReport,
    decode_report,
)


def test_full_report_decodes():
    r = decode_report(b'{"service":"x","ts":1767571200971,"region":"US","problem":"login",'
                      b'"reporter":"a81f","extra":[1,2]}')
    assert r == ("x", 1767571200971, "US", "login", "a81f")


@pytest.mark.parametrize("ts, expected", [
    ("2026-01-05T00:00:00Z", 1767571200000),
    ("2026-01-05T01:00:00+01:00", 1767571200000),
    ("2026-01-05T00:00:00.250Z", 1767571200250),
])
def test_iso_timestamps_with_offset(ts, expected):
    assert decode_report(orjson.dumps({"service": "x", "ts": ts}))[1] == expected


@pytest.mark.parametrize("raw, reason", [
    (b'{"service": "x", "ts": 1767571200971', NOT_JSON),
    (b"\xff\xfe\x00garbage", NOT_JSON),
    (b"[1, 2]", NOT_OBJECT),
    (b'{"ts": 1767571200971}', MISSING_FIELD),
    (b'{"service": "x"}', MISSING_FIELD),
    (b'{"service": "", "ts": 1767571200971}', BAD_TYPE),
    (b'{"service": 7, "ts": 1767571200971}', BAD_TYPE),
    (b'{"service": "x", "ts": true}', BAD_TYPE),
    (b'{"service": "x", "ts": 1.5e12}', BAD_TYPE),
    (b'{"service": "x", "ts": 1767571200971, "region": 3}', BAD_TYPE),
    (b'{"service": "x", "ts": "2026-01-05T00:00:00"}', BAD_TIMESTAMP),
    (b'{"service": "x", "ts": "yesterday"}', BAD_TIMESTAMP),
    (b'{"service": "x", "ts": 12}', BAD_TIMESTAMP),
    (b'{"service": "x", "ts": 99999999999999}', BAD_TIMESTAMP),
    (orjson.dumps({"service": "x" * 300, "ts": 1767571200971}), TOO_LARGE),
    (orjson.dumps({"service": "x", "ts": 1767571200971, "pad": "y" * 20000}), TOO_LARGE),
])
def test_invalid_messages_name_their_reason(raw, reason):
    with pytest.raises(InvalidReport) as info:
        decode_report(raw)
    assert info.value.reason == reason
    assert info.value.detail


def test_null_optional_fields_are_absent():
    r = decode_report(b'{"service":"x","ts":1767571200971,"region":null,"reporter":""}')
    assert r[2] is None and r[4] is None
