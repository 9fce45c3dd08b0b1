"""HLS playback of a camera's recorded segments: a VOD playlist whose media are the segments
remuxed to MPEG-TS on first use (stream copy), served from object storage.

The agent's segments are progressive MP4 files (one ``moov``), which are not HLS media
segments: RFC 8216 allows MPEG-TS, fragmented MP4 announced by EXT-X-MAP, packed audio and
WebVTT, and hls.js and Safari refuse anything else. So each segment listed in a playlist links
to ``/api/hls/segments/{id}.ts``, signed and expiring; that endpoint rewraps the MP4 as
MPEG-TS once (kept next to it as ``hls/<key>.ts``) and redirects to a presigned URL of it.
Design and caveats: docs/design/clips.md, "Playback (HLS)".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import RedirectResponse, Response
from minio import Minio
from minio.error import S3Error

from central import cameras, segments, storage
from central.api.auth import requires
from central.api.resources import NOT_FOUND, Res
from central.users import Principal
from central.video import DAY_MS, remux_to_ts

router = APIRouter(tags=["recordings"])
MAX_RANGE = timedelta(hours=6)
# 6 hours of the shortest segments (2 s) fit; more means overlapping runs: narrow the range.
MAX_SEGMENTS = 11_000
# The playlist's media links stay valid this long (a long VOD is watched slowly); each link
# redirects to a presigned URL valid for MEDIA_URL_TTL_S.
LINK_TTL_S = 6 * 3600
MEDIA_URL_TTL_S = 300
GAP_TOLERANCE_MS = 500
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"


hls_key = storage.hls_key  # where a segment's MPEG-TS rendition is kept


def sign(secret: str, segment_id: UUID, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"hls:{segment_id}:{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def _ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def playlist(rows: list[dict[str, Any]], secret: str, expires: int) -> str:
    """A VOD media playlist of whole segments (sorted by start). EXT-X-DISCONTINUITY marks
    every place where the timeline jumps: a gap, a new run (the camera's stream restarted)
    and midnight UTC (the TS timestamps are times of day)."""
    target = max(math.ceil(row["duration_ms"] / 1000) for row in rows)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
    ]
    previous: dict[str, Any] | None = None
    for row in rows:
        start_ms = _ms(row["start_time"])
        if previous is not None:
            gap = start_ms - _ms(previous["end_time"])
            if (
                abs(gap) > GAP_TOLERANCE_MS
                or row["run_id"] != previous["run_id"]
                or start_ms // DAY_MS != _ms(previous["start_time"]) // DAY_MS
            ):
                lines.append("#EXT-X-DISCONTINUITY")
        stamp = row["start_time"].astimezone(UTC).isoformat(timespec="milliseconds")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{stamp.replace('+00:00', 'Z')}")
        lines.append(f"#EXTINF:{row['duration_ms'] / 1000:.3f},")
        sig = sign(secret, row["id"], expires)
        lines.append(f"/api/hls/segments/{row['id']}.ts?exp={expires}&sig={sig}")
        previous = row
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@router.get(
    "/api/cameras/{camera_id}/hls.m3u8",
    responses={**NOT_FOUND, 200: {"content": {PLAYLIST_TYPE: {}}}},
    response_class=Response,
)
async def camera_hls(
    camera_id: UUID,
    start: datetime,
    end: datetime,
    r: Res,
    who: Annotated[Principal, Depends(requires("recordings:read"))],
) -> Response:
    """An HLS (VOD) playlist of what central holds for the camera in [start, end), at most 6
    hours; 404 when nothing is recorded there. Gaps are marked with EXT-X-DISCONTINUITY."""
    if start.tzinfo is None or end.tzinfo is None:
        raise HTTPException(422, "start, end: give a time zone (e.g. 2026-01-31T12:00:00Z)")
    if not (2000 <= start.year <= 2200 and 2000 <= end.year <= 2200):
        raise HTTPException(422, "start, end: must be between the years 2000 and 2200")
    if not start < end or end - start > MAX_RANGE:
        raise HTTPException(422, "end: must be after start, at most 6 hours later")
    async with r.pool.acquire() as conn:
        if await cameras.get_camera(conn, camera_id, who.city_list()) is None:
            raise HTTPException(404, "camera not found")
        rows = await segments.list_segments(conn, camera_id, start, end, MAX_SEGMENTS + 1)
    if not rows:
        raise HTTPException(404, "no recorded video in this range")
    if len(rows) > MAX_SEGMENTS:
        raise HTTPException(422, f"more than {MAX_SEGMENTS} segments: narrow the range")
    expires = int(time.time()) + LINK_TTL_S
    text = playlist(rows, r.settings.gtvision_secret_key.get_secret_value(), expires)
    return Response(text, media_type=PLAYLIST_TYPE, headers={"Cache-Control": "no-store"})


@router.get(
    "/api/hls/segments/{segment_id}.ts",
    status_code=302,
    response_class=RedirectResponse,
    responses={403: {"description": "Bad or expired link: fetch the playlist again."}, **NOT_FOUND},
)
async def hls_media(
    segment_id: UUID,
    r: Res,
    exp: Annotated[int, Query(description="Link expiry, epoch seconds.")],
    sig: Annotated[str, Query(max_length=100, description="The playlist's signature.")],
) -> RedirectResponse:
    """One playlist entry: redirects to a short-lived URL of the segment as MPEG-TS, made on
    first use. Authorised by the signed link the playlist holds (players fetch media without
    the caller's token)."""
    secret = r.settings.gtvision_secret_key.get_secret_value()
    # Bytes: compare_digest refuses str with non-ASCII characters (a forged link may have them).
    if not hmac.compare_digest(sig.encode(), sign(secret, segment_id, exp).encode()):
        raise HTTPException(403, "bad link: fetch the playlist again")
    if exp < time.time():
        raise HTTPException(403, "link expired: fetch the playlist again")
    async with r.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT bucket, object_key, start_time FROM segments WHERE id = $1", segment_id
        )
    if row is None:
        raise HTTPException(404, "segment not found (deleted by retention?)")
    key = hls_key(row["object_key"])
    await _ensure_ts(r.s3, row["bucket"], row["object_key"], key, _ms(row["start_time"]))
    url = await asyncio.to_thread(storage.presign_get, r.s3_public, row["bucket"], key,
                                  MEDIA_URL_TTL_S)  # fmt: skip
    return RedirectResponse(url, status_code=302)


async def _ensure_ts(s3: Minio, bucket: str, source_key: str, key: str, start_ms: int) -> None:
    """Make the MPEG-TS rendition unless it exists. Two requests racing both make it and the
    second upload overwrites the first with the same bytes."""
    try:
        await asyncio.to_thread(s3.stat_object, bucket, key)
        return
    except S3Error as exc:
        if exc.code not in ("NoSuchKey", "NoSuchObject"):
            raise
    with tempfile.TemporaryDirectory(prefix="gtv-hls-") as tmp:
        source, target = Path(tmp) / "in.mp4", Path(tmp) / "out.ts"
        await asyncio.to_thread(s3.fget_object, bucket, source_key, str(source))
        await remux_to_ts(source, target, start_ms)
        await asyncio.to_thread(s3.fput_object, bucket, key, str(target), content_type="video/mp2t")
