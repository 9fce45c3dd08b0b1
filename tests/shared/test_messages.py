"""Wire messages: strict parsing, size limit, clear rejection reasons."""

import uuid

import pytest

from shared.messages import (
    MAX_MESSAGE_BYTES,
    BlobRef,
    MessageRejected,
    SegmentRecorded,
    decode,
    encode,
)


def segment(**overrides: object) -> SegmentRecorded:
    fields: dict[str, object] = {
        "segment_id": uuid.uuid4(),
        "agent_id": uuid.uuid4(),
        "camera_id": uuid.uuid4(),
        "start_ms": 1_700_000_000_000,
        "duration_ms": 10_000,
        "codec": "h264",
        "blob": BlobRef(bucket="recordings", key="c/cam/seg.mp4", size_bytes=10, sha256="a" * 64),
    }
    fields.update(overrides)
    return SegmentRecorded.model_validate(fields)


def test_round_trip() -> None:
    msg = segment()
    assert decode(encode(msg), "segment") == msg


def test_unknown_field_rejected_with_path() -> None:
    body = encode(segment())[:-1] + b',"extra":1}'
    with pytest.raises(MessageRejected, match="extra"):
        decode(body, "segment")


def test_unknown_version_rejected() -> None:
    body = encode(segment()).replace(b'"schema_version":1', b'"schema_version":2')
    with pytest.raises(MessageRejected, match="schema_version"):
        decode(body, "segment")


def test_oversized_and_garbage_bodies() -> None:
    with pytest.raises(MessageRejected, match="too large"):
        decode(b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "segment")
    with pytest.raises(MessageRejected, match="invalid segment"):
        decode(b"\xff\xfe not json", "segment")
    with pytest.raises(MessageRejected, match="unknown message type"):
        decode(encode(segment()), "nope")


@pytest.mark.parametrize("key", ["../etc/passwd", "a//b", "/abs/key", "a/b/../c"])
def test_hostile_object_keys_rejected(key: str) -> None:
    with pytest.raises(ValueError):
        BlobRef(bucket="recordings", key=key, size_bytes=1, sha256="a" * 64)


def test_messages_are_frozen() -> None:
    msg = segment()
    with pytest.raises(ValueError):
        msg.duration_ms = 5  # type: ignore[misc]
