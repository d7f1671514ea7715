"""Fixtures shared by every test: one embedded broker per session, unique names per test."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import pytest

from stream_detector.embedded import EmbeddedBroker

_names = itertools.count()


@pytest.fixture(scope="session")
def broker():
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def unique():
    """A fresh name prefix, so tests sharing the broker never share topics or groups."""
    return f"t{next(_names)}-{int(time.time() * 1000) % 10**8}"


async def wait_for(
    condition: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0, every: float = 0.05
) -> None:
    """Poll `condition` until it holds; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)
