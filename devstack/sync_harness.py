"""Fault-test harness for sync: an agent enrolled at central, the agent and central's ingest as
real processes (``gtvision-agent run``, ``gtvision-central ingest``) that can be killed with
SIGKILL and restarted, and synthetic plate reads and segments written into the agent's store
the way its LPR and recorder would (one transaction with their outbox rows).

Used by the smoke tier (tests/sync/test_faults.py) and the longer tier (``python -m
bench.faults``); the checker that judges the outcome is devstack/sync_checker.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import aio_pika
import yaml
from pydantic import SecretStr

from agent.enroll import credentials_path, enroll
from agent.spool import run_dir
from agent.store import Segment, Store
from devstack.procs import start_process, stop_pid, tail
from shared.messages import PlateRead
from shared.topology import CONSUMER_QUEUES, declare_topology

T = TypeVar("T")

ADMIN = ("faults@example.com", "fault tier admin password 123")
CAMERA_KEY = "faultcam"  # spool folder of the injected segments
SEGMENT_MS = 2000
# Far from "now": injected reads and segments never meet real ones in time.
BASE_MS = 1_600_000_000_000


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def central_env(settings: Any) -> dict[str, str]:
    """Environment variables for a ``gtvision-central`` process with these Settings."""
    env: dict[str, str] = {}
    for name, value in settings:
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def with_port(url: str, port: int) -> str:
    """``url`` with its port replaced (e.g. to route it through a TcpProxy)."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{parts.hostname}:{port}" if userinfo else f"{parts.hostname}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class CliProcess:
    """One ``gtvision-*`` process: start, SIGKILL, SIGTERM, restart; output in ``log``."""

    def __init__(self, name: str, argv: list[str], log: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.wanted = False  # started and not stopped or killed on purpose since

    def start(self) -> CliProcess:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        with self.log.open("a") as fh:
            fh.write(f"--- start {time.strftime('%H:%M:%S')} ---\n")
        self.proc = start_process(self.argv, self.log, env=self.env)
        self.wanted = True
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} never started")
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no flush, no goodbye (the fault under test)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running:\n{self.tail()}")
        self.wanted = False
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (SIGKILL after ``timeout_s``) if it still runs."""
        self.wanted = False
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, timeout_s=timeout_s, name=self.name)
            self.proc.wait(10)

    def check(self) -> None:
        """Raise with the log tail if the process died on its own."""
        if self.wanted and self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}:\n{self.tail()}"
            )

    def tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)


def ingest_process(env: Mapping[str, str], log: Path, name: str = "ingest") -> CliProcess:
    """``gtvision-central ingest`` with central's settings as environment variables."""
    return CliProcess(name, [_bin("gtvision-central"), "ingest"], log, env)


@dataclass
class AgentSite:
    """A city with one camera in central and an agent enrolled for it (config on disk)."""

    config_path: Path
    data_dir: Path
    agent_id: UUID
    city_id: UUID
    camera_id: UUID
    amqp_url: str  # the agent's own broker user, as enrolled (not through any proxy)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "agent.sqlite3"

    @property
    def spool(self) -> Path:
        return self.data_dir / "segments"

    def process(self, log: Path | None = None) -> CliProcess:
        """``gtvision-agent run`` for this site (not started)."""
        return CliProcess(
            "agent",
            [_bin("gtvision-agent"), "run", "--config", str(self.config_path)],
            log or self.config_path.parent / "agent.log",
            {},
        )

    def route_amqp_via(self, port: int) -> None:
        """Point the agent's broker URL at another port (a TcpProxy in front of the broker);
        takes effect at the agent's next start."""
        creds_file = credentials_path(self.config_path)
        creds = yaml.safe_load(creds_file.read_text())
        creds["central"]["amqp_url"] = with_port(self.amqp_url, port)
        creds_file.write_text(yaml.safe_dump(creds, sort_keys=False))


async def enrol_site(database_url: str, api_url: str, workdir: Path) -> AgentSite:
    """Create the demo city and a camera, enrol an agent through central's API (one-time
    token, its own broker user) and write its config: no cameras recorded, video arrives by
    ``inject_segments``; the disk budget is generous so nothing is evicted."""
    from central.bootstrap import bootstrap  # central's dependencies only where needed

    ids = await bootstrap(
        database_url,
        admin_email=ADMIN[0],
        admin_password=ADMIN[1],
        camera_url="rtsp://127.0.0.1:9/faults",
        enrolment_token=True,
    )
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    config_path = workdir / "agent.yaml"
    data_dir = workdir / "agent"
    config_path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(data_dir),
                "storage": {"max_bytes": 64 * 1024**3, "min_free_bytes": None},
                "cameras": {},
            }
        )
    )
    await asyncio.to_thread(enroll, api_url, ids["enrolment_token"], config_path)
    creds = yaml.safe_load(credentials_path(config_path).read_text())
    return AgentSite(
        config_path=config_path,
        data_dir=data_dir,
        agent_id=UUID(creds["agent_id"]),
        city_id=UUID(creds["city_id"]),
        camera_id=UUID(str(ids["camera_id"])),
        amqp_url=creds["central"]["amqp_url"],
    )


def plate_of(i: int) -> str:
    """A distinct old-format plate (ABC1234) for each i below 175,760,000."""
    letters = ""
    n = i // 10_000
    for _ in range(3):
        n, r = divmod(n, 26)
        letters += chr(ord("A") + r)
    return f"{letters}{i % 10_000:04d}"


class Injector:
    """Writes plate reads and segments into an agent's store through a second connection, as
    the agent's own LPR and recorder would; numbers them so every read and segment is unique
    in (camera, time)."""

    def __init__(self, site: AgentSite) -> None:
        self.site = site
        self.reads = 0
        self.segments = 0
        self.run_id = uuid.uuid4()
        self._run_added = False

    async def _store(self) -> Store:
        store = Store(self.site.store_path, self.site.agent_id)
        await store.open()
        return store

    async def add_reads(self, n: int, batch: int = 1000) -> list[UUID]:
        """Commit ``n`` plate reads (with their outbox rows) in transactions of ``batch``."""
        store = await self._store()
        ids: list[UUID] = []
        try:
            for start in range(0, n, batch):
                reads = [
                    PlateRead(
                        read_id=uuid.uuid4(),
                        agent_id=self.site.agent_id,
                        camera_id=self.site.camera_id,
                        plate=plate_of(self.reads + i),
                        confidence=0.9,
                        seen_ms=BASE_MS + self.reads + i,
                    )
                    for i in range(start, min(n, start + batch))
                ]
                added = await while_locked(partial(store.add_plate_reads, reads))
                if added != len(reads):
                    raise RuntimeError(f"only {added} of {len(reads)} new reads were added")
                ids += [r.read_id for r in reads]
        finally:
            await store.close()
        self.reads += n
        return ids

    async def add_segments(self, n: int, size_bytes: int = 48 * 1024) -> list[UUID]:
        """Write ``n`` segment files into the spool and register each with its outbox row.

        The bytes are random, not MP4: the relay and central's claim-check move and verify
        bytes (size and SHA-256) and never parse them.
        """
        store = await self._store()
        ids: list[UUID] = []
        try:
            folder = run_dir(self.site.spool, CAMERA_KEY, self.run_id)
            if not self._run_added:
                await while_locked(
                    lambda: store.add_run(self.run_id, CAMERA_KEY, self.site.camera_id, BASE_MS)
                )
                self._run_added = True
            for _ in range(n):
                seq = self.segments
                data = os.urandom(size_bytes)
                path = folder / f"{seq:06d}.mp4"
                await asyncio.to_thread(_write_synced, path, data)
                seg = Segment(
                    segment_id=uuid.uuid4(),
                    camera_id=self.site.camera_id,
                    run_id=self.run_id,
                    seq=seq,
                    path=path,
                    start_ms=BASE_MS + seq * SEGMENT_MS,
                    duration_ms=SEGMENT_MS,
                    size_bytes=size_bytes,
                    sha256=hashlib.sha256(data).hexdigest(),
                    codec="h264",
                )
                if not await while_locked(partial(store.add_segment, seg)):
                    raise RuntimeError(f"segment file {path} was already registered")
                ids.append(seg.segment_id)
                self.segments += 1
        finally:
            await store.close()
        return ids


async def while_locked(write: Callable[[], Awaitable[T]], attempts: int = 20) -> T:
    """Retry a write that found the database locked. The agent's store has one writer by
    design; this injector is a second process, and a deferred transaction that reads first
    gets SQLITE_BUSY at once (no busy timeout) when the agent committed in between. Each
    write is one transaction, rolled back on the error, and idempotent."""
    for attempt in range(attempts):
        try:
            return await write()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


async def purge_central_queues(amqp_url: str) -> None:
    """Declare the topology and empty every consumer queue and DLQ (a session broker is shared
    by many tests: nothing an earlier one left may leak into the next)."""
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        channel = await conn.channel()
        await declare_topology(channel)
        for q in CONSUMER_QUEUES:
            for name in (q.name, q.dead_letter_queue):
                await (await channel.get_queue(name)).purge()


async def wait_for(
    what: str,
    check: Any,
    timeout_s: float,
    *,
    interval_s: float = 0.2,
    alive: tuple[CliProcess, ...] = (),
) -> Any:
    """Poll the async ``check`` until it returns something truthy; TimeoutError saying
    ``what`` otherwise. Fails at once if one of ``alive`` died on its own."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        for proc in alive:
            proc.check()
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what} ({last!r})")
        await asyncio.sleep(interval_s)
