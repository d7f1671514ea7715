"""The checkpoint: the one place where the service declares reports done.

A checkpoint happens in this order, for these reasons:
1. **Deliver** every alert and dead letter produced so far, so no output is
   lost behind a committed offset.
2. **Check that the log is still the one counted**: a record counted last
   before each position (its `mark`) must still be there. A log that no
   longer holds it (a broker that came back empty, a topic deleted and
   re-created, retention) would make the position point at other reports,
   or past the end. Such a partition is neither stored nor committed: the
   caller restarts it from its earliest offset, loudly. (Comparing with the
   log's end offset would miss a new log that has grown past the position.)
3. **Store** each changed partition's snapshot, tagged with its position,
   and wait until it is stored, so the offset is never committed ahead of
   the state that counted those reports.
4. **Commit** the positions.

The failure rule: if a step raises, or the consume loop failed (`fail`), the
checkpointer is failed for good and stores and commits nothing more. State in
memory may then be ahead of what was delivered (a batch counted halfway, an
alert not sent), and the only safe continuation is a restart that replays
from the last checkpoint.

A commit the group refuses (a rebalance, a coordinator that forgot the
member) leaves the state consistent: the snapshot just stored is ahead of the
committed offset, and the store keeps the one before it in its other slot
(see `io/state.py`). The store is told each commit that succeeds, and only
then gives up the slot the previous committed offset needed, so this holds
across any number of refused commits and crashes. Until a commit covers that
partition's stored snapshot, its next snapshot is not stored; its stored
position is committed again instead, so the committed offset catches up with
what is stored rather than chasing newer snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from stream_detector.io.state import StoredSnapshot

log = logging.getLogger("stream_detector")

# Backoff between attempts to store a snapshot, doubling up to the last.
STORE_BACKOFF = (0.1, 5.0)


@dataclass(frozen=True)
class Position:
    """How far a partition is counted."""

    offset: int
    """The next offset not counted."""
    mark: str | None
    """A record counted before `offset`, as `record_mark` names it: tells the
    log it was counted from from a new log with the same offsets."""


class SnapshotStore(Protocol):
    async def ensure_topic(self, partitions: int) -> None:
        """Make the store ready for `partitions` partitions (a changelog topic: create it)."""
        ...

    async def save(
        self, partition: int, data: bytes, offset: int, mark: str | None = None
    ) -> None:
        """Store `data`, the state of `partition` up to `offset`; return once it is stored."""
        ...

    async def load(self, partition: int, committed: int | None) -> StoredSnapshot | None:
        """The newest stored snapshot not ahead of `committed`."""
        ...

    def committed(self, partition: int, offset: int) -> None:
        """`offset` of `partition` is committed: the snapshot it restores is the one to keep."""
        ...


class OffsetLog(Protocol):
    """The consumer's side of the reports log, as the checkpoint needs it."""

    async def unmatched(self, positions: dict[TopicPartition, Position]) -> list[TopicPartition]:
        """The partitions whose log no longer holds the record their mark names."""
        ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        ...


class CheckpointFailed(RuntimeError):
    """A checkpoint was asked for after a step or the consume loop failed."""


class Checkpointer:
    def __init__(
        self,
        deliver: Callable[[], Awaitable[None]],
        offsets: OffsetLog,
        store: SnapshotStore | None,
        interval: float,
        store_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_store_retry: Callable[[], None] = lambda: None,
    ):
        self.deliver = deliver
        self.offsets = offsets
        self.store = store
        self.interval = interval
        self.store_timeout = store_timeout
        self.clock = clock
        self.sleep = sleep
        self.on_store_retry = on_store_retry
        self.last = clock()
        self.failed = False
        # Partitions whose last stored snapshot no commit has covered yet.
        self.uncommitted: dict[TopicPartition, int] = {}
        # The position each partition had at its last checkpoint (or
        # restore). Its mark is the one checked next time: a mark taken
        # since could already come from a new log, and match it.
        self.checked: dict[TopicPartition, Position] = {}

    def due(self) -> bool:
        return self.clock() - self.last >= self.interval

    def fail(self) -> None:
        """The consume loop failed: nothing it counted may be stored or committed."""
        self.failed = True

    def forget(self, partitions: list[TopicPartition]) -> None:
        """These partitions left this process (revoked) or start over (reset)."""
        for tp in partitions:
            self.uncommitted.pop(tp, None)
            self.checked.pop(tp, None)

    def restored(self, tp: TopicPartition, position: Position) -> None:
        """`tp` resumes at `position`, already checked against the log."""
        self.checked[tp] = position

    async def checkpoint(
        self,
        positions: dict[TopicPartition, Position],
        snapshot: Callable[[int], bytes | None],
    ) -> list[TopicPartition]:
        """Deliver, check, store, commit; return the partitions whose log changed.

        `snapshot(partition)` encodes a partition's state, or returns None
        when nothing changed since its last snapshot.
        """
        if self.failed:
            raise CheckpointFailed("a checkpoint after a failure would store an inconsistent state")
        self.last = self.clock()
        try:
            await self.deliver()
            try:
                changed = await self.offsets.unmatched(
                    {tp: self.checked.get(tp, p) for tp, p in positions.items()}
                ) if positions else []
            except KafkaError as exc:
                # Nothing stored or committed yet: the next checkpoint tries again.
                log.warning("checkpoint skipped: the reports log could not be checked",
                            extra={"error": repr(exc)})
                return []
            commit: dict[TopicPartition, int] = {}
            for tp, position in positions.items():
                if tp in changed:
                    continue
                self.checked[tp] = position  # the log is still the one counted
                if tp in self.uncommitted:
                    commit[tp] = self.uncommitted[tp]
                    continue
                data = snapshot(tp.partition) if self.store is not None else None
                if data is not None:
                    await self._store(tp.partition, data, position)
                    self.uncommitted[tp] = position.offset
                commit[tp] = position.offset
        except BaseException:
            self.failed = True
            raise
        if commit:
            try:
                await self.offsets.commit(commit)
            except KafkaError as exc:
                log.warning("commit refused; the stored state stays consistent",
                            extra={"error": repr(exc)})
            else:
                for tp, offset in commit.items():
                    self.uncommitted.pop(tp, None)
                    if self.store is not None:
                        self.store.committed(tp.partition, offset)
        return changed

    async def _store(self, partition: int, data: bytes, position: Position) -> None:
        assert self.store is not None
        deadline = self.clock() + self.store_timeout
        backoff, most = STORE_BACKOFF
        while True:
            try:
                await self.store.save(partition, data, position.offset, position.mark)
                return
            except KafkaError:
                if self.clock() >= deadline:
                    raise
            await self.sleep(backoff)
            backoff = min(backoff * 2, most)
            self.on_store_retry()
