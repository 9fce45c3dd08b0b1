"""Records one camera without transcoding: an ffmpeg ``-c copy`` segmenter, supervised.

Each closed segment goes through the steps of docs/design/segments.md (cited below by number):
validate, hash, fsync, then register with its outbox row in one transaction. ffmpeg dies with
the agent (PDEATHSIG), and what a run leaves unregistered is recovered when its ffmpeg exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.clock import ClockState, read_clock_state
from agent.config import CameraConfig
from agent.media import InvalidSegment, ProbeResult, die_with_parent, hash_and_sync, probe
from agent.spool import create_run_dir, quarantine, recover_run, segment_seq
from agent.store import Segment, Store

__all__ = [
    "BACKOFF_CAP_S",
    "BACKOFF_START_S",
    "CameraRecorder",
    "InvalidSegment",
    "ProbeResult",
    "backoff_delays",
    "ffmpeg_command",
    "hash_and_sync",
    "probe",
]

log = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 60.0


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
        clock_state: Callable[[], ClockState] = read_clock_state,
    ) -> None:
        self.key = key
        self.camera = camera
        self.store = store
        self.spool = spool
        self.clock_ms = clock_ms
        self.clock_state = clock_state
        self.on_segment = on_segment
        self.status = "offline"
        self.reason = "not started"
        self.segments_registered = 0
        self.ffmpeg_pid: int | None = None  # while a run's ffmpeg is running

    async def run(self) -> None:
        """Record until cancelled; never a busy loop."""
        failures = 0
        while True:
            started = time.monotonic()
            try:
                produced = await self.run_once()
            except Exception as exc:
                # One camera's failure (a full disk, an unreadable spool, a bug) must not stop
                # the agent's other cameras: report it, back off, try again.
                log.exception("camera=%s recorder failed", self.key)
                self.status, self.reason = "error", self._redact(f"recorder failed: {exc}")[:200]
                produced = 0
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
        # docs/design/segments.md step 0: the run's camera is recorded before any file can
        # exist in its directory, so recovery can register a file of a run with no segment yet.
        await self.store.add_run(run_id, self.key, self.camera.id, self.clock_ms())
        run_dir = await asyncio.to_thread(create_run_dir, self.spool, self.key, run_id)
        cmd = ffmpeg_command(self.camera, run_dir)
        log.info("camera=%s run=%s connecting to %s", self.key, run_id, self.camera.url)
        # Step 0: ffmpeg gets SIGKILL from the kernel if the agent dies, even by `kill -9`, so
        # no orphan keeps writing into a spool the next agent is reconciling.
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent(),
        )
        self.ffmpeg_pid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(proc.stderr.read())
        produced = 0
        # Wall clock of stream time 0, fixed at the first closed segment: later segments are
        # placed by media time, so processing delays and wall-clock steps do not move them
        # (docs/design/segments.md "Time").
        anchor_ms: int | None = None
        shifted_ms = 0
        stalled: str | None = None
        try:
            # Step 1: ffmpeg prints a segment's name only after closing it. A stream that stays
            # connected but stops delivering video closes no segment: that is a stall.
            stall_s = self.camera.record.stall_after_s()
            while True:
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), stall_s)
                except TimeoutError:
                    stalled = f"stalled: no segment for {stall_s:.0f} s"
                    log.warning("camera=%s run=%s %s; restarting", self.key, run_id, stalled)
                    break
                if not line:
                    break
                name, start_s, end_s = line.decode().strip().rsplit(",", 2)
                path = run_dir / name
                seq = segment_seq(path)
                if seq is None:
                    log.error("camera=%s unexpected segment name %r", self.key, name)
                    continue
                if anchor_ms is None:
                    anchor_ms = self.clock_ms() - round(float(end_s) * 1000)
                    shifted_ms = await self._no_overlap_shift(
                        run_id, anchor_ms + round(float(start_s) * 1000)
                    )
                    anchor_ms += shifted_ms
                    self.status, self.reason = "online", "recording"
                seg_start_ms = anchor_ms + round(float(start_s) * 1000)
                if await self._close_segment(run_id, path, seq, seg_start_ms, shifted_ms):
                    produced += 1
        finally:
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
                if proc.returncode is None:
                    proc.kill()
            await proc.wait()
            self.ffmpeg_pid = None
            err = self._redact((await stderr_task).decode(errors="replace"))
        self.status = "offline" if produced or proc.returncode == 0 else "error"
        if stalled:
            self.status, self.reason = "error", stalled
        else:
            self.reason = (
                _reason(err, proc.returncode) if err or proc.returncode else "stream ended"
            )
            # ffmpeg does not always say ENOSPC (a failed trailer is "Invalid argument")
            if self.status == "error" and await asyncio.to_thread(_spool_full, self.spool):
                self.reason = DISK_FULL
        log.warning("camera=%s run=%s ended: %s", self.key, run_id, self.reason)
        produced += await self._recover_run(run_id)
        return produced

    async def _no_overlap_shift(self, run_id: uuid.UUID, first_start_ms: int) -> int:
        """docs/design/segments.md "Time": a run never starts before the camera's previous
        video ends. Only a wall clock stepped back (or a wrong clock corrected) gets here: the
        run is moved forward, and by how much is recorded with each of its segments."""
        previous_end = await self.store.camera_end_ms(self.camera.id)
        if previous_end is None or first_start_ms >= previous_end:
            return 0
        shift = previous_end - first_start_ms
        log.warning(
            "camera=%s run=%s wall clock is %d ms behind the camera's previous segment "
            "(clock stepped back?): run placed after it",
            self.key, run_id, shift,
        )  # fmt: skip
        return shift

    async def _recover_run(self, run_id: uuid.UUID) -> int:
        """docs/design/segments.md R3-R4 for this run, now that its ffmpeg has exited: the file
        it was writing when it died (or closed without listing) is registered if complete,
        quarantined if not; an empty run directory is removed. Not on cancellation: the agent
        is stopping and start-up recovery does the same next time."""
        try:
            report = await recover_run(self.store, self.spool, self.key, run_id)
        except OSError as exc:
            log.error("camera=%s run=%s recovery failed: %s", self.key, run_id, exc)
            return 0
        for seg in report.registered:
            self.segments_registered += 1
            if self.on_segment is not None:
                await self.on_segment(seg)
        return len(report.registered)

    def _redact(self, text: str) -> str:
        """ffmpeg echoes its input URL in errors: never let credentials reach logs or status."""
        text = text.replace(self.camera.source_url(), self.camera.url)
        if self.camera.password is not None and self.camera.password.get_secret_value():
            text = text.replace(self.camera.password.get_secret_value(), "***")
        return text

    async def _close_segment(
        self, run_id: uuid.UUID, path: Path, seq: int, start_ms: int, shifted_ms: int
    ) -> bool:
        try:
            info = await probe(path)  # docs/design/segments.md step 2: validate
        except InvalidSegment as exc:
            # Step 2: an unplayable file leaves the run for quarantine/ and is never synced.
            await asyncio.to_thread(quarantine, self.spool, self.key, run_id, path)
            log.error("camera=%s segment %s quarantined: %s", self.key, path.name, exc)
            # Connected but unusable (an unsupported codec, no keyframes): say so in the
            # status, or the camera would look online while nothing is kept.
            self.status, self.reason = "error", f"segments refused: {exc}"[:200]
            return False
        # docs/design/segments.md step 3: hash, then fsync the file and its directory.
        size, sha = await asyncio.to_thread(hash_and_sync, path)
        clock = self.clock_state()
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
            clock_sync=clock.sync,
            clock_error_ms=clock.error_ms,
            shifted_ms=shifted_ms,
        )
        # docs/design/segments.md step 4: segment + outbox row in one transaction. False: the
        # path was already registered (never twice, I3); nothing more to do for it.
        if not await self.store.add_segment(seg):
            return False
        self.segments_registered += 1
        self.status, self.reason = "online", "recording"
        if self.on_segment is not None:
            await self.on_segment(seg)
        return True


DISK_FULL = "disk full: no space left on the spool's filesystem"


def _spool_full(spool: Path) -> bool:
    """Less than a segment's worth of room (1 MiB) left where segments are written."""
    try:
        st = os.statvfs(spool)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1024**2


def _reason(stderr: str, returncode: int | None) -> str:
    """A human reason for a failed run, from ffmpeg's last error lines."""
    text = stderr.lower()
    if "no space left" in text:
        return DISK_FULL
    if "401" in text or "unauthorized" in text:
        return "authentication failed"
    if "404" in text or "not found" in text:
        return "stream not found (check the URL path)"
    if "connection refused" in text or "timed out" in text or "no route" in text:
        return "camera unreachable"
    last = stderr.strip().splitlines()[-1:] or [f"ffmpeg exited with {returncode}"]
    return last[0][:200]
