"""A plate read's evidence crop is queued for upload in the transaction that releases the read:
in the blob lane (after thumbnails, before video), once, and only for reads with a crop; once
central has both for longer than the history is kept, both are forgotten."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

from agent.eviction import Budget, Evictor
from agent.relay import BLOB_KINDS, MESSAGE_ONLY_KINDS
from agent.store import PRIORITY, LprRead, Store
from tests.agent.test_lpr_store import lpr_read, store  # noqa: F401  (the store fixture)


async def test_released_read_queues_its_crop_in_the_blob_lane(store: Store) -> None:  # noqa: F811
    camera = uuid.uuid4()
    with_crop = lpr_read(camera, 1_700_000_000_000)
    without = replace(
        lpr_read(camera, 1_700_000_001_000, "ABC1234"),
        crop_path=None, crop_size_bytes=None, crop_sha256=None,
    )  # fmt: skip
    for read in (with_crop, without):
        assert await store.add_lpr_read(read, [], hold_ms=0)
    assert await store.pending_of(BLOB_KINDS, 10) == []  # held reads queue nothing yet
    assert await store.release_plate_reads() == 2
    assert await store.release_plate_reads() == 0

    blobs = await store.pending_of(BLOB_KINDS, 10)
    assert [(r.kind, r.ref_id) for r in blobs] == [("crop", str(with_crop.read_id))]
    assert json.loads(blobs[0].payload) == {
        "read_id": str(with_crop.read_id), "camera_id": str(camera),
        "path": with_crop.crop_path, "size_bytes": 1234, "sha256": "c" * 64,
    }  # fmt: skip
    assert PRIORITY["thumbnail"] < blobs[0].priority < PRIORITY["segment"]
    messages = await store.pending_of(MESSAGE_ONLY_KINDS, 10)
    assert {r.kind for r in messages} == {"plate_read"} and len(messages) == 2
    backlog = await store.backlog()
    assert backlog["pending"] == {"plate_read": 2, "crop": 1}
    assert backlog["pending_blob_bytes"] == 1234


async def test_crop_row_commits_with_its_read(store: Store) -> None:  # noqa: F811
    # Released one way or the other, a read's row and its crop's are written together.
    read = lpr_read(uuid.uuid4(), 1_700_000_000_000)
    await store.add_lpr_read(read, [], hold_ms=60_000)

    def rows() -> list[tuple[str, int]]:
        return store.db.execute("SELECT kind, created_ms FROM outbox ORDER BY id").fetchall()

    assert await store._run(rows) == []
    await store.release_plate_reads(now_ms=1_700_000_000_000 + 10**12)
    got = await store._run(rows)
    assert [k for k, _ in got] == ["plate_read", "crop"] and got[0][1] == got[1][1]


def crop_exists(read: LprRead) -> bool:
    return Path(read.crop_path or "").exists()


async def test_reads_central_has_had_are_forgotten_with_their_crops(
    store: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    """docs/design/segments.md "History": once central has a read and its crop for longer than
    the history is kept, the crop file and the rows go; a read whose crop is still unsent, or
    that is recent, or unsent, stays."""
    camera = uuid.uuid4()
    reads = {}
    for name, plate in (("old", "BRA2E19"), ("crop_unsent", "ABC1234"), ("recent", "QSV8O04"),
                        ("unsent", "CGS7J15")):  # fmt: skip
        crop = tmp_path / f"{name}.jpg"
        crop.write_bytes(b"jpeg")
        reads[name] = replace(lpr_read(camera, 1_700_000_000_000), read_id=uuid.uuid4(),
                              plate=plate, crop_path=str(crop))  # fmt: skip
        assert await store.add_lpr_read(reads[name], [], hold_ms=0)
    await store.release_plate_reads()

    def sent(kind: str, read: str, at_ms: int) -> None:
        store.db.execute(
            "UPDATE outbox SET sent_ms = ? WHERE kind = ? AND ref_id = ?",
            [at_ms, kind, str(reads[read].read_id)],
        )

    await store._run(lambda: [
        sent("plate_read", "old", 1_000), sent("crop", "old", 1_000),
        sent("plate_read", "crop_unsent", 1_000),
        sent("plate_read", "recent", 9_000), sent("crop", "recent", 9_000),
    ])  # fmt: skip
    evictor = Evictor(store, tmp_path, lambda: Budget(min_free_bytes=0, history_days=1),
                      clock_ms=lambda: 5_000 + 86_400_000)  # fmt: skip
    assert await evictor.purge_history(evictor.budget()) == 1
    left = await store._run(lambda: store.db.execute("SELECT plate FROM plate_reads").fetchall())
    assert sorted(r[0] for r in left) == ["ABC1234", "CGS7J15", "QSV8O04"]
    assert not crop_exists(reads["old"]), "its crop file went first"
    assert all(crop_exists(reads[n]) for n in ("crop_unsent", "recent", "unsent"))
    kinds = await store._run(lambda: store.db.execute("SELECT kind, ref_id FROM outbox").fetchall())
    assert str(reads["old"].read_id) not in {r[1] for r in kinds}
