"""The local snapshot store: two slots, never state ahead of the committed offset."""

from __future__ import annotations

from stream_detector.io.state import LocalSnapshotStore


async def test_newest_snapshot_not_ahead_of_the_committed_offset(tmp_path):
    store = LocalSnapshotStore(tmp_path)
    await store.save(3, b"first", offset=100)
    await store.save(3, b"second", offset=250)

    # A fresh process (new store object) reads what is on disk.
    reopened = LocalSnapshotStore(tmp_path)
    assert (await reopened.load(3, committed=250)).data == b"second"
    # Crashed after storing "second" but before committing 250: use the older one.
    older = await reopened.load(3, committed=100)
    assert (older.data, older.offset) == (b"first", 100)
    assert await reopened.load(3, committed=None) is None
    assert await reopened.load(4, committed=100) is None


async def test_a_third_save_overwrites_the_oldest_slot_and_corruption_is_ignored(tmp_path):
    store = LocalSnapshotStore(tmp_path)
    for offset, data in ((10, b"a"), (20, b"b"), (30, b"c")):
        await store.save(0, data, offset=offset)
    assert (await LocalSnapshotStore(tmp_path).load(0, committed=30)).data == b"c"
    assert await LocalSnapshotStore(tmp_path).load(0, committed=15) is None  # "a" is gone

    newest = tmp_path / "partition-0.1.snap"  # generation 3 lives in slot 3 % 2
    newest.write_bytes(newest.read_bytes()[:-1] + b"X")  # a torn or damaged file
    assert (await LocalSnapshotStore(tmp_path).load(0, committed=30)).data == b"b"
