"""Records one camera without transcoding: an ffmpeg ``-c copy`` segmenter, supervised.

Each closed segment goes through the steps of docs/design/overview.md "Segment": validate,
hash, fsync, then register with its outbox row in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import CameraConfig
from agent.store import Segment, Store

log = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 60.0


class InvalidSegment(ValueError):
    """A closed segment that is not playable media; it is quarantined, never synced."""


@dataclass(frozen=True)
class ProbeResult:
    duration_ms: int
    codec: str


def backoff_delays(start_s: float = BACKOFF_START_S, cap_s: float = BACKOFF_CAP_S) -> list[float]:
    """The reconnect schedule before jitter: 1, 2, 4, ... capped."""
    delays, d = [], start_s
    while d < cap_s:
        delays.append(d)
        d *= 2
    return [*delays, cap_s]


def ffmpeg_command(camera: CameraConfig, out_dir: Path) -> list[str]:
    """The recorder: remux the camera's first video stream into keyframe-aligned MP4 segments.

    ffmpeg prints one CSV line per *closed* segment on stdout (``-segment_list pipe:1``):
    ``name,start_s,end_s`` in stream time.
    """
    return [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
        "-rtsp_transport", camera.transport,
        "-timeout", "10000000",  # microseconds: a dead camera ends the run instead of hanging
        "-i", camera.source_url(),
        "-map", "0:v:0", "-c", "copy",
        "-f", "segment",
        "-segment_time", str(camera.record.segment_seconds),
        "-reset_timestamps", "1",
        "-segment_format", "mp4",
        "-segment_list", "pipe:1", "-segment_list_type", "csv",
        str(out_dir / "%06d.mp4"),
    ]  # fmt: skip


async def probe(path: Path) -> ProbeResult:
    """Media duration and codec by ffprobe; raises InvalidSegment for unplayable files."""
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-select_streams", "v:0",
        "-show_entries", "format=duration:stream=codec_name", "-of", "json", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise InvalidSegment(f"ffprobe failed: {err.decode(errors='replace').strip()[:200]}")
    try:
        info = json.loads(out)
        duration_s = float(info["format"]["duration"])
        codec = info["streams"][0]["codec_name"]
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidSegment(f"no video duration/codec: {exc!r}") from None
    codec = {"hevc": "h265"}.get(codec, codec)
    if codec not in ("h264", "h265"):
        raise InvalidSegment(f"unsupported codec {codec!r}")
    if duration_s <= 0:
        raise InvalidSegment(f"duration {duration_s} s")
    return ProbeResult(round(duration_s * 1000), codec)


def hash_and_sync(path: Path) -> tuple[int, str]:
    """SHA-256 and size of a file, then fsync it and its directory. Blocks: run in a thread."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(fh.fileno())
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size, digest.hexdigest()


class CameraRecorder:
    """Supervises one camera's ffmpeg: restart with backoff and jitter, register segments."""

    def __init__(
        self,
        key: str,
        camera: CameraConfig,
        store: Store,
        spool: Path,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        on_segment: Callable[[Segment], Awaitable[None]] | None = None,
    ) -> None:
        self.key = key
        self.camera = camera
        self.store = store
        self.spool = spool
        self.clock_ms = clock_ms
        self.on_segment = on_segment
        self.status = "offline"
        self.reason = "not started"
        self.segments_registered = 0

    async def run(self) -> None:
        """Record until cancelled; never a busy loop."""
        failures = 0
        while True:
            started = time.monotonic()
            produced = await self.run_once()
            # A run that produced segments resets the backoff: the camera was healthy.
            failures = 0 if produced else failures + 1
            delay = min(BACKOFF_START_S * 2 ** max(failures - 1, 0), BACKOFF_CAP_S)
            delay = max(
                delay * random.uniform(0.8, 1.2), BACKOFF_START_S - (time.monotonic() - started)
            )
            log.info("camera=%s restarting recorder in %.1fs (%s)", self.key, delay, self.reason)
            await asyncio.sleep(delay)

    async def run_once(self) -> int:
        """One RTSP session (a *run*): returns the number of segments registered."""
        run_id = uuid.uuid4()
        run_dir = self.spool / self.key / str(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = ffmpeg_command(self.camera, run_dir)
        log.info("camera=%s run=%s connecting to %s", self.key, run_id, self.camera.url)
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(proc.stderr.read())
        produced = 0
        # Wall clock of stream time 0, fixed at the first closed segment: later segments are
        # placed by media time, so processing delays do not shift them.
        anchor_ms: int | None = None
        try:
            while line := await proc.stdout.readline():
                name, start_s, end_s = line.decode().strip().rsplit(",", 2)
                if anchor_ms is None:
                    anchor_ms = self.clock_ms() - round(float(end_s) * 1000)
                    self.status, self.reason = "online", "recording"
                seg_start_ms = anchor_ms + round(float(start_s) * 1000)
                if await self._close_segment(run_id, run_dir / name, produced, seg_start_ms):
                    produced += 1
        finally:
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
                if proc.returncode is None:
                    proc.kill()
            await proc.wait()
            err = self._redact((await stderr_task).decode(errors="replace"))
        self.status = "offline" if produced or proc.returncode == 0 else "error"
        self.reason = _reason(err, proc.returncode) if err or proc.returncode else "stream ended"
        log.warning("camera=%s run=%s ended: %s", self.key, run_id, self.reason)
        return produced

    def _quarantine(self, path: Path, run_id: uuid.UUID) -> None:
        quarantine = self.spool / "quarantine" / self.key
        quarantine.mkdir(parents=True, exist_ok=True)
        path.replace(quarantine / f"{run_id}-{path.name}")

    def _redact(self, text: str) -> str:
        """ffmpeg echoes its input URL in errors: never let credentials reach logs or status."""
        text = text.replace(self.camera.source_url(), self.camera.url)
        if self.camera.password is not None and self.camera.password.get_secret_value():
            text = text.replace(self.camera.password.get_secret_value(), "***")
        return text

    async def _close_segment(self, run_id: uuid.UUID, path: Path, seq: int, start_ms: int) -> bool:
        try:
            info = await probe(path)  # step 2: validate
        except InvalidSegment as exc:
            await asyncio.to_thread(self._quarantine, path, run_id)
            log.error("camera=%s segment %s quarantined: %s", self.key, path.name, exc)
            return False
        size, sha = await asyncio.to_thread(hash_and_sync, path)  # step 3: hash, fsync
        seg = Segment(
            segment_id=uuid.uuid4(),
            camera_id=self.camera.id,
            run_id=run_id,
            seq=seq,
            path=path,
            start_ms=start_ms,
            duration_ms=info.duration_ms,
            size_bytes=size,
            sha256=sha,
            codec=info.codec,
        )
        await self.store.add_segment(seg)  # step 4: segment + outbox row, one transaction
        self.segments_registered += 1
        if self.on_segment is not None:
            await self.on_segment(seg)
        return True


def _reason(stderr: str, returncode: int | None) -> str:
    """A human reason for a failed run, from ffmpeg's last error lines."""
    text = stderr.lower()
    if "401" in text or "unauthorized" in text:
        return "authentication failed"
    if "404" in text or "not found" in text:
        return "stream not found (check the URL path)"
    if "connection refused" in text or "timed out" in text or "no route" in text:
        return "camera unreachable"
    last = stderr.strip().splitlines()[-1:] or [f"ffmpeg exited with {returncode}"]
    return last[0][:200]
