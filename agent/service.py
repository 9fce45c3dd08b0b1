"""The running agent: one recorder per enabled camera and the relay, under one TaskGroup."""

from __future__ import annotations

import asyncio
import logging

from agent.config import AgentConfig
from agent.relay import Relay
from agent.segmenter import CameraRecorder
from agent.store import Store

log = logging.getLogger(__name__)


def store_path(config: AgentConfig) -> str:
    return str(config.data_dir / "agent.sqlite3")


async def run_agent(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Record and relay until ``stop`` is set (or forever). Closes the store on the way out."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.data_dir / "agent.sqlite3")
    await store.open()
    stop = stop or asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(Relay(config, store).run(), name="relay")]
            for key, camera in config.cameras.items():
                if camera.enabled:
                    recorder = CameraRecorder(key, camera, store, config.data_dir / "segments")
                    tasks.append(tg.create_task(recorder.run(), name=f"camera:{key}"))
            log.info("agent %s running %d camera(s)", config.agent_id, len(tasks) - 1)
            await stop.wait()
            for task in tasks:
                task.cancel()
    finally:
        await store.close()
