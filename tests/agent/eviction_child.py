"""Step 7 killed half-way (tests/agent/test_eviction.py): commit an eviction, then kill -9 this
process before any file is unlinked.

    python -m tests.agent.eviction_child DB NEED_BYTES
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from agent.store import Store
from tests.agent.spool_child import AGENT_ID


async def main(db: Path, need_bytes: int) -> None:
    store = Store(db, AGENT_ID)
    await store.open()
    eviction = await store.evict(need_bytes, time.time_ns() // 1_000_000)
    print(len(eviction.segments), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no unlink, no close: the commit is all there is


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
