"""One settings object for the service: defaults < TOML file < environment < flags.

Every value a user can get wrong is checked here, and a bad one ends in a
`ConfigError` whose message names the setting, so the command line can print
one sentence instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from stream_detector.core.detector import DetectorConfig
from stream_detector.core.incidents import IncidentPolicy
from stream_detector.core.models import MODELS

ENV_PREFIX = "STREAM_DETECTOR_"
DEFAULT_METRICS_PORT = 9108


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


def parse_duration(text: str | float | int, setting: str = "duration") -> float:
    """Seconds from `90`, `90s`, `15m`, `1h` or `500ms`.

    >>> parse_duration("15m"), parse_duration("500ms"), parse_duration(60)
    (900.0, 0.5, 60.0)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(text))
        if not match:
            raise ConfigError(f"setting {setting}: {text!r} is not a duration like 60s, 15m or 1h")
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
        seconds = float(match.group(1)) * unit
    if seconds < 0:
        raise ConfigError(f"setting {setting}: a duration cannot be negative")
    return seconds


def _bool(text: str | bool, setting: str) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"setting {setting}: {text!r} is not true or false")


def _int(text: str | int, setting: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {setting}: {text!r} is not a whole number") from None


def _float(text: str | float, setting: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {setting}: {text!r} is not a number") from None


def _opt_str(text: Any, setting: str) -> str | None:
    return str(text) if text not in (None, "") else None


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "stream-detector"
    reports_topic: str = "reports"
    alerts_topic: str = "alerts"
    dlq_topic: str = "reports.dlq"
    state_topic: str = "stream-detector.state"
    # The core's defaults, in the seconds a user writes.
    bucket: float = DetectorConfig.bucket_ms / 1000
    allowed_lateness: float = DetectorConfig.lateness_ms / 1000
    idle_timeout: float = DetectorConfig.idle_timeout_ms / 1000
    max_future: float = DetectorConfig.max_future_ms / 1000
    model: str = DetectorConfig.model
    regions: bool = DetectorConfig.regions
    open_score: float = IncidentPolicy.open_score
    critical_score: float = IncidentPolicy.critical_score
    min_reports: int = IncidentPolicy.min_reports
    calm_buckets: int = IncidentPolicy.calm_buckets
    metrics_host: str = "0.0.0.0"
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_max_services: int = 200
    alertmanager_url: str | None = None
    log_format: str = "auto"
    log_level: str = "INFO"
    checkpoint_interval: float = 10.0
    state_store: str = "kafka"
    state_dir: str = "stream-detector-state"
    shutdown_timeout: float = 10.0
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def detector_config(self) -> DetectorConfig:
        policy = IncidentPolicy(
            open_score=self.open_score,
            critical_score=self.critical_score,
            min_reports=self.min_reports,
            calm_buckets=self.calm_buckets,
        )
        return DetectorConfig(
            bucket_ms=int(self.bucket * 1000),
            lateness_ms=int(self.allowed_lateness * 1000),
            idle_timeout_ms=int(self.idle_timeout * 1000),
            max_future_ms=int(self.max_future * 1000),
            model=self.model,
            regions=self.regions,
            policy=policy,
        )

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection security, passed through to every aiokafka client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        if self.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


_DURATIONS = {
    "bucket", "allowed_lateness", "idle_timeout", "max_future", "checkpoint_interval",
    "shutdown_timeout",
}


def _coerce(name: str, value: Any) -> Any:
    if name in _DURATIONS:
        return parse_duration(value, name)
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if kind == "int":
        return _int(value, name)
    if kind == "float":
        return _float(value, name)
    if kind == "bool":
        return _bool(value, name)
    if kind == "str | None":
        return _opt_str(value, name)
    return str(value)


def _validate(s: Settings) -> None:
    if s.bucket < 1:
        raise ConfigError("setting bucket: must be at least 1s")
    if s.bucket != int(s.bucket):
        raise ConfigError("setting bucket: must be a whole number of seconds")
    if s.model not in MODELS:
        raise ConfigError(f"setting model: {s.model!r} is not one of {', '.join(sorted(MODELS))}")
    if not 0 <= s.metrics_port <= 65535:
        raise ConfigError(f"setting metrics_port: {s.metrics_port} is not a TCP port")
    if not 0 < s.open_score <= s.critical_score <= 1:
        raise ConfigError("setting open_score: needs 0 < open_score <= critical_score <= 1")
    if s.alertmanager_url and not s.alertmanager_url.startswith(("http://", "https://")):
        raise ConfigError("setting alertmanager_url: must start with http:// or https://")
    if s.state_store not in ("kafka", "local", "none"):
        raise ConfigError("setting state_store: must be kafka, local or none")
    if s.log_format not in ("auto", "json", "text"):
        raise ConfigError("setting log_format: must be auto, json or text")
    if s.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(
            "setting security_protocol: must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
        )
    if s.security_protocol.startswith("SASL"):
        if s.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ConfigError(
                "setting sasl_mechanism: must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            )
        if not s.sasl_username or not s.sasl_password:
            raise ConfigError("setting sasl_username: SASL needs sasl_username and sasl_password")
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(s, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"setting {name}: file {path} does not exist")
    for name in ("bootstrap_servers", "group_id", "reports_topic", "alerts_topic", "dlq_topic"):
        if not getattr(s, name):
            raise ConfigError(f"setting {name}: must not be empty")


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def load_settings(
    flags: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the sources in order of precedence and validate the result."""
    environ = os.environ if environ is None else environ
    names = {f.name for f in fields(Settings)}
    merged: dict[str, Any] = {}

    if config_file is not None:
        merged.update(_read_toml(Path(config_file), names))

    if "KAFKA_BOOTSTRAP_SERVERS" in environ:
        merged["bootstrap_servers"] = environ["KAFKA_BOOTSTRAP_SERVERS"]
    for name in names:
        if env_var(name) in environ:
            merged[name] = environ[env_var(name)]

    for name, value in (flags or {}).items():
        if value is not None:
            merged[name] = value

    settings = dataclasses.replace(Settings(), **{k: _coerce(k, v) for k, v in merged.items()})
    _validate(settings)
    return settings


def _read_toml(path: Path, names: set[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"setting config: file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"setting config: {path} is not valid TOML ({exc})") from None
    # Accept both a flat file and one with a [stream_detector] table.
    doc = doc.get("stream_detector", doc)
    unknown = sorted(set(doc) - names)
    if unknown:
        raise ConfigError(f"setting config: {path} has unknown setting(s) {', '.join(unknown)}")
    return doc
