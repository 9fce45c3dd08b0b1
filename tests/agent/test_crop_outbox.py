"""A plate read's evidence crop is queued for upload in the transaction that releases the read:
in the blob lane (after thumbnails, before video), once, and only for reads with a crop."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

from agent.relay import BLOB_KINDS, MESSAGE_ONLY_KINDS
from agent.store import PRIORITY, Store
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
