"""Log output: JSON lines off a terminal, readable text on one."""

from __future__ import annotations

import io
import logging
import re

import orjson
import pytest

from stream_detector.logs import configure_logging


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging():
    """configure_logging changes the root logger; put it back for the other tests."""
    root = logging.getLogger()
    kafka = logging.getLogger("aiokafka")
    saved = (root.handlers[:], root.level, kafka.level)
    yield
    root.handlers[:], root.level, kafka.level = saved[0], saved[1], saved[2]


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_fixed_fields_and_extras():
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    logging.getLogger("stream_detector").info(
        "partitions assigned: %d", 2, extra={"partitions": [0, 3], "topic": "reports"}
    )
    [line] = lines(out)
    record = orjson.loads(line)
    assert record == {
        "ts": record["ts"], "level": "info", "logger": "stream_detector",
        "msg": "partitions assigned: 2", "partitions": [0, 3], "topic": "reports",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])


def test_auto_writes_json_when_not_a_terminal():
    out = io.StringIO()
    configure_logging("auto", stream=out)
    logging.getLogger("stream_detector.test").warning("hello")
    assert orjson.loads(lines(out)[0])["msg"] == "hello"


def test_auto_writes_text_on_a_terminal():
    out = FakeTerminal()
    configure_logging("auto", stream=out)
    logging.getLogger("stream_detector").warning("broker lost", extra={"partition": 4})
    [line] = lines(out)
    assert not line.startswith("{")
    assert re.fullmatch(r"\S+Z warning +stream_detector: broker lost partition=4", line)


def test_level_filters_and_exceptions_are_kept():
    out = io.StringIO()
    configure_logging("json", "WARNING", stream=out)
    log = logging.getLogger("stream_detector")
    log.info("not shown")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra={"error": RuntimeError("kept as text")})
    [line] = lines(out)
    record = orjson.loads(line)
    assert record["level"] == "error" and record["msg"] == "failed"
    assert "RuntimeError: boom" in record["exc"]
    assert record["error"] == "kept as text"


def test_an_extra_cannot_replace_a_fixed_field():
    out = io.StringIO()
    configure_logging("json", stream=out)
    logging.getLogger("stream_detector").info(
        "real", extra={"ts": "fake", "level": "fake", "logger": "fake"}
    )
    record = orjson.loads(lines(out)[0])
    assert record["msg"] == "real"
    assert "fake" not in (record["ts"], record["level"], record["logger"])


def test_configuring_twice_does_not_duplicate_lines():
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", stream=first)
    configure_logging("text", stream=second)
    logging.getLogger("stream_detector").warning("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_aiokafka_is_quiet_unless_debugging():
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    logging.getLogger("aiokafka.conn").error("Unable connect to node")
    assert out.getvalue() == ""
    configure_logging("json", "DEBUG", stream=out)
    logging.getLogger("aiokafka.conn").error("Unable connect to node")
    assert "Unable connect" in out.getvalue()


@pytest.mark.parametrize("fmt, level, setting", [("yaml", "INFO", "log_format"),
                                                  ("json", "LOUD", "log_level")])
def test_bad_settings_name_themselves(fmt, level, setting):
    with pytest.raises(ValueError, match=f"setting {setting}"):
        configure_logging(fmt, level, stream=io.StringIO())
