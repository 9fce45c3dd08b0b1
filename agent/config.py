"""The agent's YAML config: one pydantic tree, unknown keys refused, errors name the key path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import UUID

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

RESERVED_CAMERA_KEY = "quarantine"  # the spool's folder for invalid segments
CameraKey = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecordConfig(Strict):
    segment_seconds: int = Field(
        10, ge=2, le=60, description="Target segment length; segments start on keyframes."
    )
    thumbnail_seconds: int = Field(
        10,
        ge=0,
        le=3600,
        description="A JPEG of the camera's view for central's mosaics at most this often "
        "(from a closed segment's first keyframe); 0 turns thumbnails off.",
    )
    thumbnail_width: int = Field(320, ge=64, le=1920, description="Thumbnail width in pixels.")
    stall_seconds: int = Field(
        0,
        ge=0,
        le=600,
        description="Restart the camera's recorder when no segment closes for this long "
        "(a stream that stays connected but sends no video); 0: 3 x segment_seconds + 10.",
    )

    def stall_after_s(self) -> float:
        return float(self.stall_seconds or 3 * self.segment_seconds + 10)


class LprConfig(Strict):
    """Plate recognition on a camera (docs/design/lpr.md)."""

    enabled: bool = Field(False, description="Read plates on this camera.")
    fps: float = Field(5.0, gt=0, le=30, description="Frames per second sampled for reading.")
    url: str | None = Field(
        None,
        max_length=500,
        description="A sub-stream to read plates from (RTSP, no credentials: the camera's "
        "username/password are used); unset: the recorded stream.",
    )
    rec_model: Path | None = Field(
        None,
        description="An ONNX plate reader instead of the bundled PP-OCRv6: a CTC text "
        "recogniser (float [N, 3, H, W] in, [N, T, classes] out) or a slot reader, "
        "fast-plate-ocr style (uint8 [N, H, W, C] in, [N, slots, alphabet] or "
        "[N, slots x alphabet] out); its kind is told from its input; checked at start-up.",
    )
    rec_charset: Path | None = Field(
        None,
        description="A CTC model's character list (one a line), if its metadata has none.",
    )
    rec_alphabet: str | None = Field(
        None,
        min_length=2,
        max_length=200,
        description="A slot reader's alphabet, one character per output class in order, '_' "
        "the pad (fast-plate-ocr's global models: 0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_).",
    )
    det_model: Path | None = Field(
        None,
        description="A YOLO plate-detector ONNX model (float [1, 3, H, W] in; out "
        "[1, N, 5+classes] as YOLOv5/v7 or [1, 4+classes, N] as YOLOv8/v11); its boxes "
        "replace the built-in candidate search; checked at start-up. None ships with the "
        "agent.",
    )
    det_conf: float = Field(
        0.4, gt=0, le=1, description="Detector boxes scoring below this are ignored."
    )
    det_iou: float = Field(
        0.45,
        gt=0,
        le=1,
        description="Detector boxes overlapping a better one by more than this "
        "(intersection over union) are dropped.",
    )
    min_confidence: float = Field(
        0.6, ge=0, le=1, description="Frame reads below this confidence are ignored."
    )
    max_plates: int = Field(
        6, ge=1, le=32, description="Plate candidates read per frame at most (cost per frame)."
    )
    suppress_seconds: int = Field(
        60,
        ge=0,
        le=3600,
        description="A plate read again on this camera within this many seconds of its "
        "previous passage is not stored again (a car waiting at a light).",
    )
    queue_frames: int = Field(
        4,
        ge=1,
        le=100,
        description="Frames waiting for the reader at most; when it falls behind, the oldest "
        "are dropped (and counted), so memory stays bounded.",
    )
    context_frame: bool = Field(
        False,
        description="Keep the whole frame of each read's evidence too (a JPEG beside the plate "
        "crop, sent to central with it): the vehicle and the scene, ~80 KB a read at 1280 px "
        "on the test scene, more on real footage.",
    )
    context_width: int = Field(
        1280, ge=320, le=3840, description="Context frames are scaled down to this width."
    )

    @field_validator("url")
    @classmethod
    def _rtsp_without_credentials(cls, url: str | None) -> str | None:
        return None if url is None else _check_rtsp_url(url)

    @model_validator(mode="after")
    def _models_load(self) -> LprConfig:
        if self.enabled:
            # Imported here: onnxruntime is loaded only by configs that read plates.
            from agent.lpr.models import ModelError, check_det_model, check_rec_model

            try:
                check_rec_model(self.rec_model, self.rec_charset, self.rec_alphabet)
                if self.det_model is not None:
                    check_det_model(self.det_model)
            except ModelError as exc:
                raise ValueError(str(exc)) from None
        return self


class CameraConfig(Strict):
    id: UUID = Field(description="The camera's id in central (cameras.id).")
    name: str = Field(max_length=255, description="Human name, shown in logs and status.")
    url: str = Field(
        max_length=500,
        description="RTSP URL without credentials, e.g. rtsp://10.0.0.5:554/stream1.",
    )
    username: str | None = Field(None, max_length=255, description="RTSP user name.")
    password: SecretStr | None = Field(None, description="RTSP password; never logged.")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    enabled: bool = Field(
        True,
        description="Record this camera; false keeps it configured. Central can disable it "
        "too (a config hint), never enable it.",
    )
    record: RecordConfig = Field(RecordConfig(), description="Recording settings.")
    lpr: LprConfig = Field(LprConfig(), description="Plate recognition on this camera.")

    @field_validator("url")
    @classmethod
    def _rtsp_without_credentials(cls, url: str) -> str:
        return _check_rtsp_url(url)

    def source_url(self) -> str:
        """The URL handed to ffmpeg, with credentials. Never log it: use ``url``."""
        return self._with_credentials(self.url)

    def lpr_source_url(self) -> str:
        """The stream plates are read from (``lpr.url`` or the recorded one), with credentials.
        Never log it."""
        return self._with_credentials(self.lpr.url or self.url)

    def _with_credentials(self, url: str) -> str:
        if not self.username:
            return url
        parts = urlsplit(url)
        secret = self.password.get_secret_value() if self.password else ""
        userinfo = quote(self.username, safe="") + ":" + quote(secret, safe="")
        netloc = f"{userinfo}@{parts.netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _check_rtsp_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("rtsp", "rtsps"):
        raise ValueError(f"must be an rtsp:// or rtsps:// URL (got scheme {parts.scheme!r})")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.username or parts.password:
        raise ValueError("must not contain credentials: use the username/password keys")
    return url


GIB = 1024**3
MIB = 1024**2


class StorageConfig(Strict):
    """The disk budget of the spool (docs/design/segments.md step 7)."""

    max_bytes: int | None = Field(
        None,
        ge=MIB,
        description="Most bytes of video segments the spool may hold (their registered sizes). "
        "Beyond it the oldest segments are evicted: those already synced first, unsynced ones "
        "only when no synced one is left (each reported to central as a loss). Unset: no cap "
        "of its own, only min_free_bytes applies.",
    )
    min_free_bytes: int | None = Field(
        2 * GIB,
        ge=0,
        description="Free space to keep on the spool's filesystem, for the store (plate reads "
        "are never evicted), the segment being written and the system. Video is evicted, in "
        "the same order, to keep it. Unset: free space is not checked.",
    )
    check_seconds: int = Field(
        10, ge=1, le=3600, description="How often the budget is checked (cheap: no disk walk)."
    )
    history_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="How long the store remembers segments whose video is gone (evicted or "
        "lost), and plate reads (with their crop files) central has had, before forgetting "
        "them; keeps the store from growing without end.",
    )

    @model_validator(mode="after")
    def _some_budget(self) -> StorageConfig:
        if self.max_bytes is None and self.min_free_bytes is None:
            raise ValueError("set max_bytes or min_free_bytes (or both): the disk would fill")
        return self


class SyncConfig(Strict):
    """How the relay uses the link to central (docs/design/sync.md "Throughput and priorities")."""

    max_upload_mbps: float = Field(
        0,
        ge=0,
        le=100_000,
        description="Cap on blob uploads (video, images) in megabits per second "
        "(1 Mbps = 125,000 bytes/s), so recordings catching up leave room on the link; "
        "0 = unlimited. Plate reads and other messages are never held back by it. Central "
        "may set a cap for this agent too (a config hint): the smaller one applies.",
    )

    def upload_bytes_per_s(self) -> float | None:
        """The cap in bytes per second, or None when uploads are unlimited."""
        return self.max_upload_mbps * 125_000 if self.max_upload_mbps else None


class CentralConfig(Strict):
    api_url: str = Field(description="Central HTTP API base URL, e.g. https://central.example/")
    amqp_url: SecretStr = Field(description="RabbitMQ URL with this agent's credentials.")
    token: SecretStr = Field(description="This agent's API token (issued at enrolment).")


class AgentConfig(Strict):
    agent_id: UUID = Field(description="This agent's id in central (agents.id).")
    city_id: UUID = Field(description="The city this agent serves (cidades.id).")
    data_dir: Path = Field(description="Spool directory: SQLite store and segments.")
    central: CentralConfig = Field(description="How to reach central.")
    storage: StorageConfig = Field(
        StorageConfig(), description="Disk budget of the spool; applied live on reload."
    )
    sync: SyncConfig = Field(
        SyncConfig(), description="Use of the link to central; applied live on reload."
    )
    cameras: dict[CameraKey, CameraConfig] = Field(
        default_factory=dict,
        description="Cameras by short name (lower case, digits, '_' or '-'): the name is used "
        "in logs and spool paths.",
    )

    @model_validator(mode="after")
    def _camera_ids_unique(self) -> AgentConfig:
        seen: dict[UUID, str] = {}
        if RESERVED_CAMERA_KEY in self.cameras:
            raise ValueError(f"the camera name {RESERVED_CAMERA_KEY!r} is reserved (spool folder)")
        for key, cam in self.cameras.items():
            if cam.id in seen:
                raise ValueError(f"cameras {seen[cam.id]!r} and {key!r} have the same id {cam.id}")
            seen[cam.id] = key
        return self


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key path and the value."""


_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^@/\s]*@", re.IGNORECASE)


def redact_url(text: str) -> str:
    """Mask any ``user:password@`` inside URLs in ``text``."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = " -> ".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = (
            ""
            if isinstance(value, dict | list) or err["type"] == "missing"
            else f" (got {value!r})"
        )
        if "password" in where or "token" in where or "amqp_url" in where:
            shown = ""
        lines.append(redact_url(f"{where}: {err['msg']}{shown}"))
    return "\n".join(lines)


CREDENTIALS_FILE = "credentials.yaml"


def _read_mapping(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        # Only the problem and its position: PyYAML's full message quotes the offending line,
        # which may hold a password.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    return data


def _merge(config: dict[str, Any], creds: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Overlay the credentials file; a key set in both files is an error, not a silent win."""
    out = dict(config)
    for key, value in creds.items():
        where = f"{path}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{where} -> ")
        elif key in out:
            raise ConfigError(f"{where} is set in both the config and {CREDENTIALS_FILE}")
        else:
            out[key] = value
    return out


def parse_config(
    text: str, source: str = "<config>", credentials: str | None = None
) -> AgentConfig:
    """Validate YAML text (plus the credentials file's, if any) into an AgentConfig.

    Raises ConfigError naming every bad key path.
    """
    data = _read_mapping(text, source)
    if credentials is not None:
        data = _merge(data, _read_mapping(credentials, CREDENTIALS_FILE))
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}:\n{_describe(exc)}") from None


def load_config(path: Path) -> AgentConfig:
    """Read and validate a config file and, beside it, the credentials ``enroll`` wrote."""
    creds_path = path.parent / CREDENTIALS_FILE
    try:
        text = path.read_text()
        creds = creds_path.read_text() if creds_path.exists() else None
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(path), creds)
