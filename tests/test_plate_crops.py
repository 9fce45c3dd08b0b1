"""A plate read's evidence crop end to end, through real services: the agent's store (as its
LPR writes a read) -> relay (claim-check upload, PlateCrop) -> RabbitMQ -> central ingest ->
PostgreSQL + S3 -> the plate detail endpoint's presigned URLs (the crop's and, when the camera
keeps one, the context frame's). A crop whose file is gone is dropped on the agent without
holding anything back; a context frame whose file is gone leaves its crop to go alone."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from agent.lpr.camera import write_crop
from agent.store import LprRead, Store
from devstack.sync_harness import while_locked
from tests.central_fixtures import CentralProcess
from tests.test_end_to_end import RunningAgent, agent  # noqa: F401  (the agent fixture)


def crop_read(camera_id: uuid.UUID, path: Path, data: bytes | None) -> LprRead:
    now = time.time_ns() // 1_000_000
    return LprRead(
        read_id=uuid.uuid4(), camera_id=camera_id, plate="BRA2E19", confidence=0.95,
        seen_ms=now, first_ms=now - 500, last_ms=now + 300, box=(40, 60, 120, 32),
        crop_path=str(path), crop_size_bytes=len(data) if data else 1000,
        crop_sha256=hashlib.sha256(data).hexdigest() if data else "0" * 64,
    )  # fmt: skip


async def detail(central: CentralProcess, agent: RunningAgent, read_id: uuid.UUID) -> Any:  # noqa: F811
    resp = await central.http.get(f"/api/plates/{read_id}", headers=agent.headers)
    return resp.json() if resp.status_code == 200 else None


def crop_row(agent: RunningAgent, read_id: uuid.UUID) -> tuple[Any, Any] | None:  # noqa: F811
    conn = sqlite3.connect(agent.config.data_dir / "agent.sqlite3")
    try:
        row: tuple[Any, Any] | None = conn.execute(
            "SELECT sent_ms, dropped_ms FROM outbox WHERE kind = 'crop' AND ref_id = ?",
            [str(read_id)],
        ).fetchone()
        return row
    finally:
        conn.close()


@pytest.mark.timeout(180)
async def test_plate_read_crop_reaches_central_and_missing_file_is_dropped(
    central_api: CentralProcess,
    agent: RunningAgent,  # noqa: F811
    tmp_path: Path,
) -> None:
    camera_id = uuid.UUID(str(agent.ids["camera_id"]))
    image = np.zeros((48, 160, 3), np.uint8)
    cv2.putText(image, "BRA2E19", (4, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    crops = tmp_path / "lpr"
    scene = np.full((360, 640, 3), 90, np.uint8)
    scene[200:248, 300:460] = image
    scene_jpeg = cv2.imencode(".jpg", scene)[1].tobytes()
    good = replace(
        crop_read(camera_id, crops / "good.jpg", jpeg),
        context_path=str(crops / "good-context.jpg"),
        context_size_bytes=len(scene_jpeg),
        context_sha256=await asyncio.to_thread(write_crop, crops / "good-context.jpg", scene_jpeg),
    )
    await asyncio.to_thread(write_crop, crops / "good.jpg", jpeg)
    gone = crop_read(camera_id, crops / "gone.jpg", None)  # its file never made it to disk
    # a crop whose context frame vanished from the disk
    lonely = replace(
        crop_read(camera_id, crops / "lonely.jpg", jpeg),
        context_path=str(crops / "lonely-context.jpg"),
        context_size_bytes=len(scene_jpeg),
        context_sha256=hashlib.sha256(scene_jpeg).hexdigest(),
    )
    await asyncio.to_thread(write_crop, crops / "lonely.jpg", jpeg)
    # The test plays the agent's LPR: reads stored through a second connection to the store;
    # the running agent releases them to its outbox (hold 0) and its relay sends them.
    store = Store(agent.config.data_dir / "agent.sqlite3", agent.config.agent_id)
    await store.open()
    try:
        for read in (gone, good, lonely):
            # a second writer beside the running agent's: retried while it commits
            assert await while_locked(partial(store.add_lpr_read, read, [], hold_ms=0))
    finally:
        await store.close()

    hit = None
    for _ in range(180):
        hit = await detail(central_api, agent, good.read_id)
        if hit and hit["crop_url"]:
            break
        if agent.task.done():
            agent.task.result()  # surface the agent's crash
        await asyncio.sleep(0.5)
    assert hit and hit["crop_url"], f"no crop at central: {hit}"
    assert hit["plate"] == "BRA2E19" and hit["camera_id"] == str(camera_id)
    async with httpx.AsyncClient() as plain:
        got = await plain.get(hit["crop_url"])
    assert got.status_code == 200 and got.content == jpeg
    assert hit["context_url"], hit
    async with httpx.AsyncClient() as plain:
        got = await plain.get(hit["context_url"])
    assert got.status_code == 200 and got.content == scene_jpeg
    assert (crops / "good.jpg").read_bytes() == jpeg, "the agent keeps its evidence"

    # The crop without its file was dropped (not retried forever); its read still arrived.
    for _ in range(60):
        row = crop_row(agent, gone.read_id)
        lone = await detail(central_api, agent, gone.read_id)
        if row and row[1] is not None and lone:
            break
        await asyncio.sleep(0.5)
    assert row is not None and row[0] is None and row[1] is not None, row
    assert lone is not None and lone["crop_url"] is None, lone
    sent = crop_row(agent, good.read_id)
    assert sent is not None and sent[0] is not None, sent
    for _ in range(60):
        alone = await detail(central_api, agent, lonely.read_id)
        if alone and alone["crop_url"]:
            break
        await asyncio.sleep(0.5)
    assert alone and alone["crop_url"] and alone["context_url"] is None, alone
