"""The SQLite store: segment and outbox rows commit together; priority order; idempotence."""

import sqlite3
import uuid
from pathlib import Path

import pytest

from agent.store import PRIORITY, Segment, Store


def make_segment(tmp_path: Path, seq: int = 0) -> Segment:
    return Segment(
        segment_id=uuid.uuid4(), camera_id=uuid.uuid4(), run_id=uuid.uuid4(), seq=seq,
        path=tmp_path / f"{seq:06d}.mp4", start_ms=1_700_000_000_000 + seq * 2000,
        duration_ms=2000, size_bytes=100, sha256="b" * 64, codec="h264",
    )  # fmt: skip


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "agent.sqlite3")
    await s.open()
    yield s
    await s.close()


@pytest.mark.timeout(30)
async def test_segment_and_outbox_row_together(store: Store, tmp_path: Path) -> None:
    seg = make_segment(tmp_path)
    assert await store.add_segment(seg)
    assert not await store.add_segment(seg), "same file registered twice"
    rows = await store.pending()
    assert [(r.kind, r.ref_id) for r in rows] == [("segment", str(seg.segment_id))]
    assert await store.segment(str(seg.segment_id)) == seg
    await store.mark_sent(rows[0].id)
    assert await store.pending() == []
    backlog = await store.backlog()
    assert backlog["sent"] == 1 and backlog["pending"] == {}


@pytest.mark.timeout(30)
async def test_failed_outbox_insert_rolls_back_segment(store: Store, tmp_path: Path) -> None:
    seg = make_segment(tmp_path)
    # Pre-existing outbox row with the same (kind, ref_id): the pair's insert must fail whole.
    await store._run(
        lambda: store.db.execute(
            "INSERT INTO outbox (kind, priority, ref_id, payload, created_ms)"
            " VALUES ('segment', 40, ?, '{}', 0)",
            [str(seg.segment_id)],
        )
    )
    with pytest.raises(sqlite3.IntegrityError):
        await store.add_segment(seg)
    count = await store._run(lambda: store.db.execute("SELECT count(*) FROM segments").fetchone())
    assert count[0] == 0


@pytest.mark.timeout(30)
async def test_pending_in_priority_then_age_order(store: Store, tmp_path: Path) -> None:
    for seq in range(3):
        await store.add_segment(make_segment(tmp_path, seq))
    await store._run(
        lambda: store.db.execute(
            "INSERT INTO outbox (kind, priority, ref_id, payload, created_ms)"
            " VALUES ('plate_read', ?, 'r1', '{}', 0)",
            [PRIORITY["plate_read"]],
        )
    )
    kinds = [r.kind for r in await store.pending()]
    assert kinds == ["plate_read", "segment", "segment", "segment"]
    ids = [r.id for r in await store.pending() if r.kind == "segment"]
    assert ids == sorted(ids)


@pytest.mark.timeout(30)
async def test_pending_of_through_the_head_leaves_newer_rows(store: Store) -> None:
    """The relay's backlog read stops at the newest row of its start (``outbox_head``); rows
    written later are read apart, from their own position, within their priority."""
    from shared.messages import PlateRead

    def reads(n: int) -> list[PlateRead]:
        return [
            PlateRead(read_id=uuid.uuid4(), agent_id=uuid.uuid4(), camera_id=uuid.uuid4(),
                      plate="BRA2E19", confidence=0.9, seen_ms=1_700_000_000_000)
            for _ in range(n)
        ]  # fmt: skip

    kinds = ("plate_read", "loss_event")
    assert await store.outbox_head() == 0
    await store.add_plate_reads(reads(5))
    head = await store.outbox_head()
    old = await store.pending_of(kinds, 100, through=head)
    assert len(old) == 5 and old[-1].id == head
    await store.add_plate_reads(reads(3))
    assert await store.outbox_head() == head + 3
    # The backlog read, from its position, never reaches the newer rows.
    rest = await store.pending_of(kinds, 100, (old[1].priority, old[1].id), through=head)
    assert [r.id for r in rest] == [r.id for r in old[2:]]
    assert await store.pending_of(kinds, 100, (old[-1].priority, old[-1].id), through=head) == []
    # The newer rows of the priority, after the head.
    p = PRIORITY["plate_read"]
    newer = await store.pending_of(kinds, 100, newer=(p, head))
    assert [r.id for r in newer] == [head + 1, head + 2, head + 3]
    assert await store.pending_of(kinds, 100, newer=(PRIORITY["loss_event"], 0)) == []
    with pytest.raises(ValueError, match="newer"):
        await store.pending_of(kinds, 100, (p, head), newer=(p, head))
    await store.mark_sent_many([r.id for r in old])
    assert await store.pending_of(kinds, 100, through=head) == []


@pytest.mark.timeout(30)
async def test_reopen_keeps_data_and_schema(tmp_path: Path) -> None:
    s = Store(tmp_path / "a.sqlite3")
    await s.open()
    await s.add_segment(make_segment(tmp_path))
    await s.close()
    s2 = Store(tmp_path / "a.sqlite3")
    await s2.open()
    try:
        assert len(await s2.pending()) == 1
        mode = await s2._run(lambda: s2.db.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
    finally:
        await s2.close()


@pytest.mark.timeout(30)
async def test_plate_reads_with_outbox_rows_idempotent(store: Store) -> None:
    from shared.messages import PlateRead

    reads = [
        PlateRead(read_id=uuid.uuid4(), agent_id=uuid.uuid4(), camera_id=uuid.uuid4(),
                  plate="BRA2E19", confidence=0.9, seen_ms=1_700_000_000_000 + i)
        for i in range(50)
    ]  # fmt: skip
    assert await store.add_plate_reads(reads) == 50
    assert await store.add_plate_reads(reads[:10]) == 0  # same read_ids: nothing new
    rows = await store.pending(limit=100)
    assert [r.kind for r in rows] == ["plate_read"] * 50
    assert PlateRead.model_validate(rows[0].payload) == reads[0]
    await store.mark_sent_many([r.id for r in rows])
    assert await store.pending() == []
