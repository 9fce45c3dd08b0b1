"""Central's video work, all without re-encoding: join segments into a clip (ffmpeg's concat
demuxer) and remux one segment to MPEG-TS for HLS. ffmpeg and ffprobe run as subprocesses;
object storage calls run in threads."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from minio import Minio

TOOL_TIMEOUT_S = 300.0
DAY_MS = 86_400_000


@dataclass(frozen=True)
class BuiltClip:
    path: Path
    size_bytes: int
    sha256: str
    duration_ms: int


async def build_clip(
    s3: Minio, rows: Sequence[dict[str, Any]], start: datetime, end: datetime, workdir: Path
) -> BuiltClip:
    """Download the segments (sorted by start) and join them, stream copy, into one MP4.

    Trimming without re-encoding: the first segment starts at ``inpoint`` (ffmpeg then begins
    at the keyframe at or before it) and the last stops at ``outpoint``. Footage on either
    side of a gap is joined back to back.
    """
    lines = ["ffconcat version 1.0"]
    for i, row in enumerate(rows):
        local = workdir / f"{i:05d}.mp4"
        await asyncio.to_thread(s3.fget_object, row["bucket"], row["object_key"], str(local))
        lines.append(f"file '{local}'")
        inpoint = (start - row["start_time"]).total_seconds()
        outpoint = (end - row["start_time"]).total_seconds()
        if inpoint > 0:
            lines.append(f"inpoint {inpoint:.3f}")
        if outpoint < row["duration_ms"] / 1000:
            lines.append(f"outpoint {outpoint:.3f}")
    listing = workdir / "list.ffconcat"
    listing.write_text("\n".join(lines) + "\n")
    out = workdir / "clip.mp4"
    await run_tool(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "concat", "-safe", "0",
        "-i", str(listing), "-map", "0:v", "-c", "copy", "-movflags", "+faststart", "-y",
        str(out),
    )  # fmt: skip
    duration = await probe_duration_ms(out)
    digest = await asyncio.to_thread(_sha256, out)
    return BuiltClip(out, out.stat().st_size, digest, duration)


async def remux_to_ts(source: Path, target: Path, start_ms: int) -> None:
    """Rewrap an MP4 segment as MPEG-TS, stream copy. Its timestamps start at the segment's
    time of day (UTC), so consecutive segments of a run continue each other's timeline."""
    offset_s = (start_ms % DAY_MS) / 1000
    await run_tool(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(source),
        "-map", "0:v", "-c", "copy", "-output_ts_offset", f"{offset_s:.3f}",
        "-muxdelay", "0", "-muxpreload", "0", "-f", "mpegts", "-y", str(target),
    )  # fmt: skip


async def probe_duration_ms(path: Path) -> int:
    """The container's duration, by ffprobe."""
    out = await run_tool(
        "ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)
    )
    return round(float(out) * 1000)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


async def run_tool(*cmd: str) -> str:
    """Run a tool; its stdout, or RuntimeError with the end of its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TOOL_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{cmd[0]} timed out") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err.decode(errors='replace').strip()[-500:]}")
    return out.decode().strip()
