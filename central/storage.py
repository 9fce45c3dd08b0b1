"""Object storage (MinIO in production, any S3 API here): buckets, presigned URLs, verification.

The minio SDK is synchronous: async callers run these functions with ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from uuid import UUID

from minio import Minio
from minio.datatypes import Part
from minio.error import S3Error

from central.settings import Settings

BUCKETS = ("recordings", "clips", "lpr-images", "thumbnails")


class BlobMismatch(Exception):
    """An object that is missing or differs from its claim-check (size or SHA-256)."""


def make_client(settings: Settings, *, public: bool = False) -> Minio:
    """A client for server-side calls, or (``public``) one that signs URLs for agents/browsers."""
    endpoint = settings.s3_public_endpoint if public and settings.s3_public_endpoint else None
    return Minio(
        endpoint or settings.s3_endpoint,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region,
    )


def ensure_buckets(client: Minio) -> None:
    """Create the four buckets if missing. Idempotent; blocks."""
    for bucket in BUCKETS:
        if not client.bucket_exists(bucket):
            try:
                client.make_bucket(bucket)
            except S3Error as exc:  # another replica created it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise


def segment_key(city_id: UUID, camera_id: UUID, segment_id: UUID) -> str:
    """Id-addressed key: the same segment always maps to the same object (idempotent retries)."""
    return f"{city_id}/{camera_id}/{segment_id}.mp4"


def thumbnail_key(city_id: UUID, camera_id: UUID, thumbnail_id: UUID) -> str:
    return f"{city_id}/{camera_id}/{thumbnail_id}.jpg"


def crop_key(city_id: UUID, camera_id: UUID, read_id: UUID) -> str:
    """A plate read's evidence JPEG in ``lpr-images``, named by the read."""
    return f"{city_id}/{camera_id}/{read_id}.jpg"


def context_key(city_id: UUID, camera_id: UUID, read_id: UUID) -> str:
    """A plate read's context frame (the whole scene) in ``lpr-images``, named by the read."""
    return f"{city_id}/{camera_id}/{read_id}-context.jpg"


def hls_key(object_key: str) -> str:
    """Where a segment's MPEG-TS rendition (made on first HLS play) is kept, in its bucket."""
    return f"hls/{object_key.removesuffix('.mp4')}.ts"


# Which bucket and key an agent's upload of each kind goes to.
UPLOAD_KINDS = {
    "segment": ("recordings", segment_key),
    "thumbnail": ("thumbnails", thumbnail_key),
    "crop": ("lpr-images", crop_key),
    "context": ("lpr-images", context_key),
}


# What each kind of upload holds (a multipart upload's type is set when it is created).
UPLOAD_CONTENT_TYPES = {
    "segment": "video/mp4",
    "thumbnail": "image/jpeg",
    "crop": "image/jpeg",
    "context": "image/jpeg",
}

# S3's limits on multipart uploads: parts of at least 5 MiB (except the last), 10,000 at most.
MIN_PART_BYTES = 5 * 1024**2
MAX_PARTS = 10_000


def part_plan(size_bytes: int, part_bytes: int) -> tuple[int, int]:
    """(part size, number of parts) for an object: ``part_bytes`` unless that would need more
    parts than S3 allows."""
    part = max(part_bytes, MIN_PART_BYTES, -(-size_bytes // MAX_PARTS))
    return part, -(-size_bytes // part)


def start_multipart(client: Minio, bucket: str, key: str, content_type: str) -> str:
    """Create a multipart upload for ``key`` and return its id. Blocks.

    Uploads of the same key left unfinished (an agent that crashed mid-object and now asks
    again) are aborted first: their parts would otherwise stay in the bucket, unseen.
    """
    listed = client._list_multipart_uploads(bucket, prefix=key)
    for stale in listed.uploads:
        if stale.object_name == key and stale.upload_id:
            abort_multipart(client, bucket, key, stale.upload_id)
    return client._create_multipart_upload(bucket, key, {"Content-Type": content_type})


def presign_part(
    client: Minio, bucket: str, key: str, upload_id: str, part_number: int, ttl_s: int
) -> str:
    """A presigned PUT URL for one part of a multipart upload (signed locally, no request)."""
    return client.get_presigned_url(
        "PUT", bucket, key, expires=timedelta(seconds=ttl_s),
        extra_query_params={"partNumber": str(part_number), "uploadId": upload_id},
    )  # fmt: skip


def complete_multipart(
    client: Minio, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
) -> str:
    """Join the uploaded parts ((number, ETag) in order) into the object; its ETag. Blocks.

    Raises S3Error: ``NoSuchUpload`` for an unknown, aborted or already completed upload,
    ``InvalidPart``/``InvalidPartOrder``/``EntityTooSmall`` for parts that do not add up.
    """
    result = client._complete_multipart_upload(
        bucket, key, upload_id, [Part(number, etag) for number, etag in parts]
    )
    return str(result.etag)


def abort_multipart(client: Minio, bucket: str, key: str, upload_id: str) -> None:
    """Discard a multipart upload and its parts. Blocks; S3Error ``NoSuchUpload`` if unknown."""
    client._abort_multipart_upload(bucket, key, upload_id)


def presign_get(client: Minio, bucket: str, key: str, ttl_s: int) -> str:
    return client.presigned_get_object(bucket, key, expires=timedelta(seconds=ttl_s))


def presign_put(client: Minio, bucket: str, key: str, ttl_s: int) -> str:
    return client.presigned_put_object(bucket, key, expires=timedelta(seconds=ttl_s))


def verify_blob(client: Minio, bucket: str, key: str, size_bytes: int, sha256: str) -> None:
    """Raise BlobMismatch unless the object exists with this size and SHA-256. Blocks.

    Reads the object: a single-part ETag is an MD5 and a multipart one is not a content hash,
    so only reading proves the content matches the claim.
    """
    try:
        stat = client.stat_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
            raise BlobMismatch(f"{bucket}/{key} does not exist") from None
        raise
    if stat.size != size_bytes:
        raise BlobMismatch(f"{bucket}/{key} has {stat.size} bytes, expected {size_bytes}")
    digest = hashlib.sha256()
    resp = client.get_object(bucket, key)
    try:
        for chunk in resp.stream(1 << 20):
            digest.update(chunk)
    finally:
        resp.close()
        resp.release_conn()
    if digest.hexdigest() != sha256:
        raise BlobMismatch(f"{bucket}/{key} SHA-256 differs from the claim")
