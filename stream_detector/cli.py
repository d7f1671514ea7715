"""The `stream-detector` command: run, simulate, backtest, demo.

Only argument parsing and wiring live here. Errors a user can cause end in
one sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from stream_detector import __version__
from stream_detector.config import (
    RULES,
    ConfigError,
    Settings,
    env_var,
    format_duration,
    load_settings,
    parse_duration,
)
from stream_detector.logs import FORMATS, JsonLineFormatter, is_terminal


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one sentence."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, examples kept as written. A flag backed by a setting has
    default None (so a config file or the environment is not overridden) and
    says its setting's default in its own help instead."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _setting_default(name: str) -> str:
    value = next(f.default for f in dataclasses.fields(Settings) if f.name == name)
    rule = RULES[name]
    if value is None:
        return "unset"
    if rule.read is parse_duration:
        return format_duration(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _setting_flag(p: argparse.ArgumentParser, name: str, help: str, flag: str | None = None,
                  **kw) -> None:
    """A flag (`--the-setting-name` unless `flag` names it) for setting `name`: its
    help says the default and, where the setting has them, its choices; the
    setting's own rule validates the value."""
    choices = RULES[name].choices
    listed = f"; one of {', '.join(choices)}" if choices else ""
    if flag is not None:
        kw["dest"] = name
    p.add_argument(flag or f"--{name.replace('_', '-')}", help=(
        f"{help}{listed} (default: {_setting_default(name)}; setting {name}, "
        f"env {env_var(name)})"), **kw)


def _add_service_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a long-running command: start-up patience and its logs."""
    _setting_flag(p, "startup_timeout", "how long to keep trying an unreachable broker at "
                  "start-up", metavar="DURATION")
    _setting_flag(p, "log_format", "log lines; auto is json when stderr is not a terminal",
                  metavar="FORMAT")
    _setting_flag(p, "log_level", "lowest level logged", metavar="LEVEL")


def _add_kafka_flags(p: argparse.ArgumentParser) -> None:
    _setting_flag(p, "bootstrap_servers", "Kafka brokers, HOST:PORT[,HOST:PORT]",
                  metavar="HOST:PORT")
    _setting_flag(p, "security_protocol", "how to talk to the brokers", metavar="PROTOCOL")
    _setting_flag(p, "ssl_cafile", "CA bundle (PEM) to verify the brokers", metavar="FILE")
    _setting_flag(p, "ssl_certfile", "client certificate (PEM)", metavar="FILE")
    _setting_flag(p, "ssl_keyfile", "client key (PEM)", metavar="FILE")
    _setting_flag(p, "sasl_mechanism", "SASL mechanism", metavar="MECHANISM")
    _setting_flag(p, "sasl_username", "SASL user name", metavar="USER")
    _setting_flag(p, "sasl_password", "SASL password; better given in the environment",
                  metavar="PASSWORD")


EXAMPLES = {
    "run": "example:\n  stream-detector run --bootstrap-servers kafka-1:9092,kafka-2:9092 "
           "--metrics-port 9108",
    "simulate": "examples:\n"
                "  stream-detector simulate --output reports.jsonl --labels labels.json "
                "--services 12 --days 7\n"
                "  stream-detector simulate --bootstrap-servers localhost:9092 --speed 3600",
    "backtest": "examples:\n"
                "  stream-detector backtest --events reports.jsonl --labels labels.json "
                "--output alerts.jsonl --plot backtest.png\n"
                "  stream-detector backtest --input series.csv --output scored.csv "
                "--direction both",
    "board": "example:\n  stream-detector board --bootstrap-servers kafka-1:9092 --port 8080 "
             "--grafana-url http://grafana:3000",
    "correlate": "example:\n  stream-detector correlate --bootstrap-servers kafka-1:9092 "
                 "--alertmanager-url http://alertmanager:9093",
    "demo": "example:\n  stream-detector demo",
}

DEMO_DESCRIPTION = """\
Runs the whole product on this machine and ends by itself, in about two minutes:
starts an embedded Kafka-compatible broker (tansu, from the [embedded] extra),
the detector with its metrics on http://127.0.0.1:9108/metrics (or a free port),
the status board on http://127.0.0.1:8080/ (or a free port), and the simulator
publishing four days of twelve services at about 4,600 times real time, with
injected outages (among them one modelled on a weekend outage of X). It shows
progress, the alerts as they arrive on the alerts topic, and a summary of which
outages paged, how late, and which alerts were false. It takes no options and
touches no broker of yours."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-detector", formatter_class=_HelpFormatter,
        description="Find outages of online services from crowd-sourced problem reports.",
        epilog="examples:\n  stream-detector demo\n"
               "  stream-detector run --bootstrap-servers kafka-1:9092\n"
               "  stream-detector <command> --help",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, help: str, **kw) -> argparse.ArgumentParser:
        description = kw.pop("description", help)
        if "\n" not in description:  # the formatter keeps text as written: wrap it here
            description = textwrap.fill(description, 78)
        return sub.add_parser(name, help=help, description=description,
                              epilog=EXAMPLES[name], formatter_class=_HelpFormatter, **kw)

    run = command("run", "consume reports from Kafka and publish alerts",
                  description="Consume reports from Kafka, publish alerts, serve metrics; "
                  "stops cleanly on SIGTERM or SIGINT. Flags override, in this order, "
                  "the environment, the --config file and the defaults.")
    _add_kafka_flags(run)
    run.add_argument("--config", metavar="FILE.toml", help="TOML file of settings")
    _setting_flag(run, "group_id", "consumer group; instances in one group share the "
                  "partitions", metavar="GROUP")
    _setting_flag(run, "reports_topic", "topic the reports come in on", metavar="TOPIC")
    _setting_flag(run, "alerts_topic", "topic alerts go out on", metavar="TOPIC")
    _setting_flag(run, "dlq_topic", "topic malformed reports go to", metavar="TOPIC")
    _setting_flag(run, "bucket", "bucket width, e.g. 60s or 15m; must divide an hour",
                  metavar="DURATION")
    _setting_flag(run, "model", "per-series model", metavar="NAME")
    _setting_flag(run, "metrics_port", "port of /metrics, /healthz, /readyz; 0 picks a free one",
                  metavar="PORT")
    _setting_flag(run, "alertmanager_url", "also push incidents to this Alertmanager (v2 API)",
                  metavar="URL")
    _add_service_flags(run)

    sim = command("simulate", "generate realistic report traffic with outages",
                  description="Generate realistic report traffic with injected outages, to a "
                  "JSON-lines file or a Kafka topic; prints what it injected.")
    _add_kafka_flags(sim)
    sim.add_argument("--output", metavar="FILE.jsonl",
                     help="write JSON lines to this file instead of Kafka")
    sim.add_argument("--topic", default="reports", help="topic to publish to")
    sim.add_argument("--services", type=int, default=30, help="how many services")
    sim.add_argument("--days", type=float, default=21.0, help="simulated days")
    sim.add_argument("--speed", type=float, default=0.0,
                     help="simulated seconds per second when publishing; 0 = as fast as possible")
    sim.add_argument("--seed", type=int, default=1, help="random seed; one seed, one traffic")
    sim.add_argument("--labels", metavar="FILE.json",
                     help="write the injected outages as a labels JSON file")
    sim.add_argument("--provider-dependants", type=int, default=0, metavar="N",
                     help="also inject a provider outage: one provider service and N "
                     "dependants down at once, some only in one region")

    bt = command("backtest", "run the detector offline over a file",
                 description="Run the detector core offline over a file of reports "
                 "(--events) and write the alerts `run` would publish, or score one "
                 "pre-bucketed series (--input).")
    source = bt.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="FILE.jsonl",
                        help="report events, one JSON object per line (.gz read too)")
    source.add_argument("--input", metavar="FILE.csv",
                        help="one pre-bucketed series: CSV with timestamp,value")
    bt.add_argument("--output", required=True, metavar="FILE",
                    help="alerts (JSON lines) with --events; scored CSV with --input")
    _setting_flag(bt, "bucket", "with --events: bucket width", metavar="DURATION")
    _setting_flag(bt, "model", "per-series model", metavar="NAME")
    bt.add_argument("--direction", choices=["up", "down", "both"], default="up",
                    help="with --input: which departures count")
    bt.add_argument("--config", metavar="FILE.toml", help="TOML file of detector settings")
    bt.add_argument("--labels", metavar="FILE.json", help="with --events: the simulator's "
                    "labels JSON; prints recall, false incidents and detection delay")
    bt.add_argument("--outages", metavar="FILE.jsonl", help="with --events: also group the "
                    "incidents into outage events, as `correlate` would publish them")
    bt.add_argument("--plot", metavar="FILE.png", help="with --events: draw reports, the "
                    "normal band, labelled windows and incidents (needs the [plot] extra)")

    board = command("board", "serve the live status board of the alerts and outages topics",
                    description="Serve a live status page and a JSON API of what is down now: "
                    "the alerts and outages topics read from their beginning (no consumer "
                    "group, no commits; a start rebuilds the view). Stops on SIGTERM or "
                    "SIGINT.")
    _add_kafka_flags(board)
    board.add_argument("--config", metavar="FILE.toml", help="TOML file of settings")
    _setting_flag(board, "alerts_topic", "topic the alerts are on", metavar="TOPIC")
    _setting_flag(board, "outages_topic", "topic the outage events are on", metavar="TOPIC")
    _setting_flag(board, "board_port", "port of the page and the API; 0 picks a free one",
                  flag="--port", metavar="PORT")
    _setting_flag(board, "board_host", "address to listen on", flag="--host", metavar="HOST")
    _setting_flag(board, "grafana_url", "link each service to its panel on this Grafana's "
                  "stream-detector dashboard", metavar="URL")
    _add_service_flags(board)

    corr = command("correlate", "group simultaneous incidents into outage events",
                   description="Read the alerts topic and publish outage events (incidents of "
                   "several services at once, grouped) to the outages topic; stops cleanly on "
                   "SIGTERM or SIGINT. Flags override the environment, the --config file and "
                   "the defaults.")
    _add_kafka_flags(corr)
    corr.add_argument("--config", metavar="FILE.toml", help="TOML file of settings")
    _setting_flag(corr, "alerts_topic", "topic the alerts come in on", metavar="TOPIC")
    _setting_flag(corr, "outages_topic", "topic outage events go out on", metavar="TOPIC")
    _setting_flag(corr, "correlate_group_id", "consumer group of the correlate stage",
                  metavar="GROUP")
    _setting_flag(corr, "bucket", "bucket width of the detector's alerts", metavar="DURATION")
    _setting_flag(corr, "correlate_window", "onsets this many buckets apart may group",
                  metavar="BUCKETS")
    _setting_flag(corr, "correlate_min_services", "fewest services an event starts with",
                  metavar="N")
    _setting_flag(corr, "providers", "comma-separated provider services", metavar="NAMES")
    _setting_flag(corr, "metrics_port", "port of /metrics, /healthz, /readyz; 0 picks a free "
                  "one", metavar="PORT")
    _setting_flag(corr, "alertmanager_url", "push events and their members to this "
                  "Alertmanager", metavar="URL")
    _add_service_flags(corr)

    command("demo", "everything on a local embedded broker, ends by itself",
            description=DEMO_DESCRIPTION)
    return parser


# The log format of `run` as far as it is known: the flag or environment
# until the settings are read, then the settings'. A warning or error of the
# command line comes out in it, so a log collector reading JSON lines gets
# the one sentence as a JSON line too.
_log_format: str | None = None


def _json_lines() -> bool:
    fmt = _log_format or "text"
    return fmt == "json" or (fmt == "auto" and not is_terminal(sys.stderr))


def _say(level: int, message: str) -> None:
    """One line on stderr: `stream-detector: error: ...`, or a JSON log line under JSON logs."""
    if _json_lines():
        record = logging.LogRecord(__name__, level, __file__, 0, message, None, None)
        print(JsonLineFormatter().format(record), file=sys.stderr)
    else:
        print(f"stream-detector: {logging.getLevelName(level).lower()}: {message}",
              file=sys.stderr)


def _warn(message: str) -> None:
    # Settings are read before logging is configured (they configure it), so
    # their warnings go straight to stderr, in the form of the error line.
    _say(logging.WARNING, message)


def _settings_from(args: argparse.Namespace, names: Sequence[str]) -> Settings:
    flags = {name: getattr(args, name, None) for name in names}
    return load_settings(flags, getattr(args, "config", None), warn=_warn)


def _check_writable(flag: str, path: str | None) -> None:
    """Refuse an output file that cannot be written, before the work that would fill it."""
    if path is None:
        return
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise UsageError(f"cannot write {flag} {path}: it is a directory")
    if not folder.is_dir():
        raise UsageError(f"cannot write {flag} {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"cannot write {flag} {path}: permission denied")


# The flags every broker-facing command takes: start-up, logs and the
# connection's security.
CLIENT_FLAGS = (
    "bootstrap_servers", "startup_timeout", "log_format", "log_level", "security_protocol",
    "ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_mechanism", "sasl_username",
    "sasl_password",
)

RUN_FLAGS = (
    "group_id", "reports_topic", "alerts_topic", "dlq_topic", "bucket", "model",
    "metrics_port", "alertmanager_url", *CLIENT_FLAGS,
)


def _service_settings(args: argparse.Namespace, names: Sequence[str]) -> Settings:
    """The settings of a long-running command, with logging configured by them."""
    global _log_format
    raw = args.log_format or os.environ.get(env_var("log_format"), "auto")
    _log_format = raw.strip().lower() if raw.strip().lower() in FORMATS else "auto"
    settings = _settings_from(args, names)
    _log_format = settings.log_format
    from stream_detector.app import configure_logging

    configure_logging(settings)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    settings = _service_settings(args, RUN_FLAGS)
    from stream_detector.app import serve, tune_gc

    tune_gc()
    asyncio.run(serve(settings, install_signal_handlers=True))
    return 0


BOARD_FLAGS = (
    "alerts_topic", "outages_topic", "board_port", "board_host", "grafana_url", *CLIENT_FLAGS,
)


def cmd_board(args: argparse.Namespace) -> int:
    settings = _service_settings(args, BOARD_FLAGS)
    from stream_detector.io.board import serve_board

    asyncio.run(serve_board(settings, install_signal_handlers=True))
    return 0


CORRELATE_FLAGS = (
    "alerts_topic", "outages_topic", "correlate_group_id", "bucket", "correlate_window",
    "correlate_min_services", "providers", "metrics_port", "alertmanager_url", *CLIENT_FLAGS,
)


def cmd_correlate(args: argparse.Namespace) -> int:
    settings = _service_settings(args, CORRELATE_FLAGS)
    from stream_detector.app import serve_correlate

    asyncio.run(serve_correlate(settings, install_signal_handlers=True))
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    _check_writable("--output", args.output)
    _check_writable("--plot", args.plot)
    _check_writable("--outages", args.outages)
    if args.input:
        if args.labels or args.plot:
            raise UsageError("--labels and --plot go with --events, not --input")
        if args.outages:
            raise UsageError("--outages goes with --events, not --input")
        from stream_detector.series_backtest import score_series_file

        try:
            score_series_file(args.input, args.output, direction=args.direction,
                              model=args.model)
        except OSError as exc:  # reading errors are ValueErrors naming the input already
            raise UsageError(f"cannot write --output {args.output}: {exc.strerror}") from None
        return 0
    from stream_detector.backtest import format_evaluation, load_labels, run_labelled_backtest

    settings = _settings_from(args, ("bucket", "model"))
    config = settings.detector_config()
    labels = load_labels(args.labels) if args.labels else None
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (fail before a long replay, not after)
        except ImportError:
            raise UsageError(
                "--plot needs matplotlib: pip install 'stream-detector[plot]'"
            ) from None
    if _holds_no_lines(args.events):
        raise UsageError(f"--events {args.events} holds no reports: the file is empty")
    run = run_labelled_backtest(args.events, args.output, config, labels,
                                keep_history=bool(args.plot))
    opened = len(run.incidents)
    print(f"{len(run.alerts)} alert messages, {opened} incidents -> {args.output}",
          file=sys.stderr)
    if run.evaluation is not None:
        print(format_evaluation(run.evaluation))
    if args.outages:
        _backtest_outages(args.outages, settings, run.alerts, run.incidents, labels)
    if args.plot and run.history is not None:
        from stream_detector.plot import plot_backtest

        panels = plot_backtest(args.plot, run.history, labels or [], run.incidents,
                               run.evaluation, config.bucket_ms, config.policy.band_spreads)
        print(f"{panels} panels -> {args.plot}", file=sys.stderr)
    return 0


def _backtest_outages(path, settings, alerts, incidents, labels) -> None:
    from stream_detector.outage_backtest import (
        alert_messages,
        correlate_alerts,
        evaluate_grouping,
        final_events,
        format_grouping,
    )

    policy = settings.correlation_policy()
    messages = correlate_alerts(alert_messages(alerts), policy, path)
    events = final_events(messages)
    print(f"{len(messages)} outage event messages, {len(events)} events -> {path}",
          file=sys.stderr)
    if labels is not None:
        print(format_grouping(evaluate_grouping(events, incidents, labels, policy.min_services)))


def _holds_no_lines(path: str) -> bool:
    """Whether the events file (gzip too) has no line but blanks; False when it cannot
    be read, which the replay reports itself, naming the file."""
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as events:
            return not any(line.strip() for line in events)
    except (OSError, EOFError):
        return False


def cmd_simulate(args: argparse.Namespace) -> int:
    from stream_detector.sim import publish_to_kafka, simulate, write_jsonl, write_labels

    if args.services < 1 or args.days <= 0:
        raise UsageError("--services must be at least 1 and --days more than 0")
    if args.provider_dependants < 0:
        raise UsageError("--provider-dependants cannot be negative")
    _check_writable("--output", args.output)
    _check_writable("--labels", args.labels)
    services, outages, reports = simulate(args.services, args.days, args.seed,
                                          provider_dependants=args.provider_dependants)
    print(f"simulating {len(services)} services over {args.days:g} days; injected:",
          file=sys.stderr)
    for outage in outages:
        print(f"  {outage.describe()}", file=sys.stderr)
    if args.labels:
        write_labels(outages, args.labels)
    if args.output:
        n = write_jsonl(reports, args.output, progress=sys.stderr)
    else:
        settings = _settings_from(args, ("bootstrap_servers", "security_protocol", "ssl_cafile",
                                         "ssl_certfile", "ssl_keyfile", "sasl_mechanism",
                                         "sasl_username", "sasl_password"))
        from stream_detector.io.clients import BrokerUnreachable

        # aiokafka logs each failed connection in its own words before it
        # raises; the sentence below says it once, naming the setting.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        try:
            n = asyncio.run(publish_to_kafka(
                reports, settings.bootstrap_servers, args.topic, args.speed,
                producer_config=settings.kafka_client_options(),
            ))
        except BrokerUnreachable:
            raise
        except OSError as exc:
            raise UsageError(
                f"cannot publish to bootstrap_servers={settings.bootstrap_servers}: {exc}"
            ) from None
    print(f"{n:,} reports", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream_detector.demo import run_demo

    return asyncio.run(run_demo())


COMMANDS = {"run": cmd_run, "simulate": cmd_simulate, "backtest": cmd_backtest, "board": cmd_board,
            "correlate": cmd_correlate, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from stream_detector.embedded import EmbeddedBrokerError
    from stream_detector.io.clients import BrokerUnreachable
    from stream_detector.io.publisher import DeliveryFailed
    from stream_detector.io.service import StateUnusable
    from stream_detector.io.state import StoreUnwritable

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError, BrokerUnreachable, StateUnusable, DeliveryFailed,
            StoreUnwritable, EmbeddedBrokerError, ValueError) as exc:
        _say(logging.ERROR, str(exc))
        return 2
    except KeyboardInterrupt:
        return 130

