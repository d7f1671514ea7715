"""The deploy configs pass the checkers that ship with Prometheus and Alertmanager."""

from __future__ import annotations

import subprocess

import pytest

from tests.observability.conftest import (
    ALERTMANAGER_CONFIG,
    DEPLOY,
    PROMETHEUS_CONFIG,
    PROMETHEUS_RULES,
    require_program,
)

pytestmark = pytest.mark.integration

RULE_TESTS = DEPLOY / "prometheus/rules.test.yml"


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=DEPLOY)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{output}"
    return output


def test_prometheus_config_is_valid_and_finds_the_rules():
    output = run(require_program("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert "1 rule files found" in output


def test_rules_are_valid():
    output = run(require_program("promtool"), "check", "rules", str(PROMETHEUS_RULES))
    assert "SUCCESS" in output


def test_rule_unit_tests_pass():
    output = run(require_program("promtool"), "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in output


def test_alertmanager_config_is_valid():
    output = run(require_program("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert "SUCCESS" in output
    assert "inhibit rules" in output
