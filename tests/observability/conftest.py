"""Real Prometheus and Alertmanager for the observability tests.

Each runs as a subprocess on a free loopback port with its own temporary
config and data directory, and a fixture returns only once the program says
it is ready (`/-/ready`), polling against a deadline rather than sleeping.

Without the programs the tests skip and say how to install them, except when
STREAM_DETECTOR_REQUIRE_PROMETHEUS is set (as `.ci/run` does): there a missing
program is a failure, so CI cannot go green by skipping them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus/prometheus.yml"
PROMETHEUS_RULES = DEPLOY / "prometheus/rules.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager/alertmanager.yml"

REQUIRE_ENV = "STREAM_DETECTOR_REQUIRE_PROMETHEUS"
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
STARTUP_TIMEOUT = 30.0
DETECTOR_JOB = "stream-detector"


def require_program(name: str) -> str:
    """The program's path; skip (or fail, under REQUIRE_ENV) when it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed; install it with `{INSTALL_HINT}`"
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{message} ({REQUIRE_ENV} is set, so this is a failure)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str,
               every: float = 0.05) -> object:
    """Poll until `condition()` is truthy and return it; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(every)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body; 0 when nothing answers, so it can be polled."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@dataclass
class RunningProgram:
    """A started Prometheus or Alertmanager: its URL, process and log."""

    name: str
    url: str
    process: subprocess.Popen
    log: Path
    directory: Path

    def get_json(self, path: str, **params: str | list[str]) -> object:
        """GET and decode; a list value repeats the parameter (Alertmanager's `filter`)."""
        query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        status, body = http_get(f"{self.url}{path}{query}")
        assert status == 200, f"{self.name} GET {path}{query}: HTTP {status} {body[:500]!r}"
        return orjson.loads(body)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_program(
    name: str, directory: Path, argv_for_port: Callable[[int], list[str]], attempts: int = 3
) -> RunningProgram:
    """Start a program on a free port and wait for `/-/ready`.

    Another process can take the free port between our probe and the
    program's bind; then the program exits, and we try again on a new port.
    """
    failures = []
    for attempt in range(attempts):
        port = free_port()
        log = directory / f"{name}.{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv_for_port(port), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=directory,
            )
        program = RunningProgram(name, f"http://127.0.0.1:{port}", process, log, directory)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if http_get(f"{program.url}/-/ready", timeout=1)[0] == 200:
                return program
            time.sleep(0.05)
        program.stop()
        failures.append(f"port {port}, exit {process.returncode}:\n{program.log_tail()}")
        if "address already in use" not in program.log_tail().lower():
            break
    raise AssertionError(f"{name} did not become ready:\n" + "\n---\n".join(failures))


def start_alertmanager(directory: Path, config: Path = ALERTMANAGER_CONFIG) -> RunningProgram:
    """Alertmanager with our deploy config (so the test also proves it loads)."""
    binary = require_program("prometheus-alertmanager")
    directory.mkdir(parents=True, exist_ok=True)
    config_copy = directory / "alertmanager.yml"
    shutil.copyfile(config, config_copy)
    return start_program("alertmanager", directory, lambda port: [
        binary,
        f"--config.file={config_copy}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        # An empty address turns clustering off; otherwise it binds 0.0.0.0:9094.
        "--cluster.listen-address=",
        "--log.level=info",
    ])


def prometheus_config(
    targets: list[str],
    rule_file: Path,
    alertmanager: str | None = None,
    interval: str = "1s",
) -> dict:
    """deploy/prometheus/prometheus.yml, pointed at test targets and made fast."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(rule_file)]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == DETECTOR_JOB]
    assert jobs, f"{PROMETHEUS_CONFIG} has no scrape job {DETECTOR_JOB}"
    jobs[0]["static_configs"] = [{"targets": list(targets)}]
    config["scrape_configs"] = jobs
    if alertmanager is None:
        config.pop("alerting", None)
    else:
        host = urllib.parse.urlsplit(alertmanager).netloc
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
    return config


def start_prometheus(
    directory: Path,
    targets: list[str],
    alertmanager: str | None = None,
    interval: str = "1s",
) -> RunningProgram:
    """Prometheus scraping `targets` as job stream-detector, with our rules loaded."""
    binary = require_program("prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    rules = directory / "rules.yml"
    shutil.copyfile(PROMETHEUS_RULES, rules)
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, rules, alertmanager, interval)))
    return start_program("prometheus", directory, lambda port: [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=info",
    ])


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory) -> Iterator[RunningProgram]:
    """One Alertmanager for the session; tests keep apart by unique service names."""
    program = start_alertmanager(tmp_path_factory.mktemp("alertmanager"))
    yield program
    program.stop()


@pytest.fixture
def prometheus_factory(tmp_path) -> Iterator[Callable[..., RunningProgram]]:
    """`prometheus_factory(targets, alertmanager=url)` starts a Prometheus; all stop at the end."""
    started: list[RunningProgram] = []

    def start(targets: list[str], alertmanager: str | None = None,
              interval: str = "1s") -> RunningProgram:
        program = start_prometheus(tmp_path / f"prometheus{len(started)}", targets,
                                   alertmanager, interval)
        started.append(program)
        return program

    yield start
    for program in started:
        program.stop()
