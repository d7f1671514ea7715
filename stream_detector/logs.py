"""Logging setup: JSON lines for machines, plain text for people at a terminal.

The detector logs once per incident change, rebalance or broker state change,
never per report, so formatting cost does not matter here.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}" for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        )
        line = f"{record.levelname.lower():<7} {record.getMessage()}"
        return f"{line}  {extras}" if extras else line


def configure_logging(fmt: str = "auto", level: str = "INFO") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if use_json else TextFormatter())
    root = logging.getLogger("stream_detector")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # aiokafka logs every failed connection attempt at error level with its own
    # wording; the detector reports broker trouble itself (one sentence at
    # start, a state change in the logs and on /healthz after), so keep it quiet.
    kafka = logging.getLogger("aiokafka")
    kafka.handlers[:] = [handler]
    kafka.setLevel(logging.CRITICAL)
    kafka.propagate = False
