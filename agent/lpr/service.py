"""Plate recognition in the running agent: one ``LprCamera`` per camera with ``lpr.enabled``,
started and stopped with the camera's recorder, and a loop that releases held plate reads to
the outbox and keeps the watchlist in memory current."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from agent.config import AgentConfig, CameraConfig
from agent.lpr.camera import LprCamera
from agent.lpr.watchlist import WatchlistMatcher
from agent.store import Store

log = logging.getLogger(__name__)

TICK_S = 1.0
RESTART_AFTER_S = 10.0

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class LprService:
    def __init__(self, config: AgentConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.crops_dir = config.data_dir / "lpr"
        self.matcher = WatchlistMatcher(store)
        self.cameras: dict[str, LprCamera] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Until cancelled: release held reads whose segment is registered (or whose hold
        passed), reload the watchlist when a new one was loaded. Also the start-up recovery of
        reads held when the agent stopped."""
        while True:
            try:
                await self.matcher.refresh()
                await self.store.release_plate_reads()
            except Exception:  # the store is back next tick; LPR must not stop the agent
                log.exception("lpr: releasing plate reads failed; retrying")
            await asyncio.sleep(TICK_S)

    def start(self, key: str, camera: CameraConfig, spawn: Spawn) -> None:
        """Start reading plates on a camera, if its config asks for it."""
        if not camera.lpr.enabled:
            return
        cam = LprCamera(key, camera, self.store, self.crops_dir, self.matcher, self.config.agent_id)
        self.cameras[key] = cam
        self._tasks[key] = spawn(self._supervise(cam), f"lpr:{key}")

    async def stop(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        self.cameras.pop(key, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _supervise(self, cam: LprCamera) -> None:
        """An unexpected failure of one camera's LPR is logged and the camera's LPR restarted;
        it never stops the agent or the recording."""
        await self.matcher.refresh()
        while True:
            try:
                await cam.run()
                if cam.state == "error":
                    return  # a model that cannot be loaded: said in status, until the next config
            except Exception as exc:
                cam.state, cam.last_error = "error", f"{type(exc).__name__}: {exc}"
                log.exception("lpr camera=%s failed; restarting in %.0fs", cam.key, RESTART_AFTER_S)
            await asyncio.sleep(RESTART_AFTER_S)

    def status(self) -> dict[str, dict[str, object]]:
        return {key: cam.status() for key, cam in self.cameras.items()}
