"""The reports topic as checkpoints and restores see it: is it still the log we counted?

Offsets alone cannot tell. A broker that came back empty, or a topic deleted
and re-created, starts its offsets at 0 again, and once the new log has grown
past a stored position that position points at reports never counted, with
everything before it skipped in silence. So every position carries a mark of
a record counted just before it (offset, timestamp and a checksum of its
value: the first record of the last batch, an offset the broker was seen to
serve a fetch from), and `ReportsLog.unmatched` reads that record back: if the
log no longer holds it, or holds another one there, the position belongs to
another log. A record that cannot be read back in time from a log that
extends past it proves nothing either way; the position is then taken as it
is.

The check reads one record per partition with a consumer of its own, outside
the group, so the group's fetch positions are never disturbed; it runs once per
checkpoint (every 10 s by default) and on every restore. The status board runs
the same check on the alerts and outages topics it folds.
"""

from __future__ import annotations

import logging
import time
import zlib

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from stream_detector.io.checkpoint import Position

log = logging.getLogger("stream_detector")

# How long reading back the marked records may take.
CHECK_TIMEOUT = 2.0


def record_mark(msg) -> str:
    """What identifies a record of the reports log beyond its offset."""
    return f"{msg.offset}:{msg.timestamp}:{zlib.crc32(msg.value or b'')}"


def marked_offset(mark: str) -> int:
    return int(mark.split(":", 1)[0])


class ReportsLog:
    """Commits the group's offsets, and checks positions against the log."""

    def __init__(self, group: AIOKafkaConsumer, client_options: dict):
        self.group = group
        self.client_options = client_options
        self.reader: AIOKafkaConsumer | None = None  # made on first use

    async def stop(self) -> None:
        if self.reader is not None:
            await self.reader.stop()
            self.reader = None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.group.commit(offsets)

    async def unmatched(self, positions: dict[TopicPartition, Position]) -> list[TopicPartition]:
        """Partitions whose log no longer holds the record their position's mark names.

        A position without a mark (nothing counted yet, or restored from a
        snapshot older than marks) cannot be checked and is taken as it is.
        """
        marked = {tp: p for tp, p in positions.items() if p.mark is not None}
        if not marked:
            return []
        if self.reader is None:
            reader = AIOKafkaConsumer(
                **self.client_options, enable_auto_commit=False, auto_offset_reset="none",
                fetch_max_wait_ms=100,
            )
            try:
                await reader.start()
            except BaseException:
                await reader.stop()  # a reader that never started still holds a client
                raise
            self.reader = reader
        reader = self.reader
        reader.assign(list(marked))
        for tp, position in marked.items():
            reader.seek(tp, marked_offset(position.mark))
        found: dict[TopicPartition, str | None] = {}
        deadline = time.monotonic() + CHECK_TIMEOUT
        while len(found) < len(marked):
            waiting = [tp for tp in marked if tp not in found]
            try:
                batch = await reader.getmany(*waiting, timeout_ms=200)
            except OffsetOutOfRangeError as exc:
                for tp in exc.args[0]:
                    found[tp] = None  # the record is gone: retention, or a shorter log
                continue
            for tp, messages in batch.items():
                if messages and tp not in found:
                    found[tp] = record_mark(messages[0])
            if time.monotonic() > deadline:
                # Nothing came back: a log that ends at or before the marked
                # record no longer holds it (some brokers answer such a fetch
                # with no records rather than an offset out of range).
                ends = await reader.end_offsets(waiting)
                for tp in waiting:
                    if ends[tp] <= marked_offset(marked[tp].mark):
                        found[tp] = None
                    else:
                        log.info("marked record not read back; position taken as it is",
                                 extra={"partition": tp.partition})
                        found[tp] = marked[tp].mark
        return [tp for tp, position in marked.items() if found[tp] != position.mark]
