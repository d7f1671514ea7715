"""The checkpoint's order and failure rule, with in-memory stand-ins for the broker's parts."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaTimeoutError

from stream_detector.io.checkpoint import Checkpointer, CheckpointFailed, Position
from stream_detector.io.publisher import DeliveryFailed
from stream_detector.io.state import LocalSnapshotStore

P0, P1 = TopicPartition("reports", 0), TopicPartition("reports", 1)


class Journal:
    """What happened, in order; each stand-in writes to it and can be told to fail."""

    def __init__(self, changed: tuple[TopicPartition, ...] = ()):
        self.events: list[tuple] = []
        self.changed = changed  # partitions whose log no longer holds their mark
        self.deliver_fails = False
        self.store_fails = 0  # the next n saves raise
        self.commit_fails = False
        self.now = 0.0

    async def deliver(self) -> None:
        if self.deliver_fails:
            raise DeliveryFailed("setting alerts_topic: not delivered")
        self.events.append(("deliver",))

    async def unmatched(self, positions):
        return [tp for tp in positions if tp in self.changed]

    async def commit(self, offsets) -> None:
        if self.commit_fails:
            raise CommitFailedError("the group rebalanced")
        self.events.append(("commit", dict(offsets)))

    async def save(self, partition, data, offset, mark=None) -> None:
        if self.store_fails:
            self.store_fails -= 1
            raise KafkaTimeoutError()
        self.events.append(("store", partition, data, offset, mark))

    async def load(self, partition, committed):
        return None

    def committed(self, partition, offset) -> None:
        """The journal keeps no slots; commits are in its events."""

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def checkpointer(journal: Journal, store_timeout: float = 10.0) -> Checkpointer:
    return Checkpointer(journal.deliver, journal, journal, interval=5.0,
                        store_timeout=store_timeout, clock=journal.clock, sleep=journal.sleep)


def snapshots(partition: int) -> bytes:
    return f"state-{partition}".encode()


POSITIONS = {P0: Position(100, "99:1:7"), P1: Position(40, "39:1:8")}


async def test_outputs_are_delivered_then_snapshots_stored_then_offsets_committed():
    journal = Journal()
    changed = await checkpointer(journal).checkpoint(POSITIONS, snapshots)
    assert changed == []
    assert journal.events == [
        ("deliver",),
        ("store", 0, b"state-0", 100, "99:1:7"),
        ("store", 1, b"state-1", 40, "39:1:8"),
        ("commit", {P0: 100, P1: 40}),
    ]


async def test_after_a_delivery_failure_nothing_is_stored_or_committed_ever():
    journal = Journal()
    cp = checkpointer(journal)
    journal.deliver_fails = True
    with pytest.raises(DeliveryFailed):
        await cp.checkpoint(POSITIONS, snapshots)
    journal.deliver_fails = False  # even once the broker is back
    with pytest.raises(CheckpointFailed):
        await cp.checkpoint(POSITIONS, snapshots)
    assert journal.events == []


async def test_after_the_loop_failed_nothing_is_stored_or_committed():
    journal = Journal()
    cp = checkpointer(journal)
    cp.fail()
    with pytest.raises(CheckpointFailed):
        await cp.checkpoint(POSITIONS, snapshots)
    assert journal.events == []


async def test_a_store_that_keeps_failing_fails_the_checkpointer_before_any_commit():
    journal = Journal()
    cp = checkpointer(journal, store_timeout=10.0)
    journal.store_fails = 10**6
    with pytest.raises(KafkaTimeoutError):
        await cp.checkpoint(POSITIONS, snapshots)
    assert journal.now >= 10.0  # it retried for its whole budget
    assert [e for e in journal.events if e[0] != "deliver"] == []
    with pytest.raises(CheckpointFailed):
        await cp.checkpoint(POSITIONS, snapshots)


async def test_a_store_that_recovers_within_its_budget_is_retried():
    journal = Journal()
    journal.store_fails = 3
    await checkpointer(journal).checkpoint({P0: POSITIONS[P0]}, snapshots)
    assert journal.events[-2:] == [("store", 0, b"state-0", 100, "99:1:7"),
                                   ("commit", {P0: 100})]


async def test_a_partition_whose_log_changed_is_neither_stored_nor_committed():
    journal = Journal(changed=(P1,))  # partition 1's log no longer holds its last record
    changed = await checkpointer(journal).checkpoint(POSITIONS, snapshots)
    assert changed == [P1]
    assert journal.events == [("deliver",), ("store", 0, b"state-0", 100, "99:1:7"),
                              ("commit", {P0: 100})]


async def test_an_unchanged_partition_is_committed_without_a_snapshot():
    journal = Journal()
    await checkpointer(journal).checkpoint(POSITIONS, lambda p: None if p == 1 else snapshots(p))
    assert journal.events == [("deliver",), ("store", 0, b"state-0", 100, "99:1:7"),
                              ("commit", {P0: 100, P1: 40})]


async def test_after_a_refused_commit_the_stored_position_is_committed_before_storing_again():
    journal = Journal()
    cp = checkpointer(journal)
    journal.commit_fails = True
    await cp.checkpoint({P0: Position(100, "m100")}, snapshots)  # stored, not committed
    journal.commit_fails = False
    # Storing again would overwrite the slot the committed offset still needs.
    await cp.checkpoint({P0: Position(150, "m150")}, snapshots)
    await cp.checkpoint({P0: Position(200, "m200")}, snapshots)
    assert journal.events == [
        ("deliver",), ("store", 0, b"state-0", 100, "m100"),
        ("deliver",), ("commit", {P0: 100}),
        ("deliver",), ("store", 0, b"state-0", 200, "m200"), ("commit", {P0: 200}),
    ]


def test_it_is_due_after_its_interval_on_the_injected_clock():
    journal = Journal()
    cp = checkpointer(journal)
    assert not cp.due()
    journal.now = 5.0
    assert cp.due()


async def test_the_mark_checked_is_the_one_taken_at_the_last_checkpoint():
    # A mark taken since the last checkpoint may already come from a new log
    # (a topic re-created under a running detector) and would match it.
    journal = Journal()
    checked: list[dict] = []

    async def unmatched(positions):
        checked.append({tp: p.mark for tp, p in positions.items()})
        return []

    journal.unmatched = unmatched
    cp = checkpointer(journal)
    for offset, mark in ((100, "m100"), (150, "m150"), (200, "m200")):
        await cp.checkpoint({P0: Position(offset, mark)}, snapshots)
    assert checked == [{P0: "m100"}, {P0: "m100"}, {P0: "m150"}]


def state_at(offset: int):
    return lambda partition: f"at-{offset}".encode()


async def test_two_crashes_each_after_a_refused_commit_keep_the_snapshot_the_commit_needs(
    tmp_path,
):
    log = Journal()

    def process(store):
        return Checkpointer(log.deliver, log, store, interval=5.0, store_timeout=10.0,
                            clock=log.clock, sleep=log.sleep)

    # Process 1 commits 100, then stores 200 whose commit is refused, and dies.
    store = LocalSnapshotStore(tmp_path)
    assert await store.load(0, committed=None) is None
    first = process(store)
    await first.checkpoint({P0: Position(100, "m100")}, state_at(100))
    log.commit_fails = True
    await first.checkpoint({P0: Position(200, "m200")}, state_at(200))

    # Process 2 restores 100, stores 300 whose commit is refused too, and dies.
    store = LocalSnapshotStore(tmp_path)
    assert (await store.load(0, committed=100)).data == b"at-100"
    await process(store).checkpoint({P0: Position(300, "m300")}, state_at(300))
    assert [e for e in log.events if e[0] == "commit"] == [("commit", {P0: 100})]

    # Process 3 still finds what the committed offset restores.
    store = LocalSnapshotStore(tmp_path)
    restored = await store.load(0, committed=100)
    assert (restored.data, restored.offset, restored.mark) == (b"at-100", 100, "m100")

    # Once a newer snapshot's commit succeeds, the old slot is free again.
    log.commit_fails = False
    third = process(store)
    await third.checkpoint({P0: Position(400, "m400")}, state_at(400))
    await third.checkpoint({P0: Position(500, "m500")}, state_at(500))
    assert log.events[-1] == ("commit", {P0: 500})
    reopened = LocalSnapshotStore(tmp_path)
    assert (await reopened.load(0, committed=500)).data == b"at-500"
    assert (await reopened.load(0, committed=400)).data == b"at-400"
    assert await reopened.load(0, committed=100) is None
