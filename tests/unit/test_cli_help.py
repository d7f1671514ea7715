"""`--help` of every subcommand: each flag explained with its default, choices listed,
an example; `--version`."""

from __future__ import annotations

import argparse

import pytest

from stream_detector import __version__
from stream_detector.cli import build_parser
from stream_detector.config import RULES
from stream_detector.core.models import MODELS


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _help(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", "simulate", "backtest", "demo"])
def test_every_flag_has_help_and_a_default_and_each_command_an_example(command, capsys):
    parser = _subcommands()[command]
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings} has no help"
        setting = action.dest in RULES and action.default is None
        if setting:
            assert "(default: " in action.help and f"setting {action.dest}" in action.help
        elif action.default is not None:
            assert "%(default)" in parser.formatter_class(command)._get_help_string(action)
    text = _help([command, "--help"], capsys)
    assert f"\n  stream-detector {command}" in text.split("example")[-1]


def test_choices_are_listed(capsys):
    text = " ".join(_help(["run", "--help"], capsys).split())
    for name in MODELS:
        assert name in text
    assert "one of DEBUG, INFO, WARNING, ERROR, CRITICAL (default: INFO" in text
    assert "one of auto, json, text (default: auto" in text
    simulate = " ".join(_help(["simulate", "--help"], capsys).split())
    assert "how many services (default: 30)" in simulate
    assert "simulated days (default: 21.0)" in simulate
    assert "as fast as possible (default: 0.0)" in simulate


def test_demo_help_says_what_it_does(capsys):
    text = " ".join(_help(["demo", "--help"], capsys).split())
    assert "embedded Kafka-compatible broker" in text and "ends by itself" in text
    assert "touches no broker of yours" in text


def test_version(capsys):
    assert _help(["--version"], capsys).strip() == f"stream-detector {__version__}"


def test_log_level_is_a_flag_of_run():
    args = build_parser().parse_args(["run", "--log-level", "debug"])
    assert args.log_level == "debug"  # the setting's rule upper-cases and checks it
