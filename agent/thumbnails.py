"""Thumbnails for central's mosaics: a small JPEG per camera every N seconds, made cheaply by
decoding only the first keyframe of a closed segment (never the live stream)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path

import cv2

from agent.config import CameraConfig
from agent.store import Segment, Store

log = logging.getLogger(__name__)

JPEG_QUALITY = 70


class ThumbnailError(ValueError):
    """The segment's first frame could not be decoded."""


def render_thumbnail(segment: Path, out: Path, width: int) -> tuple[int, str]:
    """Decode the first frame of ``segment``, scale it to ``width`` and write a JPEG to ``out``
    (atomically). Returns (size, SHA-256). Blocks: run in a thread."""
    capture = cv2.VideoCapture(str(segment))
    try:
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok or frame is None:
        raise ThumbnailError(f"no decodable frame in {segment.name}")
    height = max(1, round(frame.shape[0] * width / frame.shape[1]))
    small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ThumbnailError("JPEG encoding failed")
    data = jpeg.tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return len(data), hashlib.sha256(data).hexdigest()


class Thumbnailer:
    """Called with every registered segment of one camera; queues a thumbnail when due."""

    def __init__(self, key: str, camera: CameraConfig, store: Store, directory: Path) -> None:
        self.key = key
        self.camera = camera
        self.store = store
        self.directory = directory / key
        self._last_monotonic = float("-inf")

    async def on_segment(self, seg: Segment) -> None:
        interval = self.camera.record.thumbnail_seconds
        if interval == 0 or time.monotonic() - self._last_monotonic < interval:
            return
        self._last_monotonic = time.monotonic()
        thumb_id = uuid.uuid4()
        out = self.directory / f"{thumb_id}.jpg"
        try:
            size, sha = await asyncio.to_thread(
                render_thumbnail, seg.path, out, self.camera.record.thumbnail_width
            )
        except (ThumbnailError, OSError) as exc:
            # A thumbnail is a convenience: never let it disturb recording.
            log.warning("camera=%s thumbnail skipped: %s", self.key, exc)
            return
        dropped = await self.store.add_thumbnail(
            {
                "thumbnail_id": str(thumb_id),
                "camera_id": str(self.camera.id),
                "taken_ms": seg.start_ms,
                "path": str(out),
                "size_bytes": size,
                "sha256": sha,
            }
        )
        await asyncio.to_thread(_delete, dropped)


def _delete(paths: list[str]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
