"""The command line as a user meets it: clean errors, clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest

from stream_detector.embedded import free_port
from tests.unit.test_config import PROBE

pytestmark = pytest.mark.integration


def stream_detector(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_DETECTOR_")}
    environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    environ.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "stream_detector", *args], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def one_sentence_error(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The one error line of a failed command, as `stream-detector: error: ...`.

    Under JSON logs (`run` with log_format auto, as here where stderr is a
    pipe) it is a JSON line of level error from the command line; other
    JSON log lines may come before it. Otherwise it is the one plain line.
    """
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    plain = [line for line in lines if not line.startswith("{")]
    errors = [entry for entry in map(orjson.loads, (x for x in lines if x.startswith("{")))
              if entry["logger"] == "stream_detector.cli" and entry["level"] == "error"]
    assert len(plain) + len(errors) == 1, err
    if errors:
        assert "\n" not in errors[0]["msg"]
        return f"stream-detector: error: {errors[0]['msg']}"
    assert plain[0].startswith("stream-detector: error: ")
    return plain[0]


@pytest.mark.parametrize("args, env, setting", [
    (["--bucket", "5x"], {}, "bucket"),
    (["--metrics-port", "70000"], {}, "metrics_port"),
    ([], {"STREAM_DETECTOR_MODEL": "crystal-ball"}, "model"),
    ([], {"STREAM_DETECTOR_SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_mechanism"),
    (["--config", "/nonexistent/settings.toml"], {}, "config"),
    # Found by a red team: a DLQ read back as reports, and a state_dir that
    # cannot be a directory (a traceback before).
    ([], {"STREAM_DETECTOR_DLQ_TOPIC": "reports"}, "dlq_topic"),
    (["--metrics-port", "0"],
     {"STREAM_DETECTOR_STATE_STORE": "local", "STREAM_DETECTOR_STATE_DIR": "/proc/nope"},
     "state_dir"),
])
def test_bad_setting_ends_in_one_sentence_naming_it(args, env, setting):
    line = one_sentence_error(stream_detector("run", *args, env=env))
    assert f"setting {setting}" in line


# The hostile probe of issue 12 (item 5), and two of the strict types besides.
@pytest.mark.parametrize("toml, setting, says", PROBE + [
    ("reports_topic = 7", "reports_topic", "expected text, not a number"),
    ("open_score = true", "open_score", "expected a number, not true/false"),
])
def test_nonsense_in_the_config_file_ends_in_one_sentence_naming_it(tmp_path, toml, setting,
                                                                     says):
    config = tmp_path / "settings.toml"
    config.write_text(toml + "\n")
    line = one_sentence_error(stream_detector("run", "--config", str(config)))
    assert f"setting {setting}: " in line and says in line


@pytest.mark.parametrize("setting", ["ssl_cafile", "ssl_certfile"])
def test_a_tls_file_that_is_not_pem_ends_in_one_sentence_naming_it(tmp_path, setting):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    line = one_sentence_error(stream_detector(
        "run", "--security-protocol", "SSL", f"--{setting.replace('_', '-')}", str(junk)))
    assert f"setting {setting}: {junk} holds no PEM certificate" in line


@pytest.mark.parametrize("source", ["--events", "--input"])
def test_backtest_to_a_missing_directory_names_output(tmp_path, source):
    data = tmp_path / "data"
    data.write_text('{"service": "x", "ts": 1767571200971}\n' if source == "--events"
                    else "timestamp,value\n2026-01-01T00:00:00Z,1\n")
    line = one_sentence_error(stream_detector(
        "backtest", source, str(data), "--output", "/no/such/dir/x.csv"))
    assert line.endswith("cannot write --output /no/such/dir/x.csv: "
                         "directory /no/such/dir does not exist")


def test_a_misspelled_environment_variable_is_a_warning_on_stderr(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"service": "x", "ts": 1767571200971}\n')
    proc = stream_detector("backtest", "--events", str(events), "--output",
                           str(tmp_path / "alerts.jsonl"),
                           env={"STREAM_DETECTOR_BUCKIT": "5m"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert ("stream-detector: warning: environment variable STREAM_DETECTOR_BUCKIT is not a "
            "setting and is ignored; did you mean STREAM_DETECTOR_BUCKET (setting bucket)?"
            in err.splitlines())


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_warning_comes_before_an_error_of_run(tmp_path, log_format):
    proc = stream_detector("run", "--bucket", "7s", "--log-format", log_format,
                           env={"STREAM_DETECTOR_MODLE": "ewma"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err
    warning, error = err.splitlines()
    if log_format == "json":
        warning, error = orjson.loads(warning), orjson.loads(error)
        assert (warning["level"], error["level"]) == ("warning", "error")
        warning, error = warning["msg"], error["msg"]
    else:
        warning = warning.removeprefix("stream-detector: warning: ")
        error = error.removeprefix("stream-detector: error: ")
    assert warning.startswith("environment variable STREAM_DETECTOR_MODLE")
    assert "STREAM_DETECTOR_MODEL" in warning
    assert error.startswith("setting bucket: ")


def test_under_json_logs_an_error_is_a_json_line():
    proc = stream_detector("run", "--metrics-port", "70000",
                           env={"STREAM_DETECTOR_LOG_FORMAT": "json"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    (line,) = err.splitlines()
    entry = orjson.loads(line)
    assert entry["level"] == "error" and entry["logger"] == "stream_detector.cli"
    assert entry["msg"].startswith("setting metrics_port: ") and entry["ts"].endswith("Z")


def test_an_empty_events_file_is_an_error_naming_it(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("\n\n")
    line = one_sentence_error(stream_detector(
        "backtest", "--events", str(events), "--output", str(tmp_path / "alerts.jsonl")))
    assert line == f"stream-detector: error: --events {events} holds no reports: the file is empty"


def test_bad_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("bucket = \n")
    line = one_sentence_error(stream_detector("run", "--config", str(bad)))
    assert str(bad) in line


def test_unreachable_broker_ends_in_one_sentence():
    address = f"127.0.0.1:{free_port()}"
    line = one_sentence_error(stream_detector(
        "run", "--bootstrap-servers", address, "--metrics-port", "0", "--startup-timeout", "0"))
    assert "bootstrap_servers" in line and address in line


def test_run_tries_an_unreachable_broker_for_startup_timeout_then_gives_up():
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = stream_detector("run", "--bootstrap-servers", address, "--metrics-port", "0",
                           "--startup-timeout", "4s", "--log-format", "json")
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 2 and "Traceback" not in err, err
    entries = [orjson.loads(line) for line in err.splitlines()]
    tries = [e for e in entries if e["msg"].startswith("Kafka broker not reachable at start-up")]
    # Waits of 1 s, 2 s, then what is left: two or three logged tries (a slow try
    # leaves no time for a third), then the last one fails for good.
    assert [e["try"] for e in tries] in ([1, 2], [1, 2, 3]), err
    assert all(e["level"] == "warning" and e["bootstrap_servers"] == address for e in tries)
    (error,) = [e for e in entries if e["level"] == "error"]
    assert address in error["msg"] and "setting startup_timeout" in error["msg"]
    assert 4 <= took < 40


def test_simulate_to_an_unreachable_broker_says_it_once(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    proc = stream_detector("simulate", "--bootstrap-servers", address, "--services", "2",
                           "--days", "0.01")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "Unable connect" not in err and "aiokafka" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("stream-detector: error: cannot reach the Kafka broker at "
                           f"bootstrap_servers={address}")


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait_ready(proc: subprocess.Popen, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _status(port, "/readyz") != 200:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "detector never became ready"
        time.sleep(0.1)


def test_sigterm_stops_cleanly_within_seconds(broker, unique):
    port = free_port()
    proc = stream_detector(
        "run", "--bootstrap-servers", broker.bootstrap_servers, "--metrics-port", str(port),
        "--group-id", f"{unique}-g", "--reports-topic", f"{unique}-reports",
        env={"STREAM_DETECTOR_METRICS_HOST": "127.0.0.1"},
    )
    try:
        _wait_ready(proc, port)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 10
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


class _LateProxy:
    """Forwards a port to the broker, listening only from `start()` on: a broker
    that comes up after the detector (compose, a pod restart)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self.server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> None:
        target = self.target

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(target)
                threading.Thread(target=_copy, args=(upstream, self.request), daemon=True).start()
                _copy(self.request, upstream)

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Pipe)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _copy(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        sink.close()


def test_run_waits_for_a_broker_that_comes_up_after_it(broker, unique):
    proxy = _LateProxy(broker.bootstrap_servers)
    port = free_port()
    proc = stream_detector(
        "run", "--bootstrap-servers", f"127.0.0.1:{proxy.port}", "--metrics-port", str(port),
        "--group-id", f"{unique}-g", "--reports-topic", f"{unique}-reports",
        "--startup-timeout", "60s", "--log-format", "json",
        env={"STREAM_DETECTOR_METRICS_HOST": "127.0.0.1"},
    )
    try:
        time.sleep(3)  # the detector's first tries find nothing listening
        assert proc.poll() is None
        proxy.start()
        _wait_ready(proc, port)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        tries = [e for e in map(orjson.loads, err.splitlines())
                 if e["msg"].startswith("Kafka broker not reachable at start-up")]
        assert tries and tries[0]["try"] == 1, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.stop()


def test_version_and_help_from_the_installed_command():
    proc = stream_detector("--version")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip().startswith("stream-detector 0."), err
    proc = stream_detector("demo", "--help")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "embedded Kafka-compatible broker" in out and "\n  stream-detector demo" in out
    proc = stream_detector("simulate", "--help")
    out, _ = proc.communicate(timeout=60)
    assert "how many services (default: 30)" in " ".join(out.split())


async def test_board_serves_until_sigterm_and_a_taken_port_is_one_sentence(broker, unique):
    from tests.integration.kafka_helpers import create_topic

    await create_topic(broker.bootstrap_servers, f"{unique}-alerts", 1)
    port = free_port()
    args = ("board", "--bootstrap-servers", broker.bootstrap_servers, "--port", str(port),
            "--host", "127.0.0.1", "--alerts-topic", f"{unique}-alerts")
    proc = stream_detector(*args)
    try:
        _wait_ready(proc, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/incidents") as answer:
            assert orjson.loads(answer.read()) == {"incidents": []}
        second = stream_detector(*args)
        assert one_sentence_error(second).startswith(
            f"stream-detector: error: setting board_port: cannot listen on 127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
