"""The fault rig: central's API in this process, central's ingest and the agent as real
processes (devstack/sync_harness.py), the checker (devstack/sync_checker.py) to judge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from minio import Minio

from central.settings import Settings
from devstack.pytest_plugin import RabbitBroker, TestServices
from devstack.sync_checker import SyncReport, check_sync, read_agent
from devstack.sync_harness import (
    AgentSite,
    CliProcess,
    Injector,
    central_env,
    enrol_site,
    ingest_process,
    purge_central_queues,
    wait_for,
    with_port,
)
from tests.central_fixtures import CentralProcess

DRAIN_TIMEOUT_S = 120.0


@dataclass
class Rig:
    site: AgentSite
    inject: Injector
    settings: Settings
    pool: asyncpg.Pool
    s3: Minio
    broker: RabbitBroker
    services: TestServices
    workdir: Path
    agent: CliProcess
    ingests: list[CliProcess] = field(default_factory=list)

    def ingest(self, *, amqp_port: int | None = None) -> CliProcess:
        """A new (not started) ingest process; ``amqp_port`` routes it through a proxy."""
        env = central_env(self.settings)
        if amqp_port is not None:
            env["AMQP_URL"] = with_port(env["AMQP_URL"], amqp_port)
        n = len(self.ingests) + 1
        proc = ingest_process(env, self.workdir / f"ingest{n}.log", f"ingest{n}")
        self.ingests.append(proc)
        return proc

    def running(self) -> tuple[CliProcess, ...]:
        """The processes that should be running (one that died on its own fails the wait)."""
        return tuple(p for p in (self.agent, *self.ingests) if p.wanted)

    async def central_reads(self) -> int:
        async with self.pool.acquire() as conn:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM lpr_events WHERE city_id = $1", self.site.city_id
            )
        return n

    async def central_segments(self) -> int:
        async with self.pool.acquire() as conn:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM segments WHERE agent_id = $1", self.site.agent_id
            )
        return n

    async def wait_reads(self, at_least: int, timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        async def enough() -> int | None:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                n = await self.central_reads()
                return n if n >= at_least else None
            return None

        n: int = await wait_for(f">= {at_least} reads in central", enough, timeout_s,
                                alive=self.running())  # fmt: skip
        return n

    async def wait_drained(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Until central holds every read and segment the agent committed and its outbox is
        empty (a processes dying on its own fails at once)."""

        async def drained() -> bool:
            agent = await asyncio.to_thread(read_agent, self.site.store_path)
            if agent.unsent:
                return False
            try:
                reads, segments = await self.central_reads(), await self.central_segments()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return False
            return reads >= len(agent.reads) and segments >= len(agent.segments)

        await wait_for("the agent's outbox to drain into central", drained, timeout_s,
                       interval_s=0.3, alive=self.running())  # fmt: skip

    async def check(self, expected_dlq: Mapping[str, Collection[str]] | None = None) -> SyncReport:
        """Run the checker, print its counts (CI logs show them) and fail on any problem."""
        await asyncio.sleep(1.0)  # a late redelivery would land within this
        report = await check_sync(
            self.site.store_path,
            self.pool,
            self.s3,
            self.settings.amqp_url.get_secret_value(),
            agent_id=self.site.agent_id,
            city_id=self.site.city_id,
            expected_dlq=expected_dlq,
        )
        print(report.line())
        report.raise_if_failed()
        return report


@pytest.fixture
async def rig(
    central_api: CentralProcess,
    central_settings: Settings,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    rabbitmq: RabbitBroker,
    devstack_services: TestServices,
    tmp_path: Path,
) -> AsyncIterator[Rig]:
    """An enrolled agent (not started) and nothing consuming yet; every process and service
    a test stopped is dealt with afterwards."""
    await purge_central_queues(central_settings.amqp_url.get_secret_value())
    site = await enrol_site(
        central_settings.database_url.get_secret_value(), central_api.url, tmp_path
    )
    rig = Rig(
        site=site,
        inject=Injector(site),
        settings=central_settings,
        pool=db_pool,
        s3=s3_client,
        broker=rabbitmq,
        services=devstack_services,
        workdir=tmp_path,
        agent=site.process(tmp_path / "agent.log"),
    )
    try:
        yield rig
    finally:
        for proc in (rig.agent, *rig.ingests):
            proc.stop()
        # A test that failed half-way may leave a service stopped: the session needs it.
        await asyncio.to_thread(devstack_services.get, "postgres")
        await asyncio.to_thread(devstack_services.get, "s3")
        if not rabbitmq.running:
            await asyncio.to_thread(rabbitmq.start)


def dump_logs(rig: Rig) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in (rig.agent, *rig.ingests))
