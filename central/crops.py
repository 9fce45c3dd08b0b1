"""Evidence crops of plate reads (``lpr_crops``): SQL functions.

A crop travels apart from its read (``PlateCrop`` on ``central.crops``), so either may arrive
first; both are keyed by the read's id and joined when the read is shown.
"""

from __future__ import annotations

import asyncpg

from shared.messages import PlateCrop


async def insert_crop(conn: asyncpg.Connection, crop: PlateCrop) -> bool:
    """Keep a verified crop (and its context frame) under its read's id; a redelivery is
    ignored. True if it was new."""
    result: str = await conn.execute(
        "INSERT INTO lpr_crops (read_id, bucket, object_key, size_bytes, sha256, context_key)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (read_id) DO NOTHING",
        crop.read_id, crop.blob.bucket, crop.blob.key, crop.blob.size_bytes, crop.blob.sha256,
        crop.context.key if crop.context else None,
    )  # fmt: skip
    return result.endswith(" 1")
