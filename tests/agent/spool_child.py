"""A recording agent in miniature for the kill -9 tests (tests/agent/test_spool.py): reconcile the
spool as the agent does at start, then run one CameraRecorder until killed.

    python -m tests.agent.spool_child DB SPOOL RTSP_URL CAMERA_ID
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from pathlib import Path

from agent.config import CameraConfig
from agent.segmenter import CameraRecorder
from agent.spool import reconcile
from agent.store import Store

CAMERA_KEY = "cam"
AGENT_ID = uuid.UUID("5e9b6f0c-2a1d-4c3b-9e8f-7a6b5c4d3e2f")


async def main(db: Path, spool: Path, url: str, camera_id: str) -> None:
    store = Store(db, AGENT_ID)
    await store.open()
    await reconcile(store, spool)
    camera = CameraConfig.model_validate(
        {"id": camera_id, "name": "t", "url": url, "record": {"segment_seconds": 2}}
    )
    await CameraRecorder(CAMERA_KEY, camera, store, spool).run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]))
