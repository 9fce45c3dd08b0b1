"""Clips and HLS playback against real PostgreSQL, S3, RabbitMQ and ffmpeg: the clip worker
(central/clipworker.py), the clips API and the HLS playlist, with real H.264 segments."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from minio import Minio

from central import agents, cameras, cities, recordings, segments, storage
from central.api.hls import hls_key
from central.clipworker import ClipWorker
from central.settings import Settings
from central.video import probe_duration_ms, run_tool
from devstack.tcpproxy import TcpProxy
from shared.messages import BlobRef, SegmentRecorded, UploadRequest, decode
from shared.topology import agent_command_queue
from tests.central.test_api_scoping import PASSWORD, world
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(120)

SEGMENT_MS = 2000
ADMIN = "admin@example.com"


@pytest.fixture(scope="session")
def segment_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six real 2 s H.264 segments (keyframe every second), cut as the agent's recorder cuts
    them: ffmpeg's segment muxer, timestamps reset in each file."""
    out = tmp_path_factory.mktemp("segments")
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
         "-i", "testsrc2=size=320x240:rate=10", "-t", "12", "-c:v", "libx264", "-bf", "0",
         "-g", "10", "-pix_fmt", "yuv420p", "-f", "segment", "-segment_time", "2",
         "-reset_timestamps", "1", "-segment_format", "mp4", str(out / "seg%03d.mp4")],
        check=True, timeout=60,
    )  # fmt: skip
    files = sorted(out.glob("seg*.mp4"))
    assert len(files) == 6
    return files


@dataclass
class Site:
    city: uuid.UUID
    camera: uuid.UUID
    agent: uuid.UUID


async def site_of(pool: asyncpg.Pool, camera: uuid.UUID) -> Site:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT c.cidade_id, a.id AS agent FROM cameras c JOIN agents a"
            " ON a.cidade_id = c.cidade_id WHERE c.id = $1 LIMIT 1",
            camera,
        )
    return Site(row["cidade_id"], camera, row["agent"])


async def camera_of_city_a(pool: asyncpg.Pool) -> Site:
    """The scoping tests' two cities and users (admin, city A's operator); city A's camera."""
    w = await world(pool)
    return await site_of(pool, w["cam_a"])


async def camera_without_agent(pool: asyncpg.Pool) -> Site:
    """A camera in a city whose only agent was revoked: central has nobody to ask for video."""
    async with pool.acquire() as conn:
        city = await cities.create_city(conn, f"Cidade {uuid.uuid4()}", "SP", 7)
        agent, _ = await agents.create_agent(conn, city, "revogado")
        await conn.execute("UPDATE agents SET is_active = FALSE WHERE id = $1", agent)
        camera = await cameras.create_camera(conn, city, "cam", "rtsp://x/y")
    return Site(city, camera, agent)


async def store_segments(
    pool: asyncpg.Pool, s3: Minio, site: Site, files: list[Path], starts_ms: list[int]
) -> list[SegmentRecorded]:
    """Upload segment files and store them as the ingest does (one run)."""
    run = uuid.uuid4()
    messages = []
    for path, start_ms in zip(files, starts_ms, strict=True):
        segment_id = uuid.uuid4()
        key = storage.segment_key(site.city, site.camera, segment_id)
        await asyncio.to_thread(s3.fput_object, "recordings", key, str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        messages.append(
            SegmentRecorded(
                segment_id=segment_id,
                agent_id=site.agent,
                camera_id=site.camera,
                start_ms=start_ms,
                duration_ms=await probe_duration_ms(path),
                codec="h264",
                run_id=run,
                blob=BlobRef(
                    bucket="recordings", key=key, size_bytes=path.stat().st_size, sha256=digest
                ),
            )
        )
    async with pool.acquire() as conn, conn.transaction():
        await segments.insert_segments(conn, messages)
        await recordings.record_segments(conn, [m.segment_id for m in messages])
    return messages


def at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def recent_ms(seconds_ago: int = 600) -> int:
    """A whole second some minutes ago: clips may not end in the future."""
    return (int(time.time()) - seconds_ago) * 1000


async def work_until_done(
    worker: ClipWorker,
    api: CentralProcess,
    clip_id: str,
    headers: dict[str, str],
    timeout_s: float = 60,
) -> dict[str, Any]:
    """Run the worker until the clip is no longer PENDING (or the time is up); the clip."""
    deadline = time.monotonic() + timeout_s
    while True:
        await worker.run_once()
        clip: dict[str, Any] = (await api.http.get(f"/api/clips/{clip_id}", headers=headers)).json()
        if clip["status"] != "PENDING" or time.monotonic() > deadline:
            return clip
        await asyncio.sleep(0.2)


async def fetch(url: str, path: Path) -> None:
    async with httpx.AsyncClient() as plain:
        resp = await plain.get(url)
    assert resp.status_code == 200, resp.text[:300]
    await asyncio.to_thread(path.write_bytes, resp.content)


async def test_clip_is_a_playable_copy_of_the_range(
    central_api: CentralProcess,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    segment_files: list[Path],
    tmp_path: Path,
) -> None:
    site = await camera_of_city_a(db_pool)
    t0 = recent_ms()
    await store_segments(db_pool, s3_client, site, segment_files[:3],
                         [t0 + i * SEGMENT_MS for i in range(3)])  # fmt: skip
    op = await central_api.login("operador@a.example", PASSWORD)
    worker = ClipWorker(db_pool, s3_client, None)

    # Whole segments: the clip is exactly them.
    body = {"start": at(t0), "end": at(t0 + 6000)}
    resp = await central_api.http.post(f"/api/cameras/{site.camera}/clips", json=body, headers=op)
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "PENDING" and resp.json()["download_url"] is None
    clip = await work_until_done(worker, central_api, resp.json()["id"], op)
    assert clip["status"] == "READY", clip
    assert clip["gaps"] == [] and clip["segments"] == 3
    await fetch(clip["download_url"], tmp_path / "clip.mp4")
    assert abs(await probe_duration_ms(tmp_path / "clip.mp4") - 6000) <= 150
    assert clip["duration_ms"] == await probe_duration_ms(tmp_path / "clip.mp4")
    assert (tmp_path / "clip.mp4").stat().st_size == clip["size_bytes"]
    await run_tool("ffmpeg", "-v", "error", "-i", str(tmp_path / "clip.mp4"), "-f", "null", "-")
    # Codec parameters are the segments' own: no re-encoding happened.
    info = await run_tool("ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,width,height", "-of", "csv=p=0",
                          str(tmp_path / "clip.mp4"))  # fmt: skip
    assert info == "h264,320,240"

    # Inside segments: it starts at the keyframe at or before the start (GOP 1 s here) and
    # stops at the end.
    body = {"start": at(t0 + 500), "end": at(t0 + 5500)}
    resp = await central_api.http.post(f"/api/cameras/{site.camera}/clips", json=body, headers=op)
    clip = await work_until_done(worker, central_api, resp.json()["id"], op)
    assert clip["status"] == "READY", clip
    await fetch(clip["download_url"], tmp_path / "trimmed.mp4")
    duration = await probe_duration_ms(tmp_path / "trimmed.mp4")
    assert 5000 - 150 <= duration <= 5000 + 1000 + 150, duration

    listed = await central_api.http.get(f"/api/cameras/{site.camera}/clips", headers=op)
    assert [c["status"] for c in listed.json()] == ["READY", "READY"]
    async with db_pool.acquire() as conn:
        audited = await conn.fetch("SELECT action FROM audit_log WHERE action LIKE 'clips.%'")
        recording = await conn.fetchval("SELECT recording_id FROM clips WHERE id = $1",
                                        uuid.UUID(clip["id"]))  # fmt: skip
    assert sorted(r["action"] for r in audited).count("clips.create") == 2
    assert "clips.download" in {r["action"] for r in audited}
    assert recording is not None


async def test_clip_across_a_gap_says_so(
    central_api: CentralProcess, db_pool: asyncpg.Pool, s3_client: Minio, segment_files: list[Path]
) -> None:
    await world(db_pool)  # the admin
    site = await camera_without_agent(db_pool)
    t0 = recent_ms()
    # Two segments, 6 s without video, one more.
    starts = [t0, t0 + 2000, t0 + 10_000]
    await store_segments(db_pool, s3_client, site, segment_files[:3], starts)
    admin = await central_api.login(ADMIN, PASSWORD)
    body = {"start": at(t0), "end": at(t0 + 12_000), "keep": True}
    resp = await central_api.http.post(
        f"/api/cameras/{site.camera}/clips", json=body, headers=admin
    )
    clip = await work_until_done(ClipWorker(db_pool, s3_client, None), central_api,
                                 resp.json()["id"], admin)  # fmt: skip
    assert clip["status"] == "READY", clip
    assert clip["keep"] is True
    gaps = [(datetime.fromisoformat(g["start"]), datetime.fromisoformat(g["end"]))
            for g in clip["gaps"]]  # fmt: skip
    assert gaps == [(datetime.fromtimestamp((t0 + 4000) / 1000, UTC),
                     datetime.fromtimestamp((t0 + 10_000) / 1000, UTC))]  # fmt: skip
    assert "gap" in clip["reason"] and "no active agent" in clip["reason"]
    assert abs(clip["duration_ms"] - 6000) <= 150  # the footage on both sides, back to back

    # The evidence flag can be released (and set again) by whoever may export.
    resp = await central_api.http.put(
        f"/api/clips/{clip['id']}/keep", json={"keep": False}, headers=admin
    )
    assert resp.status_code == 200 and resp.json()["keep"] is False


async def test_clip_fails_when_there_is_no_video(
    central_api: CentralProcess,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    central_settings: Settings,
) -> None:
    w = await world(db_pool)
    admin = await central_api.login(ADMIN, PASSWORD)
    t0 = recent_ms()
    body = {"start": at(t0), "end": at(t0 + 4000)}

    # Nobody to ask: FAILED at once, saying why.
    lonely = await camera_without_agent(db_pool)
    resp = await central_api.http.post(f"/api/cameras/{lonely.camera}/clips", json=body,
                                       headers=admin)  # fmt: skip
    worker = ClipWorker(db_pool, s3_client, central_settings.amqp_url.get_secret_value(),
                        upload_wait_s=2, recheck_s=0.2)  # fmt: skip
    clip = await work_until_done(worker, central_api, resp.json()["id"], admin)
    assert clip["status"] == "FAILED"
    assert "no video at central" in clip["reason"] and "no active agent" in clip["reason"]
    assert len(clip["gaps"]) == 1 and clip["download_url"] is None

    # The camera's agent is asked to upload (an UploadRequest on its command queue); nothing
    # comes, so the clip FAILS once the wait is over.
    site = await site_of(db_pool, w["cam_a"])
    resp = await central_api.http.post(f"/api/cameras/{site.camera}/clips", json=body,
                                       headers=admin)  # fmt: skip
    clip_id = resp.json()["id"]
    try:
        clip = await work_until_done(worker, central_api, clip_id, admin, timeout_s=30)
    finally:
        await worker.close()
    assert clip["status"] == "FAILED", clip
    assert "asked to upload it and nothing arrived within 2 s" in clip["reason"], clip
    assert worker.requests == 1
    command = await take_command(central_settings.amqp_url.get_secret_value(), site.agent)
    assert isinstance(command, UploadRequest)
    assert (command.camera_id, command.start_ms, command.end_ms) == (site.camera, t0, t0 + 4000)
    assert command.reason == f"clip {clip_id}"


async def take_command(amqp_url: str, agent: uuid.UUID) -> Any:
    """The next command waiting on an agent's queue (read as the broker's administrator)."""
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        channel = await conn.channel()
        queue = await channel.get_queue(agent_command_queue(agent))
        message = await queue.get(fail=False, timeout=10)
        assert message is not None, "no command on the agent's queue"
        await message.ack()
        assert message.type == "upload_request"
        return decode(message.body, "upload_request")


async def test_another_citys_clips_and_playback_look_missing(
    central_api: CentralProcess, db_pool: asyncpg.Pool, s3_client: Minio, segment_files: list[Path]
) -> None:
    w = await world(db_pool)
    site_b = await site_of(db_pool, w["cam_b"])
    t0 = recent_ms()
    await store_segments(db_pool, s3_client, site_b, segment_files[:1], [t0])
    admin = await central_api.login(ADMIN, PASSWORD)
    body = {"start": at(t0), "end": at(t0 + 2000)}
    clip_b = (await central_api.http.post(f"/api/cameras/{site_b.camera}/clips", json=body,
                                          headers=admin)).json()  # fmt: skip
    op = await central_api.login("operador@a.example", PASSWORD)
    get = central_api.http.get
    hls = f"hls.m3u8?start={at(t0)}&end={at(t0 + 2000)}".replace("+", "%2B")
    for other, missing in (
        (f"/api/clips/{clip_b['id']}", f"/api/clips/{uuid.uuid4()}"),
        (f"/api/cameras/{site_b.camera}/clips", f"/api/cameras/{uuid.uuid4()}/clips"),
        (f"/api/cameras/{site_b.camera}/{hls}", f"/api/cameras/{uuid.uuid4()}/{hls}"),
    ):
        r_other, r_missing = await get(other, headers=op), await get(missing, headers=op)
        assert r_other.status_code == r_missing.status_code == 404, other
        assert r_other.json() == r_missing.json(), "a city-B resource must look missing"
    for path in (f"/api/cameras/{site_b.camera}/clips", f"/api/cameras/{uuid.uuid4()}/clips"):
        resp = await central_api.http.post(path, json=body, headers=op)
        assert resp.status_code == 404 and resp.json() == {"detail": "camera not found"}
    resp = await central_api.http.put(f"/api/clips/{clip_b['id']}/keep", json={"keep": True},
                                      headers=op)  # fmt: skip
    assert resp.status_code == 404
    # The installer role may not export video.
    inst = await central_api.login("instalador@a.example", PASSWORD)
    resp = await central_api.http.post(f"/api/cameras/{w['cam_a']}/clips", json=body, headers=inst)
    assert resp.status_code == 403


async def test_clip_requests_are_checked(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    admin = await central_api.login(ADMIN, PASSWORD)
    url = f"/api/cameras/{w['cam_a']}/clips"
    now = datetime.now(UTC).replace(microsecond=0)
    for start, end, why in (
        (now - timedelta(minutes=40), now - timedelta(minutes=5), "at most 30 minutes"),
        (now - timedelta(minutes=5), now - timedelta(minutes=6), "after start"),
        (now - timedelta(minutes=1), now + timedelta(minutes=1), "future"),
        (now.replace(tzinfo=None), now.replace(tzinfo=None), "time zone"),
        (datetime(1, 1, 1, tzinfo=UTC), now, "between the years"),
    ):
        resp = await central_api.http.post(
            url, json={"start": start.isoformat(), "end": end.isoformat()}, headers=admin
        )
        assert resp.status_code == 422 and why in resp.text, (why, resp.text)
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM clips") == 0


async def test_hls_playlist_plays_across_a_gap(
    central_api: CentralProcess,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    segment_files: list[Path],
    tmp_path: Path,
) -> None:
    site = await camera_of_city_a(db_pool)
    t0 = recent_ms()
    stored = await store_segments(db_pool, s3_client, site, segment_files[:3],
                                  [t0, t0 + 2000, t0 + 10_000])  # fmt: skip
    op = await central_api.login("operador@a.example", PASSWORD)
    params = {"start": at(t0), "end": at(t0 + 12_000)}
    resp = await central_api.http.get(f"/api/cameras/{site.camera}/hls.m3u8", params=params,
                                      headers=op)  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    text = resp.text
    lines = text.splitlines()
    assert lines[:3] == ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-PLAYLIST-TYPE:VOD"]
    assert lines[-1] == "#EXT-X-ENDLIST"
    assert text.count("#EXTINF:2.000,") == 3
    assert text.count("#EXT-X-DISCONTINUITY") == 1  # the 6 s gap only
    where = {m.segment_id: next(i for i, line in enumerate(lines) if str(m.segment_id) in line)
             for m in stored}  # fmt: skip
    gap_at = lines.index("#EXT-X-DISCONTINUITY")
    assert where[stored[1].segment_id] < gap_at < where[stored[2].segment_id]
    media = [line for line in lines if line.startswith("/api/hls/segments/")]
    assert len(media) == 3

    # A media link needs no token (players do not send one) but its signature; it redirects
    # to the segment rewrapped as MPEG-TS in object storage, made on first use.
    first = await central_api.http.get(media[0])
    assert first.status_code == 302
    await fetch(first.headers["location"], tmp_path / "first.ts")
    probed = await run_tool("ffprobe", "-v", "error", "-show_entries", "format=format_name",
                            "-of", "csv=p=0", str(tmp_path / "first.ts"))  # fmt: skip
    assert probed == "mpegts"
    s3_client.stat_object("recordings", hls_key(stored[0].blob.key))
    forged = media[0].rsplit("&sig=", 1)[0] + "&sig=AAAA"
    assert (await central_api.http.get(forged)).status_code == 403

    # A real HLS client (ffmpeg's) plays the playlist through: 6 s of video.
    local = tmp_path / "play.m3u8"
    local.write_text(text.replace("/api/hls/", f"{central_api.url}/api/hls/"))
    await run_tool(
        "ffmpeg", "-v", "error", "-protocol_whitelist", "file,http,tcp", "-i", str(local),
        "-c", "copy", "-y", str(tmp_path / "played.mp4"),
    )  # fmt: skip
    frames = await run_tool("ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
                            "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0",
                            str(tmp_path / "played.mp4"))  # fmt: skip
    assert int(frames) == 60  # 3 segments x 2 s x 10 fps, none lost at the discontinuity
    # The timeline keeps its hole: timestamps are times of day, so the 6 s gap stays 6 s.
    assert abs(await probe_duration_ms(tmp_path / "played.mp4") - 12_000) <= 300

    empty = {"start": at(t0 - 60_000), "end": at(t0 - 30_000)}
    resp = await central_api.http.get(f"/api/cameras/{site.camera}/hls.m3u8", params=empty,
                                      headers=op)  # fmt: skip
    assert resp.status_code == 404


@pytest.mark.timeout(180)
async def test_worker_killed_mid_clip_leaves_it_pending_and_the_next_run_finishes_it(
    central_api: CentralProcess,
    central_settings: Settings,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    segment_files: list[Path],
    tmp_path: Path,
) -> None:
    site = await camera_of_city_a(db_pool)
    t0 = recent_ms()
    await store_segments(db_pool, s3_client, site, segment_files,
                         [t0 + i * SEGMENT_MS for i in range(6)])  # fmt: skip
    admin = await central_api.login(ADMIN, PASSWORD)
    body = {"start": at(t0), "end": at(t0 + 12_000)}
    clip_id = (await central_api.http.post(f"/api/cameras/{site.camera}/clips", json=body,
                                           headers=admin)).json()["id"]  # fmt: skip

    # The worker process reaches object storage through a slow link: the download of the
    # segments takes seconds, so it is certainly mid-clip when killed.
    host, port = central_settings.s3_endpoint.rsplit(":", 1)
    async with TcpProxy(host, int(port), rate_bytes_per_s=40_000) as proxy:
        env = dict(
            os.environ,
            DATABASE_URL=central_settings.database_url.get_secret_value(),
            AMQP_URL=central_settings.amqp_url.get_secret_value(),
            S3_ENDPOINT=f"127.0.0.1:{proxy.port}",
            S3_ACCESS_KEY=central_settings.s3_access_key.get_secret_value(),
            S3_SECRET_KEY=central_settings.s3_secret_key.get_secret_value(),
            REDIS_URL=central_settings.redis_url,
            GTVISION_SECRET_KEY=central_settings.gtvision_secret_key.get_secret_value(),
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "central.cli", "worker", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_until_claimed(db_pool, uuid.UUID(clip_id), proc)
            await asyncio.sleep(1.0)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.returncode is None:
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    clip = (await central_api.http.get(f"/api/clips/{clip_id}", headers=admin)).json()
    assert clip["status"] == "PENDING", clip

    # The next worker takes it over as soon as PostgreSQL has released the dead one's claim.
    clip = await work_until_done(ClipWorker(db_pool, s3_client, None), central_api, clip_id,
                                 admin)  # fmt: skip
    assert clip["status"] == "READY", clip
    await fetch(clip["download_url"], tmp_path / "clip.mp4")
    assert abs(await probe_duration_ms(tmp_path / "clip.mp4") - 12_000) <= 150


async def wait_until_claimed(
    pool: asyncpg.Pool, clip_id: uuid.UUID, proc: asyncio.subprocess.Process
) -> None:
    """Until the worker process holds the clip's row lock (its claim)."""
    for _ in range(300):
        assert proc.returncode is None, "the worker process exited"
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.execute("SELECT 1 FROM clips WHERE id = $1 FOR UPDATE NOWAIT",
                                       clip_id)  # fmt: skip
            except asyncpg.LockNotAvailableError:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the worker never claimed the clip")
