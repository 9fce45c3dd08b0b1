"""The ConfigHint command: round trip, frozen, bounds, duplicates and unknown versions refused."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from shared.messages import (
    MAX_HINT_BYTES,
    MAX_HINT_CAMERAS,
    CameraHint,
    ConfigHint,
    MessageRejected,
    decode,
    encode,
)


def hint(**changes: object) -> ConfigHint:
    fields: dict[str, object] = {
        "hint_id": uuid.uuid4(), "agent_id": uuid.uuid4(), "version": 3,
        "max_upload_mbps": 2.5,
        "cameras": [CameraHint(camera_id=uuid.uuid4(), enabled=False),
                    CameraHint(camera_id=uuid.uuid4(), enabled=True)],
    }  # fmt: skip
    return ConfigHint(**(fields | changes))  # type: ignore[arg-type]


def test_round_trip_and_disabled_cameras() -> None:
    h = hint()
    assert decode(encode(h), "config_hint") == h
    assert h.disabled_cameras() == {h.cameras[0].camera_id}
    with pytest.raises(ValidationError):
        h.version = 4  # type: ignore[misc]
    bare = hint(max_upload_mbps=None, cameras=[])
    assert decode(encode(bare), "config_hint") == bare


@pytest.mark.parametrize(
    "change, where",
    [
        ({"schema_version": 2}, "schema_version"),
        ({"max_upload_mbps": 0}, "max_upload_mbps"),
        ({"version": -1}, "version"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_hints_are_refused_with_the_field(change: dict[str, object], where: str) -> None:
    body = json.loads(encode(hint())) | change
    with pytest.raises(MessageRejected, match=where):
        decode(json.dumps(body).encode(), "config_hint")


def test_a_camera_listed_twice_or_too_many_is_refused() -> None:
    camera = uuid.uuid4()
    twice = [
        CameraHint(camera_id=camera, enabled=True),
        CameraHint(camera_id=camera, enabled=False),
    ]
    with pytest.raises(ValidationError, match="listed twice"):
        hint(cameras=twice)
    many = [CameraHint(camera_id=uuid.uuid4(), enabled=False) for _ in range(MAX_HINT_CAMERAS)]
    full = hint(cameras=many)
    assert len(encode(full)) <= MAX_HINT_BYTES, "the most cameras fit the body limit"
    body = json.loads(encode(full))
    body["cameras"].append({"camera_id": str(uuid.uuid4()), "enabled": False})
    with pytest.raises(MessageRejected, match="cameras"):
        decode(json.dumps(body).encode(), "config_hint")
    with pytest.raises(MessageRejected, match="too large"):
        decode(b" " * (MAX_HINT_BYTES + 1), "config_hint")
