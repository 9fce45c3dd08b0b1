"""The retention sweeper: each city's plan (``cidades.plano_retencao_dias``) enforced on rows
and objects together.

One pass walks every city and removes what ended before ``now - plan``: video segments (rows
in ``segments``, objects in ``recordings`` with their HLS renditions), plate reads
(``lpr_events`` and their crops: rows in ``lpr_crops``, objects in ``lpr-images``), loss
events, alerts and recordings (runs) left without segments. Clips are exports kept on
purpose: they are never touched here (see docs/design/schema.md, design 4).

Order, per batch: delete the objects first, then the rows in one transaction. A crash between
the two leaves rows whose objects are gone, but only for footage already past its retention,
and the next pass deletes those objects again (a missing object counts as deleted) and the
rows. The other order would leave objects no row points at, which nothing would ever find.
Each batch is its own unit, so a pass can stop anywhere and the next one resumes; running two
sweepers at once is safe (``FOR UPDATE SKIP LOCKED``). ``gtvision-central worker`` runs it
every hour (``--retention-interval-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from central import storage

log = logging.getLogger(__name__)

BATCH = 500
DEFAULT_PLAN_DAYS = 30  # a city whose plan is not set keeps the longest plan
MISSING = ("NoSuchKey", "NoSuchObject")


class SweepError(Exception):
    """Object storage refused a deletion: the batch's rows stay, the next pass retries."""


@dataclass
class SweepReport:
    segments: int = 0
    plate_reads: int = 0
    objects: int = 0
    loss_events: int = 0
    alerts: int = 0
    recordings: int = 0
    orphan_crops: int = 0  # crops whose read never arrived
    cities: list[UUID] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return (
            self.segments + self.plate_reads + self.loss_events + self.alerts + self.recordings
            + self.orphan_crops
        )  # fmt: skip


def delete_objects(s3: Minio, objects: list[tuple[str, str]]) -> int:
    """Delete (bucket, key) pairs; already missing counts as deleted. Blocks."""
    by_bucket: dict[str, list[DeleteObject]] = {}
    for bucket, key in objects:
        by_bucket.setdefault(bucket, []).append(DeleteObject(key))
    for bucket, keys in by_bucket.items():
        try:
            errors = [e for e in s3.remove_objects(bucket, keys) if e.code not in MISSING]
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                continue
            raise SweepError(f"{bucket}: {exc.code} {exc.message}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # storage unreachable
            raise SweepError(f"{bucket}: {exc}") from exc
        if errors:
            first = errors[0]
            raise SweepError(f"{bucket}/{first.name}: {first.code} {first.message}")
    return len(objects)


def _crop(image_url: str | None) -> tuple[str, str] | None:
    """``lpr_events.image_url`` holds ``bucket/key`` for crops the agents uploaded."""
    if not image_url or "/" not in image_url or "://" in image_url:
        return None
    bucket, key = image_url.split("/", 1)
    return bucket, key


async def _sweep_segments(
    pool: asyncpg.Pool, s3: Minio, city_id: UUID, cutoff: datetime, report: SweepReport
) -> None:
    async with pool.acquire() as conn:
        cameras = [
            r["id"]
            for r in await conn.fetch("SELECT id FROM cameras WHERE cidade_id = $1", city_id)
        ]
    for camera_id in cameras:
        while True:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "SELECT id, bucket, object_key FROM segments"
                    " WHERE camera_id = $1 AND start_time < $2 AND end_time <= $2"
                    " ORDER BY start_time LIMIT $3 FOR UPDATE SKIP LOCKED",
                    camera_id, cutoff, BATCH,
                )  # fmt: skip
                if not rows:
                    break
                # The segment and its HLS rendition, if it was ever played (else: missing, fine).
                objects = [(r["bucket"], r["object_key"]) for r in rows] + [
                    (r["bucket"], storage.hls_key(r["object_key"])) for r in rows
                ]
                report.objects += await asyncio.to_thread(delete_objects, s3, objects)
                await conn.execute(
                    "DELETE FROM segments WHERE id = ANY($1::uuid[])", [r["id"] for r in rows]
                )
                report.segments += len(rows)
            if len(rows) < BATCH:
                break


async def _sweep_plate_reads(
    pool: asyncpg.Pool, s3: Minio, city_id: UUID, cutoff: datetime, report: SweepReport
) -> None:
    # lpr_events.detected_at is the seed's TIMESTAMP (no zone), written in UTC.
    naive = cutoff.astimezone(UTC).replace(tzinfo=None)
    while True:
        async with pool.acquire() as conn, conn.transaction():
            # A read's crop is named by the read (image_url) or uploaded apart (lpr_crops).
            rows = await conn.fetch(
                "SELECT e.id, e.image_url, k.bucket, k.object_key, k.context_key FROM lpr_events e"
                " LEFT JOIN lpr_crops k ON k.read_id = e.id"
                " WHERE e.city_id = $1 AND e.detected_at < $2"
                " ORDER BY e.detected_at LIMIT $3 FOR UPDATE OF e SKIP LOCKED",
                city_id, naive, BATCH,
            )  # fmt: skip
            if not rows:
                break
            crops = [c for r in rows if (c := _crop(r["image_url"])) is not None]
            crops += _crop_objects(rows)
            if crops:
                report.objects += await asyncio.to_thread(delete_objects, s3, crops)
            ids = [r["id"] for r in rows]
            await conn.execute("DELETE FROM lpr_crops WHERE read_id = ANY($1::uuid[])", ids)
            await conn.execute("DELETE FROM lpr_events WHERE id = ANY($1::uuid[])", ids)
            report.plate_reads += len(rows)
        if len(rows) < BATCH:
            break


async def _sweep_rows(
    pool: asyncpg.Pool, city_id: UUID, cutoff: datetime, report: SweepReport
) -> None:
    """Rows without objects: loss events (by their end), alerts (by detection), recordings."""
    async with pool.acquire() as conn, conn.transaction():
        losses = await conn.execute(
            "DELETE FROM loss_events WHERE cidade_id = $1 AND end_time <= $2", city_id, cutoff
        )
        alerts = await conn.execute(
            "DELETE FROM alerts WHERE cidade_id = $1 AND detected_at < $2", city_id, cutoff
        )
        # A recording (one run) that ended before the cutoff has no segment left: the segment
        # pass above removed them all. One a clip points at stays, as its context.
        recs = await conn.execute(
            "DELETE FROM recordings r USING cameras c WHERE r.camera_id = c.id"
            " AND c.cidade_id = $1 AND r.last_end <= $2"
            " AND NOT EXISTS (SELECT 1 FROM clips k WHERE k.recording_id = r.id)",
            city_id, cutoff,
        )  # fmt: skip
    report.loss_events += int(losses.rsplit(" ", 1)[1])
    report.alerts += int(alerts.rsplit(" ", 1)[1])
    report.recordings += int(recs.rsplit(" ", 1)[1])


async def sweep(pool: asyncpg.Pool, s3: Minio, now: datetime | None = None) -> SweepReport:
    """One pass over every city. Raises SweepError if object storage refuses deletions (what
    was done stays done)."""
    now = now or datetime.now(UTC)
    report = SweepReport()
    async with pool.acquire() as conn:
        plans = await conn.fetch("SELECT id, plano_retencao_dias FROM cidades ORDER BY id")
    for plan in plans:
        days = plan["plano_retencao_dias"] or DEFAULT_PLAN_DAYS
        cutoff = now - timedelta(days=days)
        before = report.rows
        await _sweep_segments(pool, s3, plan["id"], cutoff, report)
        await _sweep_plate_reads(pool, s3, plan["id"], cutoff, report)
        await _sweep_orphan_crops(pool, s3, plan["id"], cutoff, report)
        await _sweep_rows(pool, plan["id"], cutoff, report)
        if report.rows > before:
            report.cities.append(plan["id"])
    if report.rows:
        log.info(
            "retention: removed %d segments, %d plate reads, %d loss events, %d alerts, "
            "%d recordings, %d objects in %d cities",
            report.segments, report.plate_reads, report.loss_events, report.alerts,
            report.recordings, report.objects, len(report.cities),
        )  # fmt: skip
    return report


def _crop_objects(rows: list[asyncpg.Record]) -> list[tuple[str, str]]:
    """The objects of ``lpr_crops`` rows (bucket, object_key, context_key): crops and their
    context frames."""
    objects = [(r["bucket"], r["object_key"]) for r in rows if r["object_key"]]
    return objects + [(r["bucket"], r["context_key"]) for r in rows if r["context_key"]]


async def _sweep_orphan_crops(
    pool: asyncpg.Pool, s3: Minio, city_id: UUID, cutoff: datetime, report: SweepReport
) -> None:
    """Crops (and context frames) received before the cutoff whose read never arrived (a read
    dead-lettered, or lost with a central restored from backup): nothing would ever sweep
    them with a read. A crop's key starts with its city (``storage.crop_key``)."""
    prefix = f"{city_id}/%"
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT k.read_id, k.bucket, k.object_key, k.context_key FROM lpr_crops k"
                " WHERE k.object_key LIKE $1 AND k.received_at < $2"
                " AND NOT EXISTS (SELECT 1 FROM lpr_events e WHERE e.id = k.read_id)"
                " ORDER BY k.received_at LIMIT $3 FOR UPDATE OF k SKIP LOCKED",
                prefix, cutoff, BATCH,
            )  # fmt: skip
            if not rows:
                break
            report.objects += await asyncio.to_thread(delete_objects, s3, _crop_objects(rows))
            ids = [r["read_id"] for r in rows]
            await conn.execute("DELETE FROM lpr_crops WHERE read_id = ANY($1::uuid[])", ids)
            report.orphan_crops += len(rows)
        if len(rows) < BATCH:
            break


async def run(
    pool: asyncpg.Pool, s3: Minio, stop: asyncio.Event, interval_s: float = 3600.0
) -> None:
    """Sweep now and every ``interval_s`` until ``stop``; a failed pass is logged and retried
    at the next one."""
    while not stop.is_set():
        try:
            await sweep(pool, s3)
        except (SweepError, asyncpg.PostgresError, OSError) as exc:
            log.error("retention pass failed (retried in %.0f s): %s", interval_s, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
