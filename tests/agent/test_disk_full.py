"""A full disk on the agent: something else fills the filesystem the spool and the store live
on. The agent keeps running, evicts what its budget allows (releasing its reserve so that the
eviction can commit), says why when even that is not enough, loses no committed row, and
records again by itself once there is room."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.eviction import RESERVE_BYTES
from agent.segmenter import DISK_FULL
from tests.agent.spool_child import CAMERA_KEY
from tests.agent.test_eviction import MIB, agent_with_budget, recovered_store
from tests.agent.test_reload import wait_until


@contextlib.contextmanager
def small_filesystem(where: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` at ``where`` (root only; the CI machines run tests as root)."""
    where.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> int:
    """Append to ``path`` until the filesystem is full; bytes written."""
    written = 0
    chunk = b"\0" * (64 * 1024)
    with path.open("ab") as fh:
        while True:
            try:
                fh.write(chunk)
                fh.flush()
                written += len(chunk)
            except OSError:
                return written


@contextlib.contextmanager
def hog(path: Path) -> Iterator[None]:
    """Another program taking every byte that becomes free, until the block ends."""
    done = threading.Event()

    def body() -> None:
        while not done.is_set():
            fill(path)
            done.wait(0.05)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)


@pytest.mark.timeout(240)
async def test_full_disk_evicts_with_the_reserve_says_why_and_recovers(
    camera: Any, tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "disk", 32) as disk:
        storage = {"max_bytes": None, "min_free_bytes": 2 * MIB, "check_seconds": 1}
        async with agent_with_budget(disk, camera.url, storage) as (agent, _path, data, task):
            reserve = Path(data["data_dir"]) / "disk-reserve"
            await wait_until("the recorder", lambda: CAMERA_KEY in agent.recorders, 30, task)
            recorder = agent.recorders[CAMERA_KEY]
            await wait_until("a few segments", lambda: recorder.segments_registered >= 3, 40, task)
            await wait_until("the reserve", reserve.exists, 20, task)
            assert reserve.stat().st_size == RESERVE_BYTES

            # 1. Another program fills the disk once: the eviction needs the reserve to commit,
            # then keeps recording going by evicting the oldest video (losses: nothing synced).
            ballast = disk / "ballast.bin"
            await asyncio.to_thread(fill, ballast)
            await wait_until("the reserve released",
                             lambda: agent.evictor.reserve_released >= 1, 30, task)  # fmt: skip
            before = recorder.segments_registered
            more = before + 3
            await wait_until("recording on a full disk",
                             lambda: recorder.segments_registered >= more, 60, task)  # fmt: skip
            check = agent.evictor.last_check or {}
            assert check["evicted_unsynced"] >= 1, check

            # 2. The program takes every byte freed: nothing the budget may evict makes room
            # for long. The agent stays up and says why it does not record.
            with hog(ballast):
                reason = await wait_until(
                    "the recorder to say the disk is full",
                    lambda: (
                        recorder.status == "error"
                        and recorder.reason
                        in (DISK_FULL, "recorder failed: database or disk is full")
                        and recorder.reason
                    ),
                    90,
                    task,
                )
                await asyncio.sleep(3)
                assert not task.done(), "the agent stopped on a full disk"
            # 3. Room again: recording resumes without a restart, the reserve comes back.
            ballast.unlink()
            before = recorder.segments_registered
            await wait_until(
                "recording to resume",
                lambda: recorder.status == "online" and recorder.segments_registered >= before + 2,
                90,
                task,
            )
            await wait_until("the reserve again", reserve.exists, 30, task)
            print("full disk: recorder said", repr(reason))

        async with recovered_store(Path(data["data_dir"])) as store:
            # every segment the disk took from us is accounted for as a loss, none is "lost"
            assert (await store.backlog())["lost"] == 0
