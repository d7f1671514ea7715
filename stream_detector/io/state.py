"""Where partition snapshots live: a compacted Kafka changelog topic, or a local directory.

Both stores keep two slots per partition. A snapshot is tagged with the
source offset it covers; offsets are committed only after it is stored (see
`io/checkpoint.py`). If the process dies between storing and committing, the
newest snapshot covers reports whose offsets were never committed; replaying
those onto it would count them twice, so `load` takes the newest snapshot that
is not ahead of the committed offset, which is the other slot's.

Which slot a new snapshot goes to follows from what is committed, not from
the generation's parity (`Slots`): the slot holding the snapshot the committed
offset restores is kept until a newer snapshot's commit succeeds. Counting on
by parity would let a process that restored the older slot, and whose first
commit is refused too, overwrite the only snapshot its committed offset has.

In Kafka, snapshot `p` goes to partition `p % partitions` of the changelog,
keyed `<p>/<slot>/<chunk>` plus a manifest `<p>/<slot>/m`, so one partition's
state restores alone and compaction keeps exactly the latest of each key.
Large snapshots are split into chunks below the broker's message size limit.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

CHUNK_BYTES = 512 * 1024
# Records read from the end of a changelog partition before reading further back.
TAIL_RECORDS = 64


class StoreUnwritable(RuntimeError):
    """The local store cannot be written; the message names `state_dir`."""


@dataclass(frozen=True)
class StoredSnapshot:
    data: bytes
    offset: int
    """The source offset the snapshot covers: consumption resumes here."""
    generation: int
    mark: str | None = None
    """The source record just before `offset` (`checkpoint.record_mark`), or
    None in snapshots older than the mark."""


@dataclass(frozen=True)
class Manifest:
    generation: int
    offset: int
    chunks: int
    crc: int


def _pick(candidates: list[StoredSnapshot], committed: int | None) -> StoredSnapshot | None:
    usable = [s for s in candidates if committed is not None and s.offset <= committed]
    return max(usable, key=lambda s: s.generation, default=None)


class Slots:
    """Per partition, what each slot holds and which one a new snapshot may overwrite."""

    def __init__(self) -> None:
        self.held: dict[int, dict[int, StoredSnapshot]] = {}
        self.committed: dict[int, int] = {}
        self.generation: dict[int, int] = {}
        """The newest generation stored per partition (their sum: snapshots written)."""

    def loaded(
        self, partition: int, found: dict[int, StoredSnapshot], committed: int | None
    ) -> StoredSnapshot | None:
        """Record what `load` found in each slot; return the snapshot `committed` restores."""
        # Only what the choice needs: the snapshots' bytes are the caller's.
        self.held[partition] = {slot: replace(s, data=b"") for slot, s in found.items()}
        if committed is None:
            self.committed.pop(partition, None)
        else:
            self.committed[partition] = committed
        if found:
            self.generation[partition] = max(s.generation for s in found.values())
        return _pick(list(found.values()), committed)

    def commit(self, partition: int, offset: int) -> None:
        """`offset` is committed: the snapshot it restores is the one to keep from now on."""
        self.committed[partition] = offset

    def next(self, partition: int) -> tuple[int, int]:
        """The slot and generation of the partition's next snapshot."""
        generation = self.generation.get(partition, 0) + 1
        held = self.held.get(partition, {})
        kept = _pick(list(held.values()), self.committed.get(partition))
        if kept is None:  # no snapshot the committed offset needs: take turns
            return generation % 2, generation
        slot = next(slot for slot, s in held.items() if s is kept)
        return 1 - slot, generation

    def stored(self, partition: int, slot: int, snapshot: StoredSnapshot) -> None:
        self.held.setdefault(partition, {})[slot] = replace(snapshot, data=b"")
        self.generation[partition] = snapshot.generation


class LocalSnapshotStore:
    """Snapshots as files, for a single process without a broker-side changelog."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnwritable(
                f"setting state_dir: cannot use {directory} as a directory ({exc.strerror})"
            ) from None
        self.slots = Slots()

    async def ensure_topic(self, partitions: int) -> None:
        """Nothing to create: the directory exists since the store was made."""

    async def load(self, partition: int, committed: int | None) -> StoredSnapshot | None:
        found = {}
        for slot in (0, 1):
            path = self.directory / f"partition-{partition}.{slot}.snap"
            if not path.exists():
                continue
            raw = path.read_bytes()
            header, _, data = raw.partition(b"\n")
            meta = orjson.loads(header)
            if zlib.crc32(data) == meta["crc"]:
                found[slot] = StoredSnapshot(data, meta["offset"], meta["generation"],
                                             meta.get("mark"))
        return self.slots.loaded(partition, found, committed)

    def committed(self, partition: int, offset: int) -> None:
        self.slots.commit(partition, offset)

    async def save(
        self, partition: int, data: bytes, offset: int, mark: str | None = None
    ) -> None:
        slot, generation = self.slots.next(partition)
        path = self.directory / f"partition-{partition}.{slot}.snap"
        header = orjson.dumps({"generation": generation, "offset": offset, "mark": mark,
                               "crc": zlib.crc32(data)})
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("wb") as fh:
                fh.write(header + b"\n" + data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)  # atomic: a crash leaves the old file or the new one
        except OSError as exc:
            # Nothing was committed behind it: stopping here loses nothing.
            raise StoreUnwritable(
                f"setting state_dir: cannot write a snapshot to {self.directory} "
                f"({exc.strerror}); stopping without a checkpoint"
            ) from None
        self.slots.stored(partition, slot, StoredSnapshot(data, offset, generation, mark))


class KafkaSnapshotStore:
    """Snapshots in a compacted changelog topic on the same cluster."""

    def __init__(self, producer: AIOKafkaProducer, client_options: dict, topic: str):
        self.producer = producer
        self.client_options = client_options
        self.topic = topic
        self.partitions = 1
        self.slots = Slots()

    async def ensure_topic(self, partitions: int) -> None:
        """Create the changelog (compacted) if missing; use as many partitions as it has."""
        admin = AIOKafkaAdminClient(**self.client_options)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(
                self.topic, max(partitions, 1), 1,
                topic_configs={"cleanup.policy": "compact"},
            )])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()
        found = await self._partition_count()
        self.partitions = found or max(partitions, 1)

    async def _partition_count(self) -> int:
        await self.producer.client.force_metadata_update()
        found = self.producer.client.cluster.partitions_for_topic(self.topic)
        return len(found) if found else 0

    async def save(
        self, partition: int, data: bytes, offset: int, mark: str | None = None
    ) -> None:
        slot, generation = self.slots.next(partition)
        target = partition % self.partitions
        chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
        futures = []
        for i, chunk in enumerate(chunks):
            futures.append(await self.producer.send(
                self.topic, chunk, key=f"{partition}/{slot}/{i}".encode(), partition=target,
                headers=[("generation", str(generation).encode())],
            ))
        manifest = {"generation": generation, "offset": offset, "mark": mark,
                    "chunks": len(chunks), "crc": zlib.crc32(data)}
        # The manifest goes last: a manifest that is there means its chunks are too.
        futures.append(await self.producer.send(
            self.topic, orjson.dumps(manifest), key=f"{partition}/{slot}/m".encode(),
            partition=target,
        ))
        await asyncio.gather(*futures)
        self.slots.stored(partition, slot, StoredSnapshot(data, offset, generation, mark))

    def committed(self, partition: int, offset: int) -> None:
        self.slots.commit(partition, offset)

    async def load(self, partition: int, committed: int | None) -> StoredSnapshot | None:
        tp = TopicPartition(self.topic, partition % self.partitions)
        consumer = AIOKafkaConsumer(**self.client_options, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            begin = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            # The newest snapshots are at the end of the log; compaction may not
            # have removed older ones yet (and never touches the active segment),
            # so read a growing tail until both slots are found whole.
            window = TAIL_RECORDS
            while True:
                start = max(begin, end - window)
                latest = await self._read_range(consumer, tp, start, end, f"{partition}/")
                found = self._complete_snapshots(latest, partition)
                if len(found) == 2 or start == begin:
                    break
                window *= 4
        finally:
            await consumer.stop()
        return self.slots.loaded(partition, found, committed)

    @staticmethod
    def _complete_snapshots(
        latest: dict[str, tuple[bytes, int]], partition: int
    ) -> dict[int, StoredSnapshot]:
        found = {}
        for slot in (0, 1):
            raw = latest.get(f"{partition}/{slot}/m")
            if raw is None:
                continue
            meta = orjson.loads(raw[0])
            parts = [latest.get(f"{partition}/{slot}/{i}") for i in range(meta["chunks"])]
            if any(p is None or p[1] != meta["generation"] for p in parts):
                continue  # a chunk is outside the tail read, or that write never finished
            data = b"".join(p[0] for p in parts)
            if zlib.crc32(data) == meta["crc"]:
                found[slot] = StoredSnapshot(data, meta["offset"], meta["generation"],
                                             meta.get("mark"))
        return found

    @staticmethod
    async def _read_range(
        consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int, prefix: str
    ) -> dict[str, tuple[bytes, int]]:
        """Latest value (and generation header) per key with `prefix` in [start, end)."""
        latest: dict[str, tuple[bytes, int]] = {}
        consumer.seek(tp, start)
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for msg in batch.get(tp, []):
                key = msg.key.decode() if msg.key else ""
                if key.startswith(prefix):
                    headers = dict(msg.headers or ())
                    latest[key] = (msg.value, int(headers.get("generation", b"0")))
        return latest
