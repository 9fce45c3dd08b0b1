"""Wire messages between agent and central: frozen, versioned models with idempotency keys."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.plates import PLATE_RE

# A message body larger than this is refused before parsing: blobs travel by claim-check
# (object storage), so nothing legitimate comes near it.
MAX_MESSAGE_BYTES = 64 * 1024
# A batch of plate reads has its own limits: a read with a crop is ~0.6 KiB of JSON, so the
# most reads a batch may carry fit well within the bytes allowed.
MAX_BATCH_READS = 200
MAX_BATCH_BYTES = 256 * 1024
# A watchlist update carries a city's whole list (at most MAX_WATCHLIST_PLATES plates).
MAX_WATCHLIST_PLATES = 50_000
MAX_WATCHLIST_BYTES = 8 * 1024 * 1024
# A config hint lists the cameras of the agent's city whose state central decides.
MAX_HINT_CAMERAS = 2_000
MAX_HINT_BYTES = 256 * 1024
BODY_LIMITS = {
    "plate_read_batch": MAX_BATCH_BYTES,
    "watchlist_update": MAX_WATCHLIST_BYTES,
    "config_hint": MAX_HINT_BYTES,
}

SHA256_HEX = r"^[0-9a-f]{64}$"
# Object keys are built by central from ids; the pattern keeps path tricks ("..", "//") out.
OBJECT_KEY_RE = re.compile(r"^[a-z0-9-]+(/[A-Za-z0-9._-]+)+$")

EpochMs = Annotated[int, Field(ge=0, le=10**13, description="UTC epoch milliseconds")]


class WireModel(BaseModel):
    """Base of every message: unknown fields are refused and instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=1024)


class BlobRef(WireModel):
    """A claim-check: where an object was uploaded and what it must contain."""

    bucket: Literal["recordings", "clips", "lpr-images", "thumbnails"]
    key: str = Field(
        pattern=OBJECT_KEY_RE.pattern, max_length=512, description="Object key, granted by central."
    )
    size_bytes: int = Field(ge=1, le=8 * 1024**3, description="Exact object size.")
    sha256: str = Field(pattern=SHA256_HEX, description="Hex SHA-256 of the object's bytes.")

    @field_validator("key")
    @classmethod
    def _no_dot_segments(cls, key: str) -> str:
        if any(part in (".", "..") for part in key.split("/")):
            raise ValueError("must not contain '.' or '..' path segments")
        return key


class SegmentRecorded(WireModel):
    """A closed, validated video segment that the agent has uploaded to object storage.

    Idempotency key: ``segment_id`` (central inserts ON CONFLICT DO NOTHING).
    """

    type: Literal["segment"] = "segment"
    schema_version: Literal[1] = 1
    segment_id: UUID = Field(description="Made by the agent; the idempotency key.")
    agent_id: UUID = Field(description="Must match the routing key's agent.")
    camera_id: UUID = Field(description="A camera of the agent's city.")
    start_ms: EpochMs
    duration_ms: int = Field(ge=1, le=120_000, description="Media duration (ffprobe).")
    codec: Literal["h264", "h265"] = Field(description="Video codec, recorded as sent.")
    blob: BlobRef = Field(description="The MP4 in the `recordings` bucket.")
    run_id: UUID | None = Field(
        default=None, description="The RTSP session that recorded it: a new run follows a gap."
    )
    time_source: Literal["live", "recovered"] = Field(
        default="live",
        description="`live`: placed from the stream's times as recorded; `recovered`: derived "
        "after a crash for a file found without its row.",
    )
    clock_sync: Literal["synced", "unsynced", "unknown"] = Field(
        default="unknown",
        description="The agent's wall clock when the segment was stamped: disciplined by NTP "
        "or not (the kernel's view).",
    )
    clock_error_ms: int | None = Field(
        default=None, ge=0, le=10**9, description="The kernel's maximum error bound then."
    )
    shifted_ms: int = Field(
        default=0,
        ge=0,
        le=10**11,
        description="How far the agent moved the segment forward so that a wall clock stepped "
        "back does not overlap the camera's earlier video (0 normally).",
    )


class PlateRead(WireModel):
    """One plate read per vehicle passage. Idempotency key: ``read_id``.

    Reserved: the contract for plate recognition; agents do not emit it yet.
    """

    type: Literal["plate_read"] = "plate_read"
    schema_version: Literal[1] = 1
    read_id: UUID = Field(description="Made by the agent; the idempotency key.")
    agent_id: UUID = Field(description="Must match the routing key's agent.")
    camera_id: UUID = Field(description="A camera of the agent's city.")
    plate: str = Field(pattern=PLATE_RE.pattern, description="Canonical plate, e.g. BRA2E19.")
    confidence: float = Field(ge=0, le=1, description="Recogniser confidence.")
    seen_ms: EpochMs
    segment_id: UUID | None = Field(None, description="The segment holding the best frame.")
    crop: BlobRef | None = Field(None, description="Evidence JPEG in `lpr-images`.")


class PlateReadBatch(WireModel):
    """Several plate reads of one agent in one message: the relay's shape for a backlog, since
    per-message costs (broker, confirms, acks) dominate a read's cost.

    No key of its own: each read keeps its ``read_id``, and central inserts every read
    ``ON CONFLICT DO NOTHING``, so a redelivered batch, or a read sent once alone and once in a
    batch, is stored once.
    """

    type: Literal["plate_read_batch"] = "plate_read_batch"
    schema_version: Literal[1] = 1
    agent_id: UUID = Field(description="Must match the routing key's agent and every read's.")
    reads: list[PlateRead] = Field(
        min_length=1, max_length=MAX_BATCH_READS, description="The reads, in the agent's order."
    )

    @model_validator(mode="after")
    def _one_agent(self) -> PlateReadBatch:
        for i, read in enumerate(self.reads):
            if read.agent_id != self.agent_id:
                raise ValueError(f"reads.{i}: agent {read.agent_id} is not the batch's")
        return self


class ThumbnailTaken(WireModel):
    """A small JPEG of a camera's current view, for mosaics. State: the newest ``taken_ms``
    per camera wins. Idempotency key: ``thumbnail_id``."""

    type: Literal["thumbnail"] = "thumbnail"
    schema_version: Literal[1] = 1
    thumbnail_id: UUID = Field(description="Made by the agent; names the object.")
    agent_id: UUID = Field(description="Must match the routing key's agent.")
    camera_id: UUID = Field(description="A camera of the agent's city.")
    taken_ms: EpochMs
    blob: BlobRef = Field(description="The JPEG in the `thumbnails` bucket.")


class PlateCrop(WireModel):
    """A plate read's evidence JPEG, uploaded by claim-check after the read was stored. It may
    arrive before or after its ``PlateRead``: central keeps it under the read's id either way.
    Idempotency key: ``read_id`` (one crop per read)."""

    type: Literal["plate_crop"] = "plate_crop"
    schema_version: Literal[1] = 1
    read_id: UUID = Field(description="The read it belongs to; the idempotency key.")
    agent_id: UUID = Field(description="Must match the routing key's agent.")
    camera_id: UUID = Field(description="The read's camera, of the agent's city.")
    blob: BlobRef = Field(description="The JPEG in the `lpr-images` bucket.")
    context: BlobRef | None = Field(
        None,
        description="The whole frame the crop was cut from (a camera with `lpr.context_frame`), "
        "a JPEG in `lpr-images` too.",
    )


class CameraHealth(WireModel):
    """One camera's recorder as the agent sees it (part of a heartbeat)."""

    camera_id: UUID
    status: Literal["online", "offline", "error", "disabled"]
    reason: str = Field(default="", max_length=200, description="Human reason, no credentials.")


class DiskHealth(WireModel):
    """The agent's video spool against its disk budget, at its last check."""

    used_bytes: int = Field(ge=0, le=2**53)
    free_bytes: int = Field(ge=0, le=2**53, description="Free space on the spool's filesystem.")
    capacity_bytes: int = Field(ge=0, le=2**53, description="What the budget lets it hold.")
    retention_days: float | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="Days of video that capacity holds at the "
        "measured recording rate (None until measured).",
    )


class Heartbeat(WireModel):
    """The agent's periodic health report, sent while connected (not through the outbox).

    State, not events: central keeps the newest by ``sent_ms``; ``heartbeat_id`` identifies it.
    """

    type: Literal["heartbeat"] = "heartbeat"
    schema_version: Literal[1] = 1
    heartbeat_id: UUID = Field(description="Unique per heartbeat.")
    agent_id: UUID = Field(description="Must match the routing key's agent.")
    sent_ms: EpochMs
    agent_version: str = Field(max_length=40, description="Agent software version.")
    outbox_pending: dict[
        Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")], Annotated[int, Field(ge=0)]
    ] = Field(default_factory=dict, max_length=32, description="Unsent outbox rows per kind.")
    oldest_pending_age_ms: int | None = Field(
        None, ge=0, description="Age of the oldest unsent outbox row."
    )
    pending_blob_bytes: int | None = Field(
        None, ge=0, le=2**53, description="Bytes of video and images not yet uploaded."
    )
    clock_sync: Literal["synced", "unsynced", "unknown"] = Field(
        default="unknown", description="Is the agent's clock disciplined by NTP (kernel's view)?"
    )
    clock_error_ms: int | None = Field(
        default=None, ge=0, le=10**9, description="The kernel's maximum clock error bound."
    )
    cameras: list[CameraHealth] = Field(
        default_factory=list, max_length=256, description="Each configured camera's recorder."
    )
    disk: DiskHealth | None = Field(default=None, description="Spool usage against the budget.")


LossReason = Literal["disk_budget", "file_missing", "corrupt"]


class LossEvent(WireModel):
    """Video the agent recorded but central will never receive: a time range of one camera.

    Sent when unsynced segments are evicted under the disk budget (``disk_budget``), when a
    registered file vanished (``file_missing``) or no longer matches its row (``corrupt``).
    Consecutive segments of one camera lost together travel as one event. Idempotency key:
    ``loss_id``.
    """

    type: Literal["loss_event"] = "loss_event"
    schema_version: Literal[1] = 1
    loss_id: UUID = Field(description="Made by the agent; the idempotency key.")
    agent_id: UUID = Field(description="Must match the routing key's agent.")
    camera_id: UUID = Field(description="A camera of the agent's city.")
    start_ms: EpochMs
    end_ms: EpochMs
    segments: int = Field(ge=1, le=1_000_000, description="How many segments were lost.")
    size_bytes: int = Field(ge=0, le=2**53, description="Their total size on the agent.")
    reason: LossReason = Field(description="Why the video is gone.")

    @model_validator(mode="after")
    def _range(self) -> LossEvent:
        if self.end_ms < self.start_ms:
            raise ValueError("end_ms is before start_ms")
        return self


class UploadRequest(WireModel):
    """Central → agent command: send this camera's segments that overlap [start_ms, end_ms)
    next, ahead of the rest of the video backlog (a clip needs them).

    Idempotency key: ``request_id`` (central derives it from the clip and the range, so a
    repeated request carries the same key); applying a request twice changes nothing either.
    Segments the agent does not hold (never recorded, evicted, already sent) are skipped.
    """

    type: Literal["upload_request"] = "upload_request"
    schema_version: Literal[1] = 1
    request_id: UUID = Field(description="Made by central; the idempotency key.")
    agent_id: UUID = Field(description="The agent addressed: the owner of the command queue.")
    camera_id: UUID = Field(description="A camera this agent records.")
    start_ms: EpochMs
    end_ms: EpochMs
    reason: str = Field(default="", max_length=200, description="Why, for the agent's log.")

    @model_validator(mode="after")
    def _range(self) -> UploadRequest:
        if self.end_ms <= self.start_ms:
            raise ValueError("end_ms is not after start_ms")
        return self


class WatchlistPlate(WireModel):
    """One plate of a city's watchlists, as an agent matches it."""

    plate: str = Field(pattern=PLATE_RE.pattern, description="Canonical plate.")
    watchlist_id: UUID = Field(description="The list it is on (named in alerts).")
    reason: str = Field(default="", max_length=200, description="Why it is listed.")


class WatchlistUpdate(WireModel):
    """Central → agent command: the agent's city's watchlists as they are now, whole.

    A replacement, not a diff, so a lost or reordered update cannot leave a wrong list: the
    agent applies an update only if its ``version`` is newer than the one it holds (central
    bumps the city's version with every change). Idempotency key: ``update_id``.
    """

    type: Literal["watchlist_update"] = "watchlist_update"
    schema_version: Literal[1] = 1
    update_id: UUID = Field(description="Made by central from the city and version.")
    agent_id: UUID = Field(description="The agent addressed: the owner of the command queue.")
    city_id: UUID = Field(description="The agent's city, whose lists these are.")
    version: int = Field(ge=0, le=2**53, description="The city's watchlist version.")
    plates: list[WatchlistPlate] = Field(
        max_length=MAX_WATCHLIST_PLATES,
        description="Every listed plate (a plate on two lists appears twice).",
    )


class CameraHint(WireModel):
    """One camera as central wants this agent to treat it."""

    camera_id: UUID = Field(description="A camera of the agent's city (matched by id).")
    enabled: bool = Field(
        description="false: central disabled the camera, or it is assigned to another agent; "
        "the agent stops recording it (and reading its plates) even if its YAML enables it."
    )


class ConfigHint(WireModel):
    """Central → agent command: what an admin changed at central that the agent must honour on
    top of its YAML (which stays the installer's and authoritative for everything else).

    Whole, not a diff: the agent applies a hint only if its ``version`` is newer than the one it
    holds (central bumps the agent's version with every change that concerns it), keeps it in
    its store and applies it again at start-up, before any camera starts. Idempotency key:
    ``hint_id``.
    """

    type: Literal["config_hint"] = "config_hint"
    schema_version: Literal[1] = 1
    hint_id: UUID = Field(description="Made by central from the agent and version.")
    agent_id: UUID = Field(description="The agent addressed: the owner of the command queue.")
    version: int = Field(ge=0, le=2**53, description="The agent's config hint version.")
    max_upload_mbps: float | None = Field(
        None,
        gt=0,
        le=100_000,
        description="Central's cap on this agent's blob uploads (megabits per second); the "
        "agent uses the smaller of it and its YAML's `sync.max_upload_mbps`. null: the YAML's.",
    )
    cameras: list[CameraHint] = Field(
        default_factory=list,
        max_length=MAX_HINT_CAMERAS,
        description="Cameras of the agent's city whose state central decides; a camera not "
        "listed, or listed as enabled, runs as the YAML says.",
    )

    @model_validator(mode="after")
    def _cameras_once(self) -> ConfigHint:
        seen: set[UUID] = set()
        for i, camera in enumerate(self.cameras):
            if camera.camera_id in seen:
                raise ValueError(f"cameras.{i}: camera {camera.camera_id} is listed twice")
            seen.add(camera.camera_id)
        return self

    def disabled_cameras(self) -> frozenset[UUID]:
        """The cameras central has disabled for this agent."""
        return frozenset(c.camera_id for c in self.cameras if not c.enabled)


class WatchlistAlert(WireModel):
    """A plate read on one of the agent's cameras matched a plate of a local watchlist: exactly,
    or within one character (``possible``, e.g. a misread glyph). Raised on the agent, so it
    fires while offline; queued before everything else. Idempotency key: ``alert_id``.

    Central stores it in ``alerts`` (queue ``central.alerts``), even before its plate read
    arrives: ``read_id`` links the two once it does.
    """

    type: Literal["watchlist_alert"] = "watchlist_alert"
    schema_version: Literal[1] = 1
    alert_id: UUID = Field(description="Made by the agent; the idempotency key.")
    agent_id: UUID = Field(description="Must match the routing key's agent.")
    camera_id: UUID = Field(description="A camera of the agent's city.")
    read_id: UUID = Field(description="The plate read that matched (a PlateRead's read_id).")
    plate: str = Field(pattern=PLATE_RE.pattern, description="The plate as read.")
    listed_plate: str = Field(pattern=PLATE_RE.pattern, description="The watchlist's plate.")
    match: Literal["exact", "possible"] = Field(
        description="exact: the same plate (or its Mercosul conversion); possible: one "
        "character apart."
    )
    watchlist_id: UUID | None = Field(None, description="The list the plate is on, if known.")
    confidence: float = Field(ge=0, le=1, description="The read's recogniser confidence.")
    detected_ms: EpochMs


Message = (
    SegmentRecorded
    | PlateRead
    | PlateReadBatch
    | Heartbeat
    | ThumbnailTaken
    | PlateCrop
    | LossEvent
    | UploadRequest
    | WatchlistUpdate
    | WatchlistAlert
    | ConfigHint
)

MESSAGE_TYPES: dict[str, type[Message]] = {
    "segment": SegmentRecorded,
    "plate_read": PlateRead,
    "plate_read_batch": PlateReadBatch,
    "heartbeat": Heartbeat,
    "thumbnail": ThumbnailTaken,
    "plate_crop": PlateCrop,
    "loss_event": LossEvent,
    "upload_request": UploadRequest,
    "watchlist_update": WatchlistUpdate,
    "watchlist_alert": WatchlistAlert,
    "config_hint": ConfigHint,
}


class MessageRejected(ValueError):
    """A body that is not a valid message of the expected type; ``reason`` is for the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(body: bytes, expected_type: str) -> Message:
    """Parse and validate one message body; raises MessageRejected with a one-line reason."""
    limit = BODY_LIMITS.get(expected_type, MAX_MESSAGE_BYTES)
    if len(body) > limit:
        raise MessageRejected(f"body too large: {len(body)} > {limit} bytes")
    model = MESSAGE_TYPES.get(expected_type)
    if model is None:
        raise MessageRejected(f"unknown message type {expected_type!r}")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = " -> ".join(str(p) for p in first["loc"]) or "body"
        raise MessageRejected(
            f"invalid {expected_type}: {where}: {first['msg']} ({exc.error_count()} error(s))"
        ) from None


def encode(message: Message) -> bytes:
    """Serialise a message to its JSON wire form."""
    return message.model_dump_json().encode()
