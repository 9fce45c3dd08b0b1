"""Thumbnails: one decoded keyframe, scaled, as a JPEG; older unsent ones are superseded."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import cv2
import pytest

from agent.store import Store
from agent.thumbnails import ThumbnailError, render_thumbnail
from devstack.scene import make_scene_video


@pytest.mark.timeout(120)
def test_render_from_a_segment(tmp_path: Path) -> None:
    scene = make_scene_video(tmp_path / "scene", seconds=4, width=1280, height=720)
    segment = tmp_path / "seg.mp4"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(scene.video), "-c", "copy", "-t", "2",
         str(segment)],
        check=True, timeout=60,
    )  # fmt: skip
    out = tmp_path / "thumb.jpg"
    size, sha = render_thumbnail(segment, out, 320)
    image = cv2.imread(str(out))
    assert image is not None and image.shape[:2] == (180, 320)
    assert size == out.stat().st_size and len(sha) == 64

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(ThumbnailError):
        render_thumbnail(broken, tmp_path / "x.jpg", 320)


@pytest.mark.timeout(30)
async def test_newer_thumbnail_supersedes_unsent_older(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.sqlite3")
    await store.open()
    try:
        camera = str(uuid.uuid4())

        def thumb(n: int) -> dict[str, object]:
            return {"thumbnail_id": str(uuid.uuid4()), "camera_id": camera, "taken_ms": n,
                    "path": f"/spool/{n}.jpg", "size_bytes": 1, "sha256": "a" * 64}  # fmt: skip

        assert await store.add_thumbnail(thumb(1)) == []
        assert await store.add_thumbnail(thumb(2)) == ["/spool/1.jpg"]
        other = {**thumb(3), "camera_id": str(uuid.uuid4())}
        assert await store.add_thumbnail(other) == []  # another camera's is independent
        pending = [r.payload["taken_ms"] for r in await store.pending() if r.kind == "thumbnail"]
        assert sorted(pending) == [2, 3]
    finally:
        await store.close()
