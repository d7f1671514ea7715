"""One settings object for the service: defaults < TOML file < environment < flags.

Every setting declares, beside its default, how its value is read and the
range it may take (`Rule`); the few rules that involve two settings are in
`_check_combinations`. A bad value ends in a `ConfigError` whose message is
one sentence naming the setting, so the command line can print it instead of
a traceback. Values are read strictly: text stays text (a TOML number where a
topic is expected is refused, not turned into one), a number must be a finite
number, a whole number must have no fraction, and true/false is not a number.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import logging
import math
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stream_detector.core.correlate import CorrelationPolicy
from stream_detector.core.detector import DetectorConfig
from stream_detector.core.incidents import IncidentPolicy
from stream_detector.core.models import MODELS
from stream_detector.logs import FORMATS, LEVELS

ENV_PREFIX = "STREAM_DETECTOR_"
DEFAULT_METRICS_PORT = 9108
DEFAULT_BOARD_PORT = 8080
HOUR = 3600.0
DAY = 86400.0

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


# --- Reading one value -------------------------------------------------------
# Environment variables and flags arrive as text; a TOML file gives typed
# values. Each reader takes both and refuses what its setting cannot mean.

def _describe(value: Any) -> str:
    """A value as a TOML author would call it, for "expected X, not Y"."""
    if isinstance(value, bool):
        return f"true/false ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, list):
        return f"a list ({value!r})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"a date or time ({value.isoformat()})"
    return repr(value)


def _expected(setting: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"setting {setting}: expected {what}, not {_describe(value)}")


def _finite(number: float, setting: str, what: str) -> float:
    if not math.isfinite(number):
        raise ConfigError(f"setting {setting}: {number!r} is not a finite {what}")
    return number


def parse_duration(text: str | float | int, setting: str = "duration") -> float:
    """Seconds from `90`, `90s`, `15m`, `1h` or `500ms`; finite and not negative.

    >>> parse_duration("15m"), parse_duration("500ms"), parse_duration(60)
    (900.0, 0.5, 60.0)
    """
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        raise _expected(setting, "a duration like 60s, 15m or 1h", text)
    if isinstance(text, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
        if not match:
            raise ConfigError(f"setting {setting}: {text!r} is not a duration like 60s, 15m or 1h")
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": HOUR, "d": DAY}[match.group(2) or "s"]
        seconds = float(match.group(1)) * unit
    else:
        seconds = float(text)
    _finite(seconds, setting, "duration")
    if seconds < 0:
        raise ConfigError(f"setting {setting}: a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as a user would write it.

    >>> format_duration(3600), format_duration(90), format_duration(1.5), format_duration(0.1)
    ('1h', '90s', '1.5s', '100ms')
    """
    for unit, size in (("d", DAY), ("h", HOUR), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def _text(value: Any, setting: str) -> str:
    if not isinstance(value, str):
        raise _expected(setting, "text", value)
    if not value.strip():
        raise ConfigError(f"setting {setting}: must not be empty")
    return value


def _optional_text(value: Any, setting: str) -> str | None:
    """Text, or unset: an empty value (say, an exported empty variable) means unset."""
    if value is None or value == "":
        return None
    return _text(value, setting)


def _upper_text(value: Any, setting: str) -> str:
    return _text(value, setting).strip().upper()


# A host name or IPv4 address, or an IPv6 address in brackets, then an optional port.
_SERVER = re.compile(r"(?:\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]|[^\s:\[\]/,]+)(?::(\d*))?")


def _servers(value: Any, setting: str) -> str:
    text = _text(value, setting)
    for entry in text.split(","):
        if not entry.strip():
            raise ConfigError(f"setting {setting}: {text!r} is not a list of HOST:PORT")
        found = _SERVER.fullmatch(entry.strip())
        if found is None:
            raise ConfigError(
                f"setting {setting}: {entry.strip()!r} in {text!r} is not HOST:PORT "
                "(an IPv6 address goes in brackets, as in [::1]:9092)"
            )
        port = found.group(1)
        if port is not None and not (port.isdigit() and 0 < int(port) <= 65535):
            raise ConfigError(f"setting {setting}: {port!r} in {text!r} is not a TCP port")
    return text


_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _topic(value: Any, setting: str) -> str:
    """A name the broker accepts for a topic (Kafka's rule), so a bad one fails here, not later."""
    name = _text(value, setting)
    if not _TOPIC.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"setting {setting}: {name[:60]!r}{'...' if len(name) > 60 else ''} is not a Kafka "
            "topic name (1 to 249 of a-z A-Z 0-9 . _ -, and not '.' or '..')"
        )
    return name


def _http_url(value: Any, setting: str) -> str | None:
    url = _optional_text(value, setting)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            example = _URL_EXAMPLES.get(setting, "http://alertmanager:9093")
            raise ConfigError(f"setting {setting}: {url!r} is not a URL like {example}")
    return url


def _grafana_url(value: Any, setting: str) -> str | None:
    """A base URL the board puts in every browser's links, so it carries no
    credentials (every visitor would read them) and no query or fragment (the
    dashboard path is appended to it)."""
    url = _http_url(value, setting)
    if url is not None:
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"setting {setting}: {url!r} holds credentials, which the board"
                              " would show to every visitor; give the URL without them")
        if parts.query or parts.fragment:
            raise ConfigError(f"setting {setting}: {url!r} has a query or fragment; give"
                              " Grafana's base URL, like http://grafana:3000")
    return url


_URL_EXAMPLES = {"grafana_url": "http://grafana:3000"}


def _whole(value: Any, setting: str) -> int:
    if isinstance(value, bool):
        raise _expected(setting, "a whole number", value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, float | str):
        raise ConfigError(f"setting {setting}: {value!r} is not a whole number")
    raise _expected(setting, "a whole number", value)


def _number(value: Any, setting: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _expected(setting, "a number", value)
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"setting {setting}: {value!r} is not a number") from None
    return _finite(number, setting, "number")


def _flag(value: Any, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"setting {setting}: {value!r} is not true or false")
    raise _expected(setting, "true or false", value)


def _names(value: Any, setting: str) -> tuple[str, ...]:
    """A list of names: a TOML list of text, or text separated by commas."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        items = [_text(item, setting).strip() for item in value]
    else:
        raise _expected(setting, "a list of names", value)
    return tuple(items)


def _dependencies(value: Any, setting: str) -> dict[str, tuple[str, ...]]:
    """Service -> providers: a TOML table (`netflix = ["aws"]`), or text like
    `netflix=aws|akamai,hulu=aws` (the environment's form)."""
    if isinstance(value, str):
        table: dict[str, Any] = {}
        for part in (p.strip() for p in value.split(",") if p.strip()):
            name, sep, providers = part.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"setting {setting}: {part!r} is not service=provider|provider")
            table[name.strip()] = [p.strip() for p in providers.split("|") if p.strip()]
        value = table
    if not isinstance(value, dict):
        raise _expected(setting, "a table of service = [providers]", value)
    return {_text(name, setting): _names(providers, f"{setting}.{name}")
            for name, providers in value.items()}


@dataclass(frozen=True)
class Rule:
    """How one setting's value is read, and the values it may take."""

    read: Callable[[Any, str], Any]
    low: float | None = None
    high: float | None = None
    above_low: bool = False
    """The range excludes `low` itself (a score of 0 would open on anything)."""
    choices: tuple[str, ...] = ()
    why: str = ""
    """Said after the range, when the reason for it is not obvious."""

    def check(self, setting: str, value: Any) -> None:
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise ConfigError(
                f"setting {setting}: {value!r} is not one of {', '.join(self.choices)}"
            )
        if self.low is None or self.high is None:
            return
        too_low = value <= self.low if self.above_low else value < self.low
        if too_low or value > self.high:
            show = format_duration if self.read is parse_duration else repr
            bounds = (f"more than {show(self.low)} and at most {show(self.high)}"
                      if self.above_low else f"from {show(self.low)} to {show(self.high)}")
            why = f": {self.why}" if self.why else ""
            raise ConfigError(f"setting {setting}: must be {bounds}, not {show(value)}{why}")


def _setting(default: Any, read: Callable[[Any, str], Any], **rule: Any) -> Any:
    shown = rule.pop("repr", True)
    return field(default=default, repr=shown, metadata={"rule": Rule(read, **rule)})


# Why the bucket must divide an hour: buckets start at multiples of their
# width from the epoch, so only a width that divides 3600 s puts every bucket
# inside one UTC clock hour. The seasonal model files a bucket under the hour
# of day it starts in, and a reporter counts once per service per clock hour;
# a bucket that straddles two hours would be half in the wrong slot and mix
# two reporter hours. This holds for any divisor, including the 15-minute
# slots issue 13 considers; dividing a day would not be enough (2 h buckets).
_BUCKET_WHY = ("each bucket must lie inside one clock hour, for the model's hour-of-day slots "
               "and the one-report-per-hour rule")
_SCORE = {"low": 0.0, "high": 1.0, "above_low": True}


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = _setting("localhost:9092", _servers)
    group_id: str = _setting("stream-detector", _text)
    reports_topic: str = _setting("reports", _topic)
    alerts_topic: str = _setting("alerts", _topic)
    dlq_topic: str = _setting("reports.dlq", _topic)
    state_topic: str = _setting("stream-detector.state", _topic)
    # The core's defaults, in the seconds a user writes.
    bucket: float = _setting(DetectorConfig.bucket_ms / 1000, parse_duration,
                             low=1.0, high=HOUR, why=_BUCKET_WHY)
    # At most one bucket too (`_check_combinations`).
    allowed_lateness: float = _setting(DetectorConfig.lateness_ms / 1000, parse_duration,
                                       low=0.0, high=HOUR)
    # At least 1 s: a smaller one lets the wall clock close buckets of a
    # partition that is only reading a backlog quickly, counting them late.
    idle_timeout: float = _setting(DetectorConfig.idle_timeout_ms / 1000, parse_duration,
                                   low=1.0, high=DAY)
    # Reports from further ahead move the watermark there and make every
    # report after them late; a day is already generous for clock skew.
    max_future: float = _setting(DetectorConfig.max_future_ms / 1000, parse_duration,
                                 low=1.0, high=DAY)
    model: str = _setting(DetectorConfig.model, _text, choices=tuple(sorted(MODELS)))
    regions: bool = _setting(DetectorConfig.regions, _flag)
    open_score: float = _setting(IncidentPolicy.open_score, _number, **_SCORE)
    critical_score: float = _setting(IncidentPolicy.critical_score, _number, **_SCORE)
    min_reports: int = _setting(IncidentPolicy.min_reports, _whole, low=0, high=1_000_000)
    calm_buckets: int = _setting(IncidentPolicy.calm_buckets, _whole, low=1, high=10_000)
    # The sensitivity knob: false incidents per series per 30 days accepted
    # when the model's expectation is right; the paging bound derives from it.
    false_alarm_rate: float = _setting(IncidentPolicy.false_alarm_rate, _number, low=0.0,
                                       high=1000.0, above_low=True)
    metrics_host: str = _setting("0.0.0.0", _text)
    # 0 picks a free port (the tests do).
    metrics_port: int = _setting(DEFAULT_METRICS_PORT, _whole, low=0, high=65535)
    metrics_max_services: int = _setting(200, _whole, low=1, high=100_000)
    alertmanager_url: str | None = _setting(None, _http_url)
    outages_topic: str = _setting("outages", _topic)
    # The status board (`stream-detector board`): where it listens, how long a
    # resolved incident or outage event stays on it (in the alerts' own time),
    # and the Grafana whose stream-detector dashboard each service links to.
    board_host: str = _setting("0.0.0.0", _text)
    board_port: int = _setting(DEFAULT_BOARD_PORT, _whole, low=0, high=65535)
    board_recent: float = _setting(DAY, parse_duration, low=60.0, high=30 * DAY)
    grafana_url: str | None = _setting(None, _grafana_url)
    # The correlate stage (`stream-detector correlate`, or inside `run` with
    # correlate = true): incidents of several services at once become one
    # outage event on outages_topic (core/correlate.py says how it decides).
    correlate: bool = _setting(False, _flag)
    correlate_group_id: str = _setting("stream-detector-correlate", _text)
    correlate_window: int = _setting(CorrelationPolicy.window_buckets, _whole, low=1, high=1440)
    correlate_join: int = _setting(CorrelationPolicy.join_buckets, _whole, low=0, high=10_080)
    correlate_min_services: int = _setting(CorrelationPolicy.min_services, _whole, low=2,
                                           high=100_000)
    correlate_max_chance: float = _setting(CorrelationPolicy.max_chance, _number, **_SCORE)
    correlate_lookback: float = _setting(CorrelationPolicy.rate_lookback_ms / 1000,
                                         parse_duration, low=HOUR, high=30 * DAY)
    correlate_base_rate: float = _setting(CorrelationPolicy.base_onsets_per_hour, _number,
                                          low=0.0, high=1e6, above_low=True)
    providers: tuple[str, ...] = _setting((), _names)
    dependencies: dict = _setting(None, _dependencies)
    log_format: str = _setting("auto", _text, choices=FORMATS)
    log_level: str = _setting("INFO", _upper_text, choices=LEVELS)
    checkpoint_interval: float = _setting(10.0, parse_duration, low=0.1, high=HOUR)
    state_store: str = _setting("kafka", _text, choices=("kafka", "local", "none"))
    state_dir: str = _setting("stream-detector-state", _text)
    shutdown_timeout: float = _setting(10.0, parse_duration, low=1.0, high=600.0)
    # How long `run` keeps trying brokers that do not answer at start-up, so
    # a detector started beside its broker (compose, a pod restart) waits for
    # it; 0 gives up at the first failure. A TLS mismatch is never retried.
    startup_timeout: float = _setting(30.0, parse_duration, low=0.0, high=HOUR)
    # How long an alert, dead letter or snapshot the broker refuses is sent
    # again before the process stops without a checkpoint (a restart then
    # replays it). Long enough to ride out a broker restart or a leader move.
    delivery_timeout: float = _setting(120.0, parse_duration, low=1.0, high=DAY)
    # What a partition whose stored position is outside its log (a broker
    # reset, a re-created topic, retention) does with the state it counted:
    # keep the learned baselines (the new log's reports were never counted),
    # or start again from nothing.
    offset_reset_state: str = _setting("keep", _text, choices=("keep", "discard"))
    security_protocol: str = _setting(
        "PLAINTEXT", _text, choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    ssl_cafile: str | None = _setting(None, _optional_text)
    ssl_certfile: str | None = _setting(None, _optional_text)
    ssl_keyfile: str | None = _setting(None, _optional_text)
    sasl_mechanism: str | None = _setting(
        None, _optional_text, choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    sasl_username: str | None = _setting(None, _optional_text)
    sasl_password: str | None = _setting(None, _optional_text, repr=False)

    def detector_config(self) -> DetectorConfig:
        policy = IncidentPolicy(
            open_score=self.open_score,
            critical_score=self.critical_score,
            min_reports=self.min_reports,
            calm_buckets=self.calm_buckets,
            false_alarm_rate=self.false_alarm_rate,
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

    def correlation_policy(self) -> CorrelationPolicy:
        return CorrelationPolicy(
            bucket_ms=round(self.bucket * 1000),
            window_buckets=self.correlate_window,
            join_buckets=self.correlate_join,
            min_services=self.correlate_min_services,
            max_chance=self.correlate_max_chance,
            rate_lookback_ms=round(self.correlate_lookback * 1000),
            base_onsets_per_hour=self.correlate_base_rate,
            providers=self.providers,
            dependencies=dict(self.dependencies or {}),
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


RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(Settings)}

_SSL_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
_SASL_SETTINGS = ("sasl_mechanism", "sasl_username", "sasl_password")


# --- Rules across settings ---------------------------------------------------

def _check_combinations(s: Settings) -> None:
    if s.bucket != int(s.bucket):
        raise ConfigError(
            f"setting bucket: must be a whole number of seconds, not {format_duration(s.bucket)}"
        )
    if HOUR % s.bucket:
        raise ConfigError(
            f"setting bucket: must divide an hour evenly (e.g. 10s, 30s, 1m, 5m, 15m or 1h), "
            f"not {format_duration(s.bucket)}: {_BUCKET_WHY}"
        )
    if s.allowed_lateness > s.bucket:
        # A bucket is scored once event time passes its end plus the
        # lateness, so the lateness is a delay added to every alert; more
        # than a bucket also keeps several buckets of every series open.
        raise ConfigError(
            f"setting allowed_lateness: must be at most one bucket ({format_duration(s.bucket)}),"
            f" not {format_duration(s.allowed_lateness)}: a bucket is scored only"
            f" allowed_lateness after it ends, so more would hold every alert back by more than"
            f" a bucket"
        )
    for name in ("alerts_topic", "dlq_topic", "state_topic"):
        # The detector would read its own output as reports: dead letters
        # of dead letters without end, alerts and snapshots counted.
        if getattr(s, name) == s.reports_topic:
            raise ConfigError(
                f"setting {name}: must differ from reports_topic ({s.reports_topic!r}), or the "
                "detector would read its own output as reports"
            )
    if s.outages_topic == s.alerts_topic:
        # The board tells the two apart by their topic alone.
        raise ConfigError(
            f"setting outages_topic: must differ from alerts_topic ({s.alerts_topic!r}), or "
            "the board would read alerts as outage events"
        )
    if s.open_score > s.critical_score:
        raise ConfigError(
            f"setting open_score: must be at most critical_score ({s.critical_score!r}), "
            f"not {s.open_score!r}"
        )
    sasl = s.security_protocol.startswith("SASL")
    tls = s.security_protocol in ("SSL", "SASL_SSL")
    for name in _SASL_SETTINGS if not sasl else ():
        if getattr(s, name) is not None:
            raise ConfigError(
                f"setting {name}: is set but security_protocol is {s.security_protocol}, which "
                f"does not use SASL; use SASL_PLAINTEXT or SASL_SSL, or unset {name}"
            )
    for name in _SSL_FILES if not tls else ():
        if getattr(s, name) is not None:
            raise ConfigError(
                f"setting {name}: is set but security_protocol is {s.security_protocol}, which "
                f"does not use TLS; use SSL or SASL_SSL, or unset {name}"
            )
    if sasl:
        if s.sasl_mechanism is None:
            raise ConfigError(
                f"setting sasl_mechanism: {s.security_protocol} needs it "
                f"(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )
        if not s.sasl_username or not s.sasl_password:
            raise ConfigError("setting sasl_username: SASL needs sasl_username and sasl_password")
    if tls:
        _check_tls_files(s)


class _EncryptedKey(Exception):
    """OpenSSL asked for the key's password, which no setting gives."""


def _refuse_password() -> str:
    raise _EncryptedKey


def _check_tls_files(s: Settings) -> None:
    """Load the TLS files as the Kafka clients will, so a bad one is named now.

    `kafka_client_options` builds the same context (aiokafka's
    `create_ssl_context`: the default client context, the CA file, then the
    certificate chain); here each file is loaded on its own step so the error
    names the one at fault. Without this a file that is not PEM raised an
    `ssl.SSLError` traceback at the first connection, and an encrypted key
    made OpenSSL prompt for a password on the terminal.
    """
    for name in _SSL_FILES:
        path = getattr(s, name)
        if path is not None and not Path(path).is_file():
            problem = "is not a file" if Path(path).exists() else "does not exist"
            raise ConfigError(f"setting {name}: {path} {problem}")
    if s.ssl_keyfile is not None and s.ssl_certfile is None:
        raise ConfigError("setting ssl_keyfile: needs ssl_certfile, the certificate it is the "
                          "key of")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if s.ssl_cafile is not None:
        _load_certificates("ssl_cafile", s.ssl_cafile, context)
    if s.ssl_certfile is None:
        return
    # Read as a CA bundle on a scratch context first: that tells a certificate
    # file that holds no certificate from one whose key is at fault.
    _load_certificates("ssl_certfile", s.ssl_certfile,
                       ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    key_setting, key_path = (("ssl_keyfile", s.ssl_keyfile) if s.ssl_keyfile is not None
                             else ("ssl_certfile", s.ssl_certfile))
    try:
        context.load_cert_chain(s.ssl_certfile, s.ssl_keyfile, _refuse_password)
    except _EncryptedKey:
        raise ConfigError(
            f"setting {key_setting}: the private key in {key_path} is encrypted, and no setting "
            f"gives its password; give an unencrypted key"
        ) from None
    except OSError as exc:  # ssl.SSLError included
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"setting {key_setting}: the private key in {key_path} is not the key of the "
                f"certificate in ssl_certfile {s.ssl_certfile}"
            ) from None
        hint = "; set ssl_keyfile to the client key" if s.ssl_keyfile is None else ""
        raise ConfigError(
            f"setting {key_setting}: {key_path} holds no PEM private key{_ssl_reason(exc)}{hint}"
        ) from None


def _load_certificates(setting: str, path: str, context: ssl.SSLContext) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except OSError as exc:  # ssl.SSLError included
        if isinstance(exc, ssl.SSLError):
            raise ConfigError(
                f"setting {setting}: {path} holds no PEM certificate{_ssl_reason(exc)}"
            ) from None
        raise ConfigError(f"setting {setting}: cannot read {path} ({exc.strerror})") from None


def _ssl_reason(exc: OSError) -> str:
    """OpenSSL's reason code, in parentheses, when it gives one (not for "PEM lib")."""
    reason = getattr(exc, "reason", None)
    return f" ({reason})" if reason else ""


# --- Sources ------------------------------------------------------------------

def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _closest(name: str) -> str | None:
    matches = difflib.get_close_matches(name.lower(), RULES, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_env_vars(environ: Mapping[str, str]) -> list[str]:
    """A warning per `STREAM_DETECTOR_*` variable that is no setting; a typo is silent otherwise."""
    known = {env_var(name) for name in RULES}
    warnings = []
    for var in sorted(v for v in environ if v.startswith(ENV_PREFIX) and v not in known):
        closest = _closest(var[len(ENV_PREFIX):])
        hint = f"; did you mean {env_var(closest)} (setting {closest})?" if closest else ""
        warnings.append(f"environment variable {var} is not a setting and is ignored{hint}")
    return warnings


def load_settings(
    flags: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Merge the sources in order of precedence and validate the result.

    `warn` receives each warning (an unknown `STREAM_DETECTOR_*` variable);
    by default it is logged.
    """
    environ = os.environ if environ is None else environ
    warn = log.warning if warn is None else warn
    merged: dict[str, Any] = {}

    if config_file is not None:
        merged.update(_read_toml(Path(config_file)))

    if "KAFKA_BOOTSTRAP_SERVERS" in environ:
        merged["bootstrap_servers"] = environ["KAFKA_BOOTSTRAP_SERVERS"]
    for name in RULES:
        if env_var(name) in environ:
            merged[name] = environ[env_var(name)]
    for message in unknown_env_vars(environ):
        warn(message)

    for name, value in (flags or {}).items():
        if value is not None:
            merged[name] = value

    read = {name: RULES[name].read(value, name) for name, value in merged.items()}
    settings = dataclasses.replace(Settings(), **read)
    for name, rule in RULES.items():
        rule.check(name, getattr(settings, name))
    _check_combinations(settings)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"setting config: file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"setting config: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"setting config: {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"setting config: {path} is not valid TOML ({exc})") from None
    # Accept both a flat file and one with a [stream_detector] table.
    if "stream_detector" in doc:
        table = doc.pop("stream_detector")
        if not isinstance(table, dict):
            raise ConfigError(f"setting config: stream_detector in {path} must be a table")
        if doc:
            raise ConfigError(
                f"setting config: {path} has {', '.join(sorted(doc))} outside its "
                f"[stream_detector] table, where it would be ignored"
            )
        doc = table
    unknown = sorted(set(doc) - set(RULES))
    if unknown:
        described = []
        for name in unknown:
            closest = _closest(name)
            described.append(f"{name} (did you mean {closest}?)" if closest else name)
        raise ConfigError(
            f"setting config: {path} has unknown setting(s) {', '.join(described)}"
        )
    return doc
