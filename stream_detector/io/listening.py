"""Starting a process's HTTP endpoint and its stop signals, the same way for every command.

A port that cannot be bound is a setting to fix, so it ends in one sentence
naming that setting (`ConfigError`), not in an OSError's traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from stream_detector.config import ConfigError

log = logging.getLogger("stream_detector")


async def start_listening(start: Callable[[str, int], Awaitable[int]], host: str, port: int,
                          setting: str, stop: asyncio.Event, install_signal_handlers: bool,
                          on_listening: Callable[[int], None] | None, what: str) -> int:
    """Bind with `start(host, port)`; SIGTERM/SIGINT then set `stop`. Returns the port bound."""
    try:
        bound = await start(host, port)
    except OSError as exc:
        raise ConfigError(
            f"setting {setting}: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    if install_signal_handlers:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    log.info("%s on port %d", what, bound)
    if on_listening is not None:
        on_listening(bound)
    return bound
