"""Wiring of the running service: detector, metrics endpoint, Alertmanager, signals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable

from stream_detector.config import Settings
from stream_detector.core.incidents import Alert
from stream_detector.io.alertmanager import AlertmanagerClient, AlertmanagerForwarder
from stream_detector.io.listening import start_listening
from stream_detector.io.metrics import DetectorMetrics, MetricsServer
from stream_detector.io.service import DetectorService

log = logging.getLogger("stream_detector")


def configure_logging(settings: Settings) -> None:
    from stream_detector.logs import configure_logging as configure

    configure(settings.log_format, settings.log_level)


# Allocations between collections of the youngest generation (CPython: 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Run the cyclic garbage collector less often, for a process that consumes reports.

    Counting allocates a dict or list per service and bucket and keeps them
    until the bucket closes, so at CPython's default threshold the
    collector ran every few hundred reports over objects that were all
    still alive. At 50,000 it costs a fifth less per counted report (about
    0.5 of 2.5 us, bench/throughput.py's reports), and a young collection
    still walks only tens of thousands of objects. The older generations'
    thresholds are left as they are.
    """
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


async def _listen(server: MetricsServer, settings: Settings, stop: asyncio.Event,
                  install_signal_handlers: bool,
                  on_listening: Callable[[int], None] | None) -> int:
    """Start the metrics endpoint (a busy port is a setting to fix) and the signals."""
    return await start_listening(server.start, settings.metrics_host, settings.metrics_port,
                                 "metrics_port", stop, install_signal_handlers, on_listening,
                                 "metrics")


async def _stop_forwarding(forwarder: AlertmanagerForwarder | None,
                           forwarding: asyncio.Task | None, timeout: float) -> None:
    if forwarder is None or forwarding is None:
        return
    forwarding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await forwarding
    # Last alerts (often the resolves) get a bounded chance to go out.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(forwarder.flush(), timeout)


def _forwarder(settings: Settings) -> AlertmanagerForwarder | None:
    if not settings.alertmanager_url:
        return None
    return AlertmanagerForwarder(AlertmanagerClient(settings.alertmanager_url))


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = False,
    metrics: DetectorMetrics | None = None,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Run the detector until `stop` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    metrics = metrics or DetectorMetrics.for_settings(settings)
    forwarder = _forwarder(settings)
    on_alert = None
    if forwarder is not None:
        async def on_alert(alert: Alert) -> None:
            forwarder.offer(alert)

    service = DetectorService(settings, metrics, on_alert=on_alert)
    server = MetricsServer(metrics, service.healthy, service.ready)
    await _listen(server, settings, stop, install_signal_handlers, on_listening)
    forwarding = asyncio.create_task(forwarder.run()) if forwarder else None
    # correlate = true: the correlate stage beside the detector, for a single
    # instance; it reads the alerts topic like the standalone one.
    correlating = None
    if settings.correlate:
        from stream_detector.io.correlate import CorrelateMetrics, CorrelateService

        correlating = asyncio.create_task(CorrelateService(
            settings, CorrelateMetrics(metrics.registry), forwarder).run(stop))
        # A stage that fails stops the process, whose error is then the stage's.
        correlating.add_done_callback(
            lambda task: task.cancelled() or task.exception() is None or stop.set())
    try:
        await service.run(stop)
        if correlating is not None:
            await correlating
    finally:
        if correlating is not None and not correlating.done():
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(correlating, settings.shutdown_timeout)
        await server.stop()
        await _stop_forwarding(forwarder, forwarding, settings.shutdown_timeout)
    log.info("stopped")


async def serve_correlate(
    settings: Settings,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = False,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Run the correlate stage alone until `stop` is set or SIGTERM/SIGINT arrives."""
    from stream_detector.io.correlate import CorrelateMetrics, CorrelateService

    stop = stop or asyncio.Event()
    forwarder = _forwarder(settings)
    metrics = CorrelateMetrics()
    service = CorrelateService(settings, metrics, forwarder)
    server = MetricsServer(metrics, service.healthy, service.ready)
    await _listen(server, settings, stop, install_signal_handlers, on_listening)
    forwarding = asyncio.create_task(forwarder.run()) if forwarder else None
    try:
        await service.run(stop)
    finally:
        await server.stop()
        await _stop_forwarding(forwarder, forwarding, settings.shutdown_timeout)
    log.info("correlate stopped")
