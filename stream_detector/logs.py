"""Log output of the service: JSON lines for machines, plain text for people.

A container's stderr goes to a log collector, which wants one JSON object per
line; a person at a terminal wants to read it. `auto` picks by whether stderr
is a terminal. Fields passed with ``extra={...}`` become JSON fields (or
``key=value`` pairs in text), so a log line can be filtered by partition or
service without parsing its message.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson

from stream_detector.core.times import iso_millis

FORMATS = ("auto", "json", "text")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName"}


def _extra_fields(record: logging.LogRecord) -> dict:
    return {
        k: v for k, v in record.__dict__.items()
        if k not in _RECORD_ATTRIBUTES and not k.startswith("_")
    }


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, then the `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": iso_millis(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            # The fixed fields win: an `extra` named like one must not hide it.
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that is not JSON (a path, an exception) still logs.
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """`ts level logger: msg key=value ...`, readable in a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        text = f"{iso_millis(record.created)} {level:<7} {record.name}: {record.getMessage()}"
        extras = _extra_fields(record)
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def configure_logging(
    fmt: str = "auto", level: str = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Send all logging (ours and the libraries') to `stream`, default stderr.

    Calling it again replaces the handler it installed before, so tests and a
    re-configuring CLI never get each line twice. Returns the handler.
    """
    if fmt not in FORMATS:
        raise ValueError(f"setting log_format: {fmt!r} is not one of {', '.join(FORMATS)}")
    level_name = str(level).upper()
    if level_name not in LEVELS:
        raise ValueError(f"setting log_level: {level!r} is not one of {', '.join(LEVELS)}")
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "text" if is_terminal(stream) else "json"

    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("stream_detector")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "stream_detector"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name)
    # aiokafka logs every failed connection attempt at error level in its own
    # words; the detector reports broker trouble itself (one sentence at start,
    # a state change in the log and on /healthz after), so aiokafka only speaks
    # when someone asked for DEBUG.
    logging.getLogger("aiokafka").setLevel(
        logging.DEBUG if level_name == "DEBUG" else logging.CRITICAL
    )
    return handler


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
