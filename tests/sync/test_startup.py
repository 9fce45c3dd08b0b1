"""Central's ingest started before its dependencies: it waits for PostgreSQL, the object store
and the broker (central/startup.py) instead of exiting, then syncs everything; a dependency
that refuses its credentials ends it at once with the reason."""

from __future__ import annotations

import asyncio
import subprocess
from urllib.parse import urlsplit, urlunsplit

import pytest

from devstack.sync_harness import central_env, ingest_process, wait_for
from devstack.tcpproxy import TcpProxy
from tests.sync.conftest import Rig
from tests.sync.test_faults import amqp_port


async def logged(rig: Rig, text: str, after: int = 0) -> bool:
    log = rig.workdir / "ingest1.log"
    return text in log.read_text(errors="replace")[after:]


@pytest.mark.timeout(150)
async def test_ingest_waits_for_database_storage_and_broker_at_start(rig: Rig) -> None:
    async with TcpProxy("127.0.0.1", amqp_port(rig)) as proxy:
        await proxy.cut()
        await asyncio.to_thread(rig.services.stop, "postgres")
        await asyncio.to_thread(rig.services.stop, "s3")
        try:
            ingest = rig.ingest(amqp_port=proxy.port).start()
            # Each dependency in turn: the ingest says what it waits for and stays up.
            await wait_for("the ingest to wait for PostgreSQL",
                           lambda: logged(rig, "PostgreSQL is not reachable"), 30,
                           alive=(ingest,))  # fmt: skip
            await asyncio.to_thread(rig.services.get, "postgres")
            await wait_for("the ingest to wait for the object store",
                           lambda: logged(rig, "object storage is not reachable"), 60,
                           alive=(ingest,))  # fmt: skip
            await asyncio.to_thread(rig.services.get, "s3")
            await wait_for("the ingest to wait for the broker",
                           lambda: logged(rig, "RabbitMQ is not reachable"), 60,
                           alive=(ingest,))  # fmt: skip
        finally:
            await asyncio.to_thread(rig.services.get, "postgres")
            await asyncio.to_thread(rig.services.get, "s3")
        await proxy.restore()
        await rig.inject.add_reads(2000)
        await rig.inject.add_segments(3)
        rig.agent.start()
        await rig.wait_drained()
    await rig.check()


@pytest.mark.timeout(60)
async def test_refused_credentials_end_the_ingest_with_the_reason(rig: Rig) -> None:
    env = central_env(rig.settings)
    parts = urlsplit(env["DATABASE_URL"])
    user = parts.username or "postgres"
    netloc = f"{user}:wrong-password@{parts.hostname}:{parts.port}"
    env["DATABASE_URL"] = urlunsplit(parts._replace(netloc=netloc))
    proc = ingest_process(env, rig.workdir / "bad.log", "bad-ingest").start()
    assert proc.proc is not None
    try:
        code = await asyncio.to_thread(proc.proc.wait, 45)
    except subprocess.TimeoutExpired:
        proc.stop()
        pytest.fail("an ingest with a wrong database password kept running")
    assert code != 0
    assert "password" in proc.tail().lower(), proc.tail()
