"""A TCP proxy on loopback in front of a broker, that can refuse writes.

Kafka's wire protocol frames every request as a 4-byte size and a body that
starts with the request's API key (0 is Produce). While `refuse_produce` is
set, a connection that sends a Produce request is cut before the request
reaches the broker, as a broker refusing writes would look to a client
(a full disk, a denied ACL): reads, group membership and commits go on.

The broker must advertise the proxy's port (`EmbeddedBroker(advertised_port=...)`),
or clients would reach the broker directly after their first metadata request.
"""

from __future__ import annotations

import asyncio
import contextlib

from stream_detector.embedded import free_port

PRODUCE = 0


class KafkaProxy:
    def __init__(self, upstream_port: int, port: int | None = None):
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.refuse_produce = False
        self.refused = 0
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task] = set()

    async def start(self) -> KafkaProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        for task in list(self.connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> KafkaProxy:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            self.connections.discard(task)
            return
        pipes = [asyncio.ensure_future(self._requests(reader, up_writer)),
                 asyncio.ensure_future(self._responses(up_reader, writer))]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            writer.close()
            up_writer.close()
            self.connections.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(size, "big"))
                if self.refuse_produce and int.from_bytes(body[:2], "big") == PRODUCE:
                    self.refused += 1
                    return  # cut the connection: the request never reaches the broker
                up.write(size + body)
                await up.drain()

    @staticmethod
    async def _responses(up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await up.read(65536):
                writer.write(data)
                await writer.drain()
