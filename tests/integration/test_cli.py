"""The command line as a user meets it: clean errors, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from stream_detector.embedded import free_port

pytestmark = pytest.mark.integration


def stream_detector(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_DETECTOR_")}
    environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    environ.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "stream_detector", *args], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def one_sentence_error(proc: subprocess.Popen, timeout: float = 60) -> str:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    # Structured log lines may come first; the error itself is one plain sentence.
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("{")]
    assert len(lines) == 1, err
    assert lines[0].startswith("stream-detector: error: ")
    return lines[0]


@pytest.mark.parametrize("args, env, setting", [
    (["--bucket", "5x"], {}, "bucket"),
    (["--metrics-port", "70000"], {}, "metrics_port"),
    ([], {"STREAM_DETECTOR_MODEL": "crystal-ball"}, "model"),
    ([], {"STREAM_DETECTOR_SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_mechanism"),
    (["--config", "/nonexistent/settings.toml"], {}, "config"),
])
def test_bad_setting_ends_in_one_sentence_naming_it(args, env, setting):
    line = one_sentence_error(stream_detector("run", *args, env=env))
    assert f"setting {setting}" in line


def test_bad_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("bucket = \n")
    line = one_sentence_error(stream_detector("run", "--config", str(bad)))
    assert str(bad) in line


def test_unreachable_broker_ends_in_one_sentence():
    address = f"127.0.0.1:{free_port()}"
    line = one_sentence_error(
        stream_detector("run", "--bootstrap-servers", address, "--metrics-port", "0")
    )
    assert "bootstrap_servers" in line and address in line


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_sigterm_stops_cleanly_within_seconds(broker, unique):
    port = free_port()
    proc = stream_detector(
        "run", "--bootstrap-servers", broker.bootstrap_servers, "--metrics-port", str(port),
        "--group-id", f"{unique}-g", "--reports-topic", f"{unique}-reports",
        env={"STREAM_DETECTOR_METRICS_HOST": "127.0.0.1"},
    )
    try:
        deadline = time.monotonic() + 60
        while _status(port, "/readyz") != 200:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "detector never became ready"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 10
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
