"""The metrics endpoint under hostile clients: slow heads, huge heads, socket floods.

No broker: a MetricsServer over a fresh DetectorMetrics on 127.0.0.1, port 0.
Deadlines (asyncio.wait_for) are the failure condition, never a measured speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator

import pytest

from stream_detector.io import metrics as server_module
from stream_detector.io.metrics import DetectorMetrics, MetricsServer

GET_METRICS = b"GET /metrics HTTP/1.1\r\nHost: detector\r\nUser-Agent: Prometheus/3.0\r\n\r\n"
ONE_MB = 1024 * 1024
# Generous: only a server that never answers or never closes can miss it.
DEADLINE = 5.0


@contextlib.asynccontextmanager
async def serving(**limits) -> AsyncIterator[int]:
    server = MetricsServer(DetectorMetrics(), lambda: True, lambda: True, **limits)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.stop()


async def exchange(port: int, request: bytes) -> bytes:
    """Send `request` and read the answer up to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


async def scrape_within_1s(port: int) -> None:
    answer = await asyncio.wait_for(exchange(port, GET_METRICS), 1.0)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"stream_detector_reports_total" in answer


class SlowHead:
    """A client that sends a request line, then one header line every `every` seconds."""

    def __init__(self, port: int, every: float):
        self.port, self.every = port, every
        self.lines_sent = 0
        self.second_line = asyncio.Event()  # set once it has dribbled, or was cut off
        self.answer = b""
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            self.second_line.set()
            raise
        dribbling = asyncio.create_task(self._dribble(writer))
        try:
            self.answer = await reader.read()  # returns when the server closes
        except ConnectionError:
            pass
        finally:
            dribbling.cancel()
            writer.close()
            self.second_line.set()

    async def _dribble(self, writer: asyncio.StreamWriter) -> None:
        line = b"GET /metrics HTTP/1.1\r\n"
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(line)
                await writer.drain()
                self.lines_sent += 1
                if self.lines_sent == 2:
                    self.second_line.set()
                await asyncio.sleep(self.every)
                line = b"X-Slow-%d: 1\r\n" % self.lines_sent


async def stop_all(clients: list[SlowHead]) -> None:
    for client in clients:
        client.task.cancel()
    await asyncio.gather(*(c.task for c in clients), return_exceptions=True)


# The server runs in a child process whose descriptor limit is a little above
# the server's connection cap, so a flood of slow clients exhausts it unless the
# cap holds: that is how the probe's slow clients held the sockets.
CHILD = """
import asyncio, importlib, resource, sys
module = importlib.import_module(sys.argv[1])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), hard))

async def main():
    server = module.MetricsServer(module.DetectorMetrics(), lambda: True, lambda: True)
    print(await server.start("127.0.0.1", 0), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_metrics_answers_during_a_flood_of_slow_header_clients():
    fd_limit = server_module.MAX_CONNECTIONS + 12
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, server_module.__name__, str(fd_limit),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    clients: list[SlowHead] = []
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line, "the server process did not start"
        port = int(line)
        clients = [SlowHead(port, every=1.0) for _ in range(fd_limit + 32)]
        await asyncio.wait_for(asyncio.gather(*(c.second_line.wait() for c in clients)), 30)
        assert sum(c.lines_sent >= 2 for c in clients) > 0  # some are still dribbling
        await scrape_within_1s(port)
    finally:
        await stop_all(clients)
        child.terminate()
        await child.wait()


async def test_a_full_server_displaces_its_oldest_slow_client():
    async with serving(max_connections=2) as port:
        clients = [SlowHead(port, every=0.2) for _ in range(2)]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.second_line.wait() for c in clients)),
                                   DEADLINE)
            clients.append(SlowHead(port, every=0.2))
            await asyncio.wait_for(clients[0].task, DEADLINE)
            assert clients[0].answer == b""  # dropped, not answered
            await scrape_within_1s(port)
        finally:
            await stop_all(clients)


class BigAnswers(server_module.HttpServer):
    """Answers /big with 16 MiB, more than the kernel's socket buffers take, and
    anything else with a few bytes."""

    def answer(self, target: bytes) -> tuple[int, str, bytes, bytes]:
        body = b"x" * (16 * ONE_MB) if target == b"/big" else b"small\n"
        return 200, "text/plain", body, b""


async def test_slow_readers_holding_every_connection_do_not_shut_out_a_probe():
    server = BigAnswers(max_connections=3, write_timeout=60.0)
    port = await server.start("127.0.0.1", 0)
    readers = []
    try:
        for _ in range(3):  # each takes the head of its answer, then stops reading
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /big HTTP/1.1\r\n\r\n")
            assert await asyncio.wait_for(reader.readexactly(15), DEADLINE) == b"HTTP/1.1 200 OK"
            readers.append((reader, writer))
        answer = await asyncio.wait_for(exchange(port, b"GET /small HTTP/1.1\r\n\r\n"), DEADLINE)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"small\n")
        # The oldest slow reader made room: its answer ends short of 16 MiB.
        with contextlib.suppress(ConnectionError):
            rest = await asyncio.wait_for(readers[0][0].read(), DEADLINE)
            assert len(rest) < 16 * ONE_MB
    finally:
        for _, writer in readers:
            writer.close()
        await server.stop()


async def stream_head(port: int, chunks, sent: asyncio.Event) -> bytes:
    """Write `chunks` as a request head, then read the answer up to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            for i, chunk in enumerate(chunks):
                writer.write(chunk)
                await writer.drain()
                if i == 1:
                    sent.set()
        sent.set()
        return await reader.read()
    except ConnectionError:
        return b""
    finally:
        writer.close()


def one_line_head():
    """A 1 MiB request head that is one header line."""
    yield b"GET /metrics HTTP/1.1\r\nX-Big: "
    for _ in range(16):
        yield b"a" * (ONE_MB // 16)
    yield b"\r\n\r\n"


def many_lines_head():
    """A 1 MiB request head of 100-byte header lines."""
    yield b"GET /metrics HTTP/1.1\r\n"
    line = b"X-Pad: " + b"a" * 91 + b"\r\n"
    for _ in range(16):
        yield line * (ONE_MB // 16 // len(line))
    yield b"\r\n"


def endless_lines_head():
    """Header lines that never end, sent as fast as the server takes them."""
    yield b"GET /metrics HTTP/1.1\r\n"
    while True:
        yield b"X-Pad: aaaaaaaaaaaaaaaa\r\n" * 1000


async def test_metrics_answers_while_clients_send_huge_heads():
    async with serving() as port:
        sent = [asyncio.Event() for _ in range(3)]
        attackers = [asyncio.create_task(stream_head(port, head(), ready))
                     for head, ready in zip((one_line_head, many_lines_head, endless_lines_head),
                                            sent, strict=True)]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in sent)), DEADLINE)
            await scrape_within_1s(port)
            # And each of them is cut off, the endless one included.
            await asyncio.wait_for(asyncio.gather(*attackers), DEADLINE)
        finally:
            for attacker in attackers:
                attacker.cancel()
            await asyncio.gather(*attackers, return_exceptions=True)


@pytest.mark.parametrize("head", [one_line_head, many_lines_head])
async def test_a_1mb_head_gets_431_and_close_without_an_error_log(head, caplog):
    caplog.set_level(logging.DEBUG)
    async with serving() as port:
        answer = await asyncio.wait_for(stream_head(port, head(), asyncio.Event()), DEADLINE)
    gc.collect()  # so an exception nobody retrieved in a handler task is logged now
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nConnection: close\r\n" in answer
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_slow_head_is_cut_off_at_the_deadline_for_the_whole_head():
    async with serving(head_timeout=0.5) as port:
        # One line every 0.1 s: never idle for long, but never finished either.
        client = SlowHead(port, every=0.1)
        try:
            await asyncio.wait_for(client.task, DEADLINE)
        finally:
            await stop_all([client])
    assert client.answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert client.lines_sent >= 2


async def test_head_answers_without_a_body():
    async with serving() as port:
        answer = await asyncio.wait_for(
            exchange(port, b"HEAD /metrics HTTP/1.1\r\nHost: detector\r\n\r\n"), DEADLINE)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert length > 0
    assert body == b""


@pytest.mark.parametrize("request_line, status", [
    (b"POST /metrics HTTP/1.1", b"405 Method Not Allowed"),
    (b"DELETE /healthz HTTP/1.1", b"405 Method Not Allowed"),
    (b"GET /metrics", b"400 Bad Request"),
    (b"GARBAGE", b"400 Bad Request"),
])
async def test_other_requests_are_refused(request_line, status):
    async with serving() as port:
        answer = await asyncio.wait_for(
            exchange(port, request_line + b"\r\nHost: detector\r\n\r\n"), DEADLINE)
    assert answer.startswith(b"HTTP/1.1 " + status + b"\r\n")
    if status.startswith(b"405"):
        assert b"\r\nAllow: GET, HEAD\r\n" in answer
