"""The `stream-detector` command: run, simulate, backtest, demo.

Only argument parsing and wiring live here. Errors a user can cause end in
one sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from stream_detector.config import ConfigError, Settings, load_settings


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one sentence."""


def _add_kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", help="Kafka brokers, HOST:PORT[,HOST:PORT]")
    p.add_argument("--security-protocol", help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    p.add_argument("--ssl-cafile", help="CA bundle to verify the brokers")
    p.add_argument("--ssl-certfile", help="client certificate (PEM)")
    p.add_argument("--ssl-keyfile", help="client key (PEM)")
    p.add_argument("--sasl-mechanism", help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    p.add_argument("--sasl-username")
    p.add_argument("--sasl-password", help="better given as STREAM_DETECTOR_SASL_PASSWORD")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-detector",
        description="Find outages of online services from crowd-sourced problem reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume reports from Kafka and publish alerts")
    _add_kafka_flags(run)
    run.add_argument("--config", help="TOML file of settings")
    run.add_argument("--group-id")
    run.add_argument("--reports-topic")
    run.add_argument("--alerts-topic")
    run.add_argument("--dlq-topic")
    run.add_argument("--bucket", help="bucket width, e.g. 60s or 15m")
    run.add_argument("--model", help="per-series model by name")
    run.add_argument("--metrics-port", help="port of /metrics; 0 picks a free one")
    run.add_argument("--alertmanager-url", help="also push incidents to this Alertmanager")
    run.add_argument("--log-format", choices=["auto", "json", "text"])

    sim = sub.add_parser("simulate", help="generate realistic report traffic with outages")
    _add_kafka_flags(sim)
    sim.add_argument("--output", help="write JSON lines to this file instead of Kafka")
    sim.add_argument("--topic", default="reports", help="topic to publish to (default reports)")
    sim.add_argument("--services", type=int, default=30)
    sim.add_argument("--days", type=float, default=21.0)
    sim.add_argument("--speed", type=float, default=0.0,
                     help="simulated seconds per second when publishing; 0 = as fast as possible")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--labels", help="write the injected outages as a labels JSON file")

    bt = sub.add_parser("backtest", help="run the detector offline over a file")
    source = bt.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", help="report events, one JSON object per line")
    source.add_argument("--input", help="one pre-bucketed series: CSV with timestamp,value")
    bt.add_argument("--output", required=True)
    bt.add_argument("--bucket", default="60s")
    bt.add_argument("--model", help="per-series model by name")
    bt.add_argument("--direction", choices=["up", "down", "both"], default="up")
    bt.add_argument("--config", help="TOML file of detector settings")
    bt.add_argument("--labels", help="with --events: the simulator's labels JSON; prints "
                    "recall, false incidents and detection delay")
    bt.add_argument("--plot", metavar="FILE.png", help="with --events: draw reports, the "
                    "normal band, labelled windows and incidents (needs the [plot] extra)")

    sub.add_parser("demo", help="everything on a local embedded broker, ends by itself")
    return parser


def _warn(message: str) -> None:
    # Settings are read before logging is configured (they configure it), so
    # their warnings go straight to stderr, in the form of the error line.
    print(f"stream-detector: warning: {message}", file=sys.stderr)


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


RUN_FLAGS = (
    "bootstrap_servers", "group_id", "reports_topic", "alerts_topic", "dlq_topic", "bucket",
    "model", "metrics_port", "alertmanager_url", "log_format", "security_protocol", "ssl_cafile",
    "ssl_certfile", "ssl_keyfile", "sasl_mechanism", "sasl_username", "sasl_password",
)


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings_from(args, RUN_FLAGS)
    from stream_detector.app import configure_logging, serve, tune_gc

    configure_logging(settings)
    tune_gc()
    asyncio.run(serve(settings, install_signal_handlers=True))
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    _check_writable("--output", args.output)
    _check_writable("--plot", args.plot)
    if args.input:
        if args.labels or args.plot:
            raise UsageError("--labels and --plot go with --events, not --input")
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
    run = run_labelled_backtest(args.events, args.output, config, labels,
                                keep_history=bool(args.plot))
    opened = len(run.incidents)
    print(f"{len(run.alerts)} alert messages, {opened} incidents -> {args.output}",
          file=sys.stderr)
    if run.evaluation is not None:
        print(format_evaluation(run.evaluation))
    if args.plot and run.history is not None:
        from stream_detector.plot import plot_backtest

        panels = plot_backtest(args.plot, run.history, labels or [], run.incidents,
                               run.evaluation, config.bucket_ms, config.policy.band_spreads)
        print(f"{panels} panels -> {args.plot}", file=sys.stderr)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from stream_detector.sim import publish_to_kafka, simulate, write_jsonl, write_labels

    if args.services < 1 or args.days <= 0:
        raise UsageError("--services must be at least 1 and --days more than 0")
    _check_writable("--output", args.output)
    _check_writable("--labels", args.labels)
    services, outages, reports = simulate(args.services, args.days, args.seed)
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


COMMANDS = {"run": cmd_run, "simulate": cmd_simulate, "backtest": cmd_backtest, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from stream_detector.embedded import EmbeddedBrokerError
    from stream_detector.io.clients import BrokerUnreachable
    from stream_detector.io.kafka import StateUnusable
    from stream_detector.io.publisher import DeliveryFailed

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError, BrokerUnreachable, StateUnusable, DeliveryFailed,
            EmbeddedBrokerError, ValueError) as exc:
        print(f"stream-detector: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

