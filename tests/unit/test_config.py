"""Settings: every bad value is refused with one sentence naming its setting.

The command line's side (exit status 2, no traceback, the warning on stderr)
is tested in tests/integration/test_cli.py; here `load_settings` is called
directly, so the whole matrix of types and ranges stays fast.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from stream_detector.config import RULES, ConfigError, Settings, load_settings


def from_toml(tmp_path: Path, text: str, environ: dict | None = None, **flags) -> Settings:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return load_settings(flags, path, environ={} if environ is None else environ)


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        from_toml(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


# What the hostile probe of issue 12 (item 5) found: a traceback, an error
# not naming the setting, or silently accepted. tests/integration/test_cli.py
# runs these through the command too.
PROBE = [
    ("bucket = inf", "bucket", "inf is not a finite duration"),
    ("bucket = nan", "bucket", "nan is not a finite duration"),
    ('bucket = "7s"', "bucket", "must divide an hour evenly"),
    ('bucket = "61s"', "bucket", "not 61s: each bucket must lie inside one clock hour"),
    ('allowed_lateness = "10m"', "allowed_lateness", "at most one bucket (1m), not 10m"),
    ("metrics_max_services = 0", "metrics_max_services", "from 1 to 100000, not 0"),
    ("metrics_max_services = -5", "metrics_max_services", "not -5"),
    ("metrics_port = 9108.7", "metrics_port", "9108.7 is not a whole number"),
    ("group_id = [1, 2]", "group_id", "expected text, not a list ([1, 2])"),
    ("checkpoint_interval = 0", "checkpoint_interval", "from 100ms to 1h, not 0s"),
    ("calm_buckets = 0", "calm_buckets", "from 1 to 10000, not 0"),
    ("min_reports = -1", "min_reports", "from 0 to 1000000, not -1"),
    ('sasl_mechanism = "PLAIN"', "sasl_mechanism", "security_protocol is PLAINTEXT"),
]


@pytest.mark.parametrize("toml, setting, says", PROBE + [
    # Durations: finite, whole seconds for the bucket, within range.
    ("bucket = -inf", "bucket", "not a finite duration"),
    ('bucket = "2h"', "bucket", "must be from 1s to 1h, not 2h"),
    ("bucket = 1.5", "bucket", "whole number of seconds, not 1.5s"),
    ('bucket = "500ms"', "bucket", "must be from 1s to 1h, not 500ms"),
    ("bucket = true", "bucket", "expected a duration like 60s, 15m or 1h, not true/false"),
    ("bucket = [60]", "bucket", "not a list ([60])"),
    ("bucket = 1979-05-27", "bucket", "not a date or time (1979-05-27)"),
    ("allowed_lateness = -1", "allowed_lateness", "cannot be negative"),
    ('idle_timeout = "0s"', "idle_timeout", "from 1s to 1d, not 0s"),
    ('max_future = "99999999999999999999d"', "max_future", "from 1s to 1d"),
    ('shutdown_timeout = "1d"', "shutdown_timeout", "from 1s to 10m, not 1d"),
    # Whole numbers: no fraction, no true/false, within range.
    ("metrics_port = 70000", "metrics_port", "from 0 to 65535, not 70000"),
    ("metrics_port = true", "metrics_port", "expected a whole number, not true/false"),
    ('metrics_port = "http"', "metrics_port", "'http' is not a whole number"),
    # Numbers.
    ("open_score = true", "open_score", "expected a number, not true/false"),
    ("open_score = nan", "open_score", "nan is not a finite number"),
    ("open_score = 0", "open_score", "more than 0.0 and at most 1.0, not 0.0"),
    ("critical_score = 1.5", "critical_score", "not 1.5"),
    ("open_score = 0.9999999", "open_score", "at most critical_score (0.99999)"),
    # The detector's outputs are not its input.
    ('dlq_topic = "reports"', "dlq_topic", "must differ from reports_topic ('reports')"),
    ('alerts_topic = "reports"', "alerts_topic", "must differ from reports_topic"),
    ('state_topic = "reports"', "state_topic", "must differ from reports_topic"),
    ('outages_topic = "alerts"', "outages_topic", "must differ from alerts_topic ('alerts')"),
    # Text stays text.
    ("reports_topic = 7", "reports_topic", "expected text, not a number (7)"),
    ('alerts_topic = ""', "alerts_topic", "must not be empty"),
    ("ssl_cafile = 3", "ssl_cafile", "expected text"),
    ("regions = 1", "regions", "expected true or false, not a number (1)"),
    ('regions = "maybe"', "regions", "'maybe' is not true or false"),
    ('model = "crystal-ball"', "model", "is not one of"),
    ('log_level = "loud"', "log_level", "is not one of DEBUG"),
    ('log_format = "xml"', "log_format", "is not one of"),
    ('state_store = "s3"', "state_store", "is not one of"),
    ('bootstrap_servers = "broker:99999"', "bootstrap_servers", "is not a TCP port"),
    ('bootstrap_servers = "a:1,,b:2"', "bootstrap_servers", "not a list of HOST:PORT"),
    ('bootstrap_servers = "[::1"', "bootstrap_servers", "'[::1' in '[::1' is not HOST:PORT"),
    ('bootstrap_servers = "a:1,::1:9092"', "bootstrap_servers", "IPv6 address goes in brackets"),
    ('bootstrap_servers = "[::1]:0"', "bootstrap_servers", "'0' in '[::1]:0' is not a TCP port"),
    # Topic names as Kafka takes them.
    ('reports_topic = "bad topic/name"', "reports_topic", "is not a Kafka topic name"),
    (f'alerts_topic = "{"a" * 250}"', "alerts_topic", "1 to 249 of"),
    ('dlq_topic = ".."', "dlq_topic", "not '.' or '..'"),
    ('state_topic = "snap\u00e9"', "state_topic", "is not a Kafka topic name"),
    ('outages_topic = "o:1"', "outages_topic", "is not a Kafka topic name"),
    ('alertmanager_url = "alertmanager:9093"', "alertmanager_url", "is not a URL"),
    ('alertmanager_url = "http://"', "alertmanager_url", "is not a URL"),
    # The board shows grafana_url to every browser and appends the dashboard's path.
    ('grafana_url = "http://admin:secret@grafana:3000"', "grafana_url", "holds credentials"),
    ('grafana_url = "http://grafana:3000/?orgId=1"', "grafana_url", "has a query or fragment"),
    ('grafana_url = "http://grafana:3000/#top"', "grafana_url", "has a query or fragment"),
    # Settings that only mean something together.
    ('sasl_username = "u"', "sasl_username", "does not use SASL"),
    ('security_protocol = "SASL_SSL"', "sasl_mechanism", "SASL_SSL needs it"),
    ('security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"', "sasl_username",
     "needs sasl_username and sasl_password"),
    ('security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "GSSAPI"', "sasl_mechanism",
     "is not one of PLAIN"),
    ('security_protocol = "ssl"', "security_protocol", "is not one of PLAINTEXT"),
    ('ssl_cafile = "/etc/hostname"', "ssl_cafile", "does not use TLS"),
])
def test_a_bad_value_is_one_sentence_naming_its_setting(tmp_path, toml, setting, says):
    message = refused(tmp_path, toml)
    assert message.startswith(f"setting {setting}: "), message
    assert says in message, message


def test_every_setting_has_a_rule_and_every_number_a_range():
    numeric = {"int", "float"}
    for name, rule in RULES.items():
        kind = Settings.__dataclass_fields__[name].type
        if kind in numeric:
            assert rule.low is not None and rule.high is not None, name
            assert rule.low <= getattr(Settings(), name) <= rule.high, name


def test_the_defaults_pass_their_own_rules():
    assert load_settings(environ={}) == Settings()


@pytest.mark.parametrize("bucket, seconds", [
    ('"1s"', 1), ('"15s"', 15), ("60", 60), ('"5m"', 300), ('"15m"', 900), ('"1h"', 3600),
    ("900.0", 900),
])
def test_buckets_that_divide_an_hour_are_accepted(tmp_path, bucket, seconds):
    assert from_toml(tmp_path, f"bucket = {bucket}\nallowed_lateness = 0").bucket == seconds


def test_lateness_of_exactly_one_bucket_is_accepted(tmp_path):
    settings = from_toml(tmp_path, 'bucket = "15m"\nallowed_lateness = "15m"')
    assert settings.detector_config().lateness_ms == settings.detector_config().bucket_ms


def test_values_are_read_strictly_but_not_pedantically(tmp_path):
    settings = from_toml(
        tmp_path,
        'metrics_port = 9108.0\nlog_level = "debug"\nregions = false\n'
        'open_score = 0.99\nmin_reports = 0\nalertmanager_url = "https://am:9093"\n'
        'bootstrap_servers = "a:9092, b:9093,[::1]:9094"',
    )
    assert settings.metrics_port == 9108 and isinstance(settings.metrics_port, int)
    assert settings.log_level == "DEBUG"
    assert settings.regions is False and settings.open_score == 0.99
    assert settings.min_reports == 0


def test_text_from_the_environment_is_read_like_toml_values():
    environ = {"STREAM_DETECTOR_METRICS_PORT": " 9200 ", "STREAM_DETECTOR_REGIONS": "off",
               "STREAM_DETECTOR_BUCKET": "5m", "STREAM_DETECTOR_ALERTMANAGER_URL": ""}
    settings = load_settings(environ=environ)
    assert (settings.metrics_port, settings.regions, settings.bucket) == (9200, False, 300)
    assert settings.alertmanager_url is None  # an exported empty variable unsets


def test_precedence_is_defaults_toml_environment_flags(tmp_path):
    toml = 'bucket = "5m"\ngroup_id = "from-toml"\nmodel = "ewma"'
    environ = {"STREAM_DETECTOR_GROUP_ID": "from-env", "STREAM_DETECTOR_BUCKET": "15m"}
    settings = from_toml(tmp_path, toml, environ, bucket="30m")
    assert (settings.bucket, settings.group_id, settings.model) == (1800, "from-env", "ewma")
    assert settings.reports_topic == Settings().reports_topic


def test_a_bad_environment_value_names_the_setting():
    with pytest.raises(ConfigError, match=r"^setting calm_buckets: must be from 1"):
        load_settings(environ={"STREAM_DETECTOR_CALM_BUCKETS": "0"})
    with pytest.raises(ConfigError, match=r"^setting bucket: 'inf' is not a duration"):
        load_settings(environ={"STREAM_DETECTOR_BUCKET": "inf"})


def test_a_table_and_loose_keys_together_are_refused(tmp_path):
    message = refused(tmp_path, 'bucket = "5m"\n[stream_detector]\nmodel = "ewma"\n')
    assert message.startswith("setting config: ") and "bucket outside" in message
    assert refused(tmp_path, "stream_detector = 3").endswith("must be a table")
    table = from_toml(tmp_path, '[stream_detector]\nbucket = "5m"\n')
    assert table.bucket == 300


def test_an_unknown_toml_key_names_the_closest_setting(tmp_path):
    message = refused(tmp_path, 'bukcet = "5m"\nzzz = 1')
    assert message.startswith("setting config: ")
    assert "bukcet (did you mean bucket?)" in message and "zzz" in message


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'group_id = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"^setting config: .*latin1.toml is not UTF-8"):
        load_settings(config_file=path, environ={})


def test_a_misspelled_environment_variable_is_a_warning_naming_the_closest_setting():
    warnings: list[str] = []
    environ = {"STREAM_DETECTOR_BUCKIT": "5m", "STREAM_DETECTOR_MODEL": "ewma",
               "STREAM_DETECTOR_QQQ": "1", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"}
    settings = load_settings(environ=environ, warn=warnings.append)
    assert settings.bucket == Settings().bucket  # ignored, not guessed
    assert warnings == [
        "environment variable STREAM_DETECTOR_BUCKIT is not a setting and is ignored; "
        "did you mean STREAM_DETECTOR_BUCKET (setting bucket)?",
        "environment variable STREAM_DETECTOR_QQQ is not a setting and is ignored",
    ]


def test_the_warning_is_logged_when_no_one_collects_it(caplog):
    load_settings(environ={"STREAM_DETECTOR_LOG_LEVL": "DEBUG"})
    assert "did you mean STREAM_DETECTOR_LOG_LEVEL" in caplog.text


# --- TLS files: loaded at validation time, the one at fault named ---------------

def tls(tmp_path: Path, text: str) -> str:
    return refused(tmp_path, 'security_protocol = "SSL"\n' + text)


def test_a_tls_file_that_is_not_pem_names_its_setting(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    message = tls(tmp_path, f'ssl_cafile = "{junk}"')
    assert message == f"setting ssl_cafile: {junk} holds no PEM certificate " \
                      "(NO_CERTIFICATE_OR_CRL_FOUND)"
    message = tls(tmp_path, f'ssl_certfile = "{junk}"')
    assert message.startswith(f"setting ssl_certfile: {junk} holds no PEM certificate")


def test_a_missing_tls_file_or_a_directory_names_its_setting(tmp_path):
    assert tls(tmp_path, f'ssl_cafile = "{tmp_path}/none.pem"').startswith(
        f"setting ssl_cafile: {tmp_path}/none.pem does not exist")
    assert tls(tmp_path, f'ssl_certfile = "{tmp_path}"').endswith("is not a file")


@pytest.fixture(scope="module")
def pems(tmp_path_factory) -> dict[str, Path]:
    """Two self-signed certificates with their keys, and the first key encrypted."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("pems")
    files: dict[str, Path] = {}
    now = datetime.datetime.now(datetime.UTC)
    for label in ("a", "b"):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        files[f"{label}.crt"] = folder / f"{label}.crt"
        files[f"{label}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{label}.key"] = folder / f"{label}.key"
        files[f"{label}.key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        if label == "a":
            files["a.enc"] = folder / "a.enc"
            files["a.enc"].write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret")))
    return files


def test_a_client_certificate_and_its_key_are_checked_together(tmp_path, pems):
    cert, key = pems["a.crt"], pems["a.key"]
    settings = from_toml(tmp_path, f'security_protocol = "SSL"\nssl_cafile = "{pems["b.crt"]}"\n'
                                   f'ssl_certfile = "{cert}"\nssl_keyfile = "{key}"')
    assert settings.kafka_client_options()["ssl_context"] is not None

    mismatch = tls(tmp_path, f'ssl_certfile = "{cert}"\nssl_keyfile = "{pems["b.key"]}"')
    assert mismatch.startswith("setting ssl_keyfile: ") and "is not the key of" in mismatch
    encrypted = tls(tmp_path, f'ssl_certfile = "{cert}"\nssl_keyfile = "{pems["a.enc"]}"')
    assert encrypted.startswith("setting ssl_keyfile: ") and "is encrypted" in encrypted
    no_key = tls(tmp_path, f'ssl_certfile = "{cert}"')
    assert no_key.startswith("setting ssl_certfile: ") and "set ssl_keyfile" in no_key
    not_a_key = tls(tmp_path, f'ssl_certfile = "{cert}"\nssl_keyfile = "{pems["b.crt"]}"')
    assert not_a_key.startswith("setting ssl_keyfile: ") and "holds no PEM private key" in not_a_key
    key_alone = tls(tmp_path, f'ssl_keyfile = "{key}"')
    assert key_alone.startswith("setting ssl_keyfile: needs ssl_certfile")


def test_names_kafka_takes_are_accepted(tmp_path):
    longest = "t" * 249
    settings = from_toml(
        tmp_path,
        f'reports_topic = "in.reports_v-2"\nalerts_topic = "{longest}"\n'
        'bootstrap_servers = "broker-1.example,[fe80::1]:9092,[::1],10.0.0.1:9093"',
    )
    assert (settings.reports_topic, settings.alerts_topic) == ("in.reports_v-2", longest)
