"""Sync end to end: plate reads (SQLite outbox -> RabbitMQ -> PostgreSQL) drain rate, loss and
latency against a bare aio-pika publisher and a bare asyncpg COPY; a big backlog's drain and the
latency of live reads meanwhile; blob uploads against a bare ``minio`` put loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from uuid import UUID

import aio_pika
import asyncpg
import httpx
from minio import Minio
from pydantic import SecretStr

from agent.config import AgentConfig, CentralConfig
from agent.relay import MAX_WINDOW_MESSAGES, PUBLISH_TIMEOUT_S, Relay
from agent.store import RawOutboxRow, Segment, Store
from central import agents, cameras, cities, migrate, plates
from central.broker import BrokerAdmin, agent_amqp_url
from central.db import create_pool
from devstack.procs import ProcRef, RunningService, free_port, start_process, tail
from devstack.stack import Ports, Stack, StackOptions
from shared.messages import PlateRead
from shared.topology import PLATES_QUEUE, find_events_exchange, routing_key

SERVICES = ["postgres", "rabbitmq", "s3", "redis"]  # s3: `gtvision-central ingest` demands it
INSERT_BATCH = 1000  # reads per add_plate_reads call when filling the backlog
COPY_BATCH = 10_000  # reads per COPY (one transaction, one commit) in the COPY baseline
WINDOW = MAX_WINDOW_MESSAGES  # the baselines keep as many publishes in flight as the relay
WARMUP_READS = 2000
POLL_S = 0.01  # online latency: how often PostgreSQL is asked which reads arrived
CLK_TCK = os.sysconf("SC_CLK_TCK")
# One camera per phase: each phase's reads are counted apart in lpr_events.
CAMERAS = ("warmup", "window", "batched", "copy", "single", "drain", "online", "backlog",
           "drainlive", "blob")  # fmt: skip


# --- CPU per component -----------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds incl. reaped children) for every process, from /proc."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # comm may contain spaces or parentheses: the fields start after the last ')'.
        f = stat[stat.rindex(")") + 2 :].split()
        # stat(5) fields 4 (ppid) and 14-17 (utime, stime, cutime, cstime). cutime/cstime hold
        # children already reaped (a finished postgres backend), which are no longer in /proc.
        table[int(entry)] = (int(f[1]), sum(int(x) for x in f[11:15]) / CLK_TCK)
    return table


def _tree_cpu_s(roots: Sequence[int], table: dict[int, tuple[int, float]]) -> float:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = list(roots)
    total = 0.0
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, []))
    return total


@dataclass
class CpuMeter:
    """CPU seconds of each component: this process (agent side), ingest, broker, database."""

    roots: dict[str, list[int]]

    def snapshot(self) -> dict[str, float]:
        table = _proc_table()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {"bench": ru.ru_utime + ru.ru_stime}
        for name, pids in self.roots.items():
            out[name] = _tree_cpu_s(pids, table)
        return out


def _cpu_line(before: dict[str, float], after: dict[str, float], wall_s: float, n: int) -> str:
    parts = []
    total = 0.0
    for name in after:
        d = after[name] - before.get(name, 0.0)
        total += d
        parts.append(f"{name} {d:.1f} s ({d / n * 1e6:.0f} us/read)")
    return (
        f"CPU: {', '.join(parts)}; total {total:.1f} s over {wall_s:.1f} s wall "
        f"= {total / wall_s:.2f} cores"
    )


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}


# --- The agent's store, with its relay-facing calls timed ------------------------------------


class TimedStore(Store):
    """The real store; only adds up the wall time the relay spends waiting on SQLite."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.pending_s = 0.0
        self.mark_s = 0.0
        self.rounds = 0

    def reset(self) -> None:
        self.pending_s = self.mark_s = 0.0
        self.rounds = 0

    async def pending_of(
        self,
        kinds: Collection[str],
        limit: int,
        after: tuple[int, int] | None = None,
        below: int | None = None,
        through: int | None = None,
        newer: tuple[int, int] | None = None,
    ) -> list[RawOutboxRow]:
        t = time.perf_counter()
        try:
            return await super().pending_of(kinds, limit, after, below, through, newer)
        finally:
            self.pending_s += time.perf_counter() - t

    async def mark_sent_many(self, outbox_ids: list[int]) -> None:
        t = time.perf_counter()
        try:
            await super().mark_sent_many(outbox_ids)
        finally:
            self.mark_s += time.perf_counter() - t
            self.rounds += 1


# --- Helpers ---------------------------------------------------------------------------------


def _plate(i: int) -> str:
    """A valid Mercosul plate (ABC1D23) derived from i."""
    letters = "ABCDEFGHIJ"
    return f"BR{letters[(i // 1000) % 10]}{i % 10}{letters[(i // 10) % 10]}{(i // 100) % 100:02d}"


def make_reads(agent_id: UUID, camera_id: UUID, n: int, start: int = 0) -> list[PlateRead]:
    now = time.time_ns() // 1_000_000
    return [
        PlateRead(
            read_id=uuid.uuid4(),
            agent_id=agent_id,
            camera_id=camera_id,
            plate=_plate(start + i),
            confidence=0.93,
            seen_ms=now,
        )
        for i in range(n)
    ]


def wire_body(read: PlateRead) -> bytes:
    # Byte for byte what the relay sends for a read alone: the store keeps model_dump_json()
    # and the relay sends it as it is.
    return read.model_dump_json().encode()


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def wait_in_pg(
    pool: asyncpg.Pool,
    camera_id: UUID,
    last_id: UUID,
    n: int,
    timeout_s: float,
    check: Callable[[], None] | None = None,
) -> float:
    """Monotonic time of the first poll that sees ``n`` reads of the camera in PostgreSQL.

    Polls the last read's primary key every 20 ms (cheap), and counts the camera's rows only
    once it is there: a count(*) over 100k rows every few ms would load the database it
    measures. The relay and the consumer keep order, so the last read is (almost) always last.
    """
    deadline = time.monotonic() + timeout_s
    seen_last = False
    async with pool.acquire() as conn:
        while time.monotonic() < deadline:
            if check is not None:
                check()
            t = time.monotonic()
            if not seen_last:
                seen_last = bool(
                    await conn.fetchval("SELECT 1 FROM lpr_events WHERE id = $1", last_id)
                )
            if seen_last:
                count: int = await conn.fetchval(
                    "SELECT count(*) FROM lpr_events WHERE camera_id = $1", camera_id
                )
                if count >= n:
                    return t
                await asyncio.sleep(0.1)
                continue
            await asyncio.sleep(0.02)
        count = await conn.fetchval(
            "SELECT count(*) FROM lpr_events WHERE camera_id = $1", camera_id
        )
    raise TimeoutError(f"only {count} of {n} reads reached PostgreSQL in {timeout_s:.0f} s")


@dataclass
class Site:
    """The city, agent and cameras the bench publishes as, the agent's broker URL and its API
    token (for upload grants)."""

    city: UUID
    agent: UUID
    cameras: dict[str, UUID]
    amqp_url: str
    user: str
    token: str


async def make_site(pool: asyncpg.Pool, broker: BrokerAdmin, amqp_url: str) -> Site:
    async with pool.acquire() as conn:
        city = await cities.create_city(conn, "Bench", "SP", 30)
        agent, token = await agents.create_agent(conn, city, "bench-agent")
        cams = {
            name: await cameras.create_camera(conn, city, f"bench-{name}", "rtsp://x/y", agent)
            for name in CAMERAS
        }
    user, password = await broker.create_agent_user(agent, city)
    return Site(city, agent, cams, agent_amqp_url(amqp_url, user, password), user, token)


async def queue_stats(mgmt: httpx.AsyncClient) -> dict[str, Any]:
    resp = await mgmt.get(f"/api/queues/%2F/{PLATES_QUEUE.name}")
    resp.raise_for_status()
    stats: dict[str, Any] = resp.json()
    return stats


async def wait_consumers(mgmt: httpx.AsyncClient, ingest_alive: Callable[[], bool]) -> None:
    """Until central's ingest consumes the plates queue (it declares the topology first)."""
    for _ in range(600):
        if not ingest_alive():
            raise RuntimeError("central ingest exited")
        with contextlib.suppress(httpx.HTTPError):
            resp = await mgmt.get(f"/api/queues/%2F/{PLATES_QUEUE.name}")
            if resp.status_code == 200 and resp.json().get("consumers", 0) >= 1:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError("central ingest did not start consuming in 60 s")


# --- Phases ----------------------------------------------------------------------------------


@dataclass
class Results:
    reads: int
    quick: bool
    figures: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


async def publish_bare(site: Site, reads: list[PlateRead], *, batched: bool) -> tuple[float, float]:
    """A bare aio-pika publisher, confirms on, WINDOW publishes in flight, as the agent's user.

    ``batched``: the relay's shape (publish WINDOW, wait for every confirm, repeat); else a
    sliding window (a new publish as soon as any confirm arrives). Returns (start, confirmed)
    monotonic times; bodies are encoded before the clock starts.
    """
    key = routing_key("plate_read", site.city, site.agent)
    items = [(wire_body(r), f"plate_read:{r.read_id}") for r in reads]
    conn = await aio_pika.connect(site.amqp_url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await find_events_exchange(channel)

        async def publish(body: bytes, message_id: str) -> None:
            await exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=message_id,
                    user_id=site.user,
                ),
                routing_key=key,
                timeout=PUBLISH_TIMEOUT_S,
            )

        t0 = time.monotonic()
        if batched:
            for i in range(0, len(items), WINDOW):
                await asyncio.gather(*(publish(b, m) for b, m in items[i : i + WINDOW]))
        else:
            it: Iterator[tuple[bytes, str]] = iter(items)

            async def worker() -> None:
                for body, message_id in it:  # one shared iterator: WINDOW workers drain it
                    await publish(body, message_id)

            await asyncio.gather(*(worker() for _ in range(WINDOW)))
        return t0, time.monotonic()


async def run_baseline(
    name: str, site: Site, pool: asyncpg.Pool, meter: CpuMeter, n: int, res: Results
) -> float:
    reads = make_reads(site.agent, site.cameras[name], n)
    cpu0 = meter.snapshot()
    t0, t_conf = await publish_bare(site, reads, batched=name == "batched")
    t_pg = await wait_in_pg(pool, site.cameras[name], reads[-1].read_id, n, max(120.0, n / 100))
    cpu1 = meter.snapshot()
    rate = n / (t_pg - t0)
    shape = "batches of" if name == "batched" else "sliding window of"
    print(
        f"baseline ({shape} {WINDOW}): {n} msgs confirmed in {t_conf - t0:.2f} s "
        f"({n / (t_conf - t0):.0f}/s), all in PostgreSQL after {t_pg - t0:.2f} s: "
        f"{rate:.0f} msgs/s",
        flush=True,
    )
    print("  " + _cpu_line(cpu0, cpu1, t_pg - t0, n), flush=True)
    res.cpu[f"baseline_{name}"] = _cpu_delta(cpu0, cpu1)
    return rate


async def run_copy(site: Site, pool: asyncpg.Pool, meter: CpuMeter, n: int, res: Results) -> float:
    """Bare asyncpg: the same number of reads written into ``lpr_events`` itself (the table the
    ingest writes, with all its indexes) by ``copy_records_to_table``, COPY_BATCH rows per COPY
    (each its own transaction), one after another. Rows are built before the clock starts."""
    camera = site.cameras["copy"]
    records = [
        (r.read_id, r.camera_id, r.plate, round(r.confidence, 2), None,
         plates._naive_utc(r.seen_ms), site.city)
        for r in make_reads(site.agent, camera, n)
    ]  # fmt: skip
    columns = ["id", "camera_id", "plate", "confidence", "image_url", "detected_at", "city_id"]
    cpu0 = meter.snapshot()
    t0 = time.monotonic()
    async with pool.acquire() as conn:
        for i in range(0, n, COPY_BATCH):
            await conn.copy_records_to_table(
                "lpr_events", records=records[i : i + COPY_BATCH], columns=columns
            )
        elapsed = time.monotonic() - t0
        cpu1 = meter.snapshot()
        stored = await plates.count_reads(conn, camera)
    if stored != n:
        raise RuntimeError(f"COPY stored {stored} of {n} reads")
    rate = n / elapsed
    print(
        f"baseline (asyncpg COPY into lpr_events, {COPY_BATCH} rows per COPY): {n} reads "
        f"in {elapsed:.2f} s: {rate:.0f} reads/s",
        flush=True,
    )
    print("  " + _cpu_line(cpu0, cpu1, elapsed, n), flush=True)
    res.cpu["baseline_copy"] = _cpu_delta(cpu0, cpu1)
    return rate


async def fill_backlog(
    store: Store, site: Site, n: int, camera: str = "drain"
) -> tuple[list[PlateRead], float]:
    reads = make_reads(site.agent, site.cameras[camera], n)
    t0 = time.perf_counter()
    for i in range(0, n, INSERT_BATCH):
        added = await store.add_plate_reads(reads[i : i + INSERT_BATCH])
        if added != len(reads[i : i + INSERT_BATCH]):
            raise RuntimeError(f"add_plate_reads added {added} of a fresh batch")
    elapsed = time.perf_counter() - t0
    rate = n / elapsed
    print(
        f"SQLite: {n} reads inserted with add_plate_reads in batches of {INSERT_BATCH} in "
        f"{elapsed:.2f} s: {rate:.0f} reads/s",
        flush=True,
    )
    return reads, rate


def _task_check(task: asyncio.Task[None]) -> Callable[[], None]:
    def check() -> None:
        if task.done():
            task.result()  # surfaces the relay's crash
            raise RuntimeError("the relay stopped")

    return check


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_drain(
    config: AgentConfig,
    store: TimedStore,
    site: Site,
    pool: asyncpg.Pool,
    meter: CpuMeter,
    reads: list[PlateRead],
    res: Results,
    *,
    reads_per_message: int | None = None,
) -> float:
    """Drain the backlog with the relay. ``reads_per_message=1``: one read per AMQP message
    (the figures go under ``single_``, camera "single"); default: the relay's batches."""
    n = len(reads)
    prefix = "single_" if reads_per_message == 1 else ""
    camera = site.cameras["single" if reads_per_message == 1 else "drain"]
    store.reset()
    relay = (
        Relay(config, store)
        if reads_per_message is None
        else Relay(config, store, plate_reads_per_message=reads_per_message)
    )
    cpu0 = meter.snapshot()
    t0 = time.monotonic()
    task = asyncio.create_task(relay.run(), name="relay")
    sent_at: list[float] = []

    async def watch_sent() -> None:
        # relay.sent is a plain counter: nothing to wait on but the clock.
        while True:
            if relay.sent >= n:
                sent_at.append(time.monotonic())
                return
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_sent())
    try:
        t_pg = await wait_in_pg(
            pool, camera, reads[-1].read_id, n, max(180.0, n / 50), _task_check(task)
        )
        cpu1 = meter.snapshot()
    finally:
        watcher.cancel()
        await _stop(task)
        _count_messages(res, relay)
    wall = t_pg - t0
    rate = n / wall
    t_sent = sent_at[0] - t0 if sent_at else float("nan")
    print(
        f"relay drain, {relay.reads_per_message} read(s) per message, {relay.window} messages "
        f"in flight: {n} reads from SQLite all in PostgreSQL after {wall:.2f} s: "
        f"{rate:.0f} reads/s end to end (relay marked the last sent at {t_sent:.2f} s)",
        flush=True,
    )
    print(
        f"  relay wall time until the last mark: {store.rounds} mark_sent_many() calls "
        f"({store.mark_s:.2f} s, overlapping the publishing), pending_of() {store.pending_s:.2f} s",
        flush=True,
    )
    print("  " + _cpu_line(cpu0, cpu1, wall, n), flush=True)
    res.cpu[f"{prefix}drain"] = _cpu_delta(cpu0, cpu1)
    res.figures |= {
        f"{prefix}drain_relay_last_mark_s": round(t_sent, 3),
        f"{prefix}drain_pending_s": round(store.pending_s, 3),
        f"{prefix}drain_mark_sent_s": round(store.mark_s, 3),
        f"{prefix}drain_mark_calls": store.rounds,
    }

    # 0 lost, 0 duplicated: every read_id exactly once.
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id FROM lpr_events WHERE camera_id = $1", camera)
    got = [r["id"] for r in rows]
    ids = set(got)
    expected = {r.read_id for r in reads}
    lost = len(expected - ids)
    duplicated = len(got) - len(ids)
    unexpected = len(ids - expected)
    # Re-running the relay over rows already sent must publish nothing.
    again = Relay(config, store)
    try:
        resent = await again.run_once()
    finally:
        await again.close()
    left = await store.pending(limit=10)
    await asyncio.sleep(1.0)  # anything re-sent would land within this
    async with pool.acquire() as conn:
        after: int = await conn.fetchval(
            "SELECT count(*) FROM lpr_events WHERE camera_id = $1", camera
        )
    duplicated += resent + (after - len(got))
    print(
        f"  check: {len(got)} rows for {n} reads, {len(ids)} distinct, lost {lost}, "
        f"duplicated {duplicated}, unexpected {unexpected}; re-run of the relay sent {resent}, "
        f"outbox pending {len(left)}",
        flush=True,
    )
    lost += len(left)
    res.figures[f"{prefix}e2e_reads_per_s"] = round(rate)
    for key, value in (("lost", lost), ("duplicated", duplicated), ("unexpected", unexpected)):
        res.figures[key] = res.figures.get(key, 0) + value
    return rate


@dataclass
class Live:
    """Live reads written one per transaction, and when PostgreSQL had each."""

    lat_ms: list[float]  # sorted: write start -> the first poll of PostgreSQL that saw it
    commit_lat_ms: list[float]  # sorted: commit at the agent -> that poll
    written: int
    achieved: float  # reads/s written
    write_s: list[float]  # sorted SQLite write times (start -> commit)
    write_wall_s: float
    wall_s: float  # first write -> the last arrival (or the wait's end)

    @property
    def lost(self) -> int:
        return self.written - len(self.lat_ms)

    def line(self) -> str:
        def ps(lat: list[float]) -> str:
            return (
                f"p50 {percentile(lat, 50):.0f} ms, p95 {percentile(lat, 95):.0f} ms, "
                f"p99 {percentile(lat, 99):.0f} ms, max {lat[-1] if lat else float('nan'):.0f} ms"
            )

        return (
            f"{self.written} reads written one per transaction at {self.achieved:.1f}/s for "
            f"{self.write_wall_s:.1f} s (SQLite write p50 "
            f"{percentile(self.write_s, 50) * 1000:.1f} ms, p99 "
            f"{percentile(self.write_s, 99) * 1000:.1f} ms); {len(self.lat_ms)} arrived, lost "
            f"{self.lost}\n  latency (poll every {POLL_S * 1000:.0f} ms) write start -> "
            f"PostgreSQL: {ps(self.lat_ms)}; commit -> PostgreSQL: {ps(self.commit_lat_ms)}"
        )


async def write_live(
    store: Store,
    site: Site,
    camera: UUID,
    pool: asyncpg.Pool,
    rate: float,
    check: Callable[[], None],
    stop: Callable[[int], bool],
) -> Live:
    """Write reads of ``camera`` one per transaction at ``rate`` per second until ``stop(n)``
    (n written so far) is true, polling PostgreSQL every POLL_S for the ones still out; then
    wait up to 60 s for the rest. Each write starts on its schedule without waiting for the
    previous one's commit (reads come from independent cameras), so a slow commit delays
    that read only."""
    started: dict[UUID, float] = {}
    committed: dict[UUID, float] = {}
    arrived: dict[UUID, float] = {}
    outstanding: set[UUID] = set()
    write_s: list[float] = []
    writes: set[asyncio.Task[None]] = set()
    writing = True

    async def poll() -> None:
        async with pool.acquire() as conn:
            while writing or outstanding:
                if outstanding:
                    # The poll's start: a row it returns was committed before its snapshot.
                    t = time.monotonic()
                    rows = await conn.fetch(
                        "SELECT id FROM lpr_events WHERE id = ANY($1::uuid[])", list(outstanding)
                    )
                    for r in rows:
                        arrived[r["id"]] = t
                        outstanding.discard(r["id"])
                await asyncio.sleep(POLL_S)

    async def write(read: PlateRead) -> None:
        await store.add_plate_reads([read])
        committed[read.read_id] = time.monotonic()
        write_s.append(committed[read.read_id] - started[read.read_id])

    poller = asyncio.create_task(poll())
    t0 = time.monotonic()
    i = 0
    try:
        while not stop(i):
            # Absolute schedule: a slow write does not slow the rate down for good.
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            check()
            wall_ms = time.time_ns() // 1_000_000
            read = PlateRead(read_id=uuid.uuid4(), agent_id=site.agent, camera_id=camera,
                             plate=_plate(i), confidence=0.91, seen_ms=wall_ms)  # fmt: skip
            started[read.read_id] = time.monotonic()
            outstanding.add(read.read_id)
            task = asyncio.create_task(write(read))
            writes.add(task)
            task.add_done_callback(writes.discard)
            i += 1
        t_written = time.monotonic()
        await asyncio.gather(*writes)  # a failed write surfaces here
        writing = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(poller), 60.0)
    finally:
        writing = False
        poller.cancel()
        for task in writes:
            task.cancel()
    lat = sorted((arrived[k] - t) * 1000 for k, t in started.items() if k in arrived)
    commit_lat = sorted((arrived[k] - t) * 1000 for k, t in committed.items() if k in arrived)
    write_wall = t_written - t0
    return Live(lat, commit_lat, i, i / write_wall if write_wall > 0 else float("nan"),
                sorted(write_s), write_wall, time.monotonic() - t0)  # fmt: skip


async def run_online(
    config: AgentConfig,
    store: TimedStore,
    site: Site,
    pool: asyncpg.Pool,
    meter: CpuMeter,
    rate: float,
    seconds: float,
    res: Results,
) -> list[float]:
    camera = site.cameras["online"]
    relay = Relay(config, store)
    task = asyncio.create_task(relay.run(), name="relay-online")
    check = _task_check(task)
    try:
        # One read through first: the relay's connection is up and the outbox is empty.
        (warm,) = make_reads(site.agent, camera, 1)
        await store.add_plate_reads([warm])
        await wait_in_pg(pool, camera, warm.read_id, 1, 30.0, check)
        # Central may store the read before the relay has marked it sent (the ack's way back).
        for _ in range(100):
            if not await store.pending(limit=1):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the outbox is not empty before the online phase")
        total = round(rate * seconds)
        cpu0 = meter.snapshot()
        live = await write_live(store, site, camera, pool, rate, check, lambda i: i >= total)
        cpu1 = meter.snapshot()
    finally:
        await _stop(task)
        _count_messages(res, relay)
    print(f"online: {live.line()}", flush=True)
    print("  " + _cpu_line(cpu0, cpu1, live.wall_s, max(total, 1)), flush=True)
    res.cpu["online"] = _cpu_delta(cpu0, cpu1)
    lat = live.lat_ms
    res.figures |= {
        "online_written": total,
        "online_achieved_rate": round(live.achieved, 1),
        "online_lost": live.lost,
        "online_sqlite_write_p50_ms": round(percentile(live.write_s, 50) * 1000, 2),
        "online_sqlite_write_p99_ms": round(percentile(live.write_s, 99) * 1000, 2),
        "latency_max_ms": round(lat[-1], 1) if lat else None,
    }
    return lat


async def run_drain_live(
    config: AgentConfig,
    store: TimedStore,
    site: Site,
    pool: asyncpg.Pool,
    meter: CpuMeter,
    backlog: int,
    rate: float,
    res: Results,
    admin_amqp_url: str,
) -> float:
    """A big backlog (``--backlog`` reads, written in batches while the relay is stopped, as
    after a long outage) drained by the relay while live reads keep coming at ``rate`` per
    second on another camera, one per transaction, until the backlog is all in PostgreSQL.
    Returns the backlog's drain rate (reads/s); the live reads' latency while it drained goes
    to ``drain_live_p50_ms`` / ``drain_live_p99_ms``."""
    camera = site.cameras["backlog"]
    last: UUID | None = None
    t = time.perf_counter()
    # In slices: a million PlateRead objects at once would hold gigabytes.
    for start in range(0, backlog, 50_000):
        reads = make_reads(site.agent, camera, min(50_000, backlog - start), start)
        for i in range(0, len(reads), INSERT_BATCH):
            await store.add_plate_reads(reads[i : i + INSERT_BATCH])
        last = reads[-1].read_id
    assert last is not None
    print(
        f"backlog: {backlog} reads written to SQLite in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    relay = Relay(config, store)
    store.reset()
    cpu0 = meter.snapshot()
    t0 = time.monotonic()
    task = asyncio.create_task(relay.run(), name="relay-backlog")
    check = _task_check(task)
    drained: list[float] = []

    async def wait_drained() -> None:
        drained.append(await wait_in_pg(pool, camera, last, backlog, max(300.0, backlog / 50),
                                        check))  # fmt: skip

    waiter = asyncio.create_task(wait_drained())
    # Where the backlog waits: when the relay had it acked by the broker, and how many
    # messages were ready in the plates queue (not yet delivered to the ingest) at the most.
    published: list[float] = []
    ready: list[int] = [0]

    async def watch() -> None:
        conn = await aio_pika.connect(admin_amqp_url)
        async with conn:
            channel = await conn.channel()
            while True:
                if not published and relay.sent >= backlog:
                    published.append(time.monotonic())
                queue = await channel.declare_queue(PLATES_QUEUE.name, passive=True)
                count = queue.declaration_result.message_count or 0
                ready[0] = max(ready[0], count)
                await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    # Live reads from the relay's first publish on: one committed before the drain began would
    # be part of its backlog.
    while relay.messages_sent == 0:
        check()
        await asyncio.sleep(0.005)

    def stop(_: int) -> bool:
        if waiter.done():
            waiter.result()  # surfaces a timeout or the relay's crash
            return True
        return False

    try:
        live = await write_live(store, site, site.cameras["drainlive"], pool, rate, check, stop)
        cpu1 = meter.snapshot()
        # Central may store the last reads before the relay has marked them (the ack's way back).
        for _ in range(200):
            if not await store.pending(limit=1):
                break
            await asyncio.sleep(0.05)
    finally:
        waiter.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await _stop(task)
        _count_messages(res, relay)
    wall = drained[0] - t0
    t_published = published[0] - t0 if published else float("nan")
    drain_rate = backlog / wall
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT id) AS d FROM lpr_events WHERE camera_id = $1",
            camera,
        )
    left = await store.pending(limit=10)
    lost = backlog - row["d"] + live.lost + len(left)
    duplicated = row["n"] - row["d"]
    print(
        f"backlog drain while live reads flow: {backlog} reads all in PostgreSQL after "
        f"{wall:.2f} s: {drain_rate:.0f} reads/s = {drain_rate / rate:.1f} x the live rate; "
        f"{row['d']} distinct, outbox pending {len(left)}",
        flush=True,
    )
    print(
        f"  the relay had the backlog acked by the broker after about {t_published:.2f} s; "
        f"the plates queue held up to {ready[0]} messages ready for the ingest; the relay "
        f"waited {store.pending_s:.1f} s on pending_of() and {store.mark_s:.1f} s on "
        f"{store.rounds} mark_sent_many() calls",
        flush=True,
    )
    print(f"  live during the drain: {live.line()}", flush=True)
    print("  " + _cpu_line(cpu0, cpu1, live.wall_s, backlog + live.written), flush=True)
    res.cpu["drain_live"] = _cpu_delta(cpu0, cpu1)
    res.figures |= {
        "drain_backlog_reads": backlog,
        "drain_backlog_reads_per_s": round(drain_rate),
        "drain_backlog_published_s": round(t_published, 2),
        "drain_broker_ready_max": ready[0],
        "drain_backlog_pending_s": round(store.pending_s, 2),
        "drain_backlog_mark_sent_s": round(store.mark_s, 2),
        "drain_live_written": live.written,
        "drain_live_lost": live.lost,
        "drain_live_achieved_rate": round(live.achieved, 1),
        # Commit at the agent -> row in PostgreSQL.
        "drain_live_p50_ms": round(percentile(live.commit_lat_ms, 50), 1),
        "drain_live_p95_ms": round(percentile(live.commit_lat_ms, 95), 1),
        "drain_live_p99_ms": round(percentile(live.commit_lat_ms, 99), 1),
        "drain_live_max_ms": round(live.commit_lat_ms[-1], 1) if live.commit_lat_ms else None,
        # Write start -> row in PostgreSQL, as the online phase counts it.
        "drain_live_from_write_p99_ms": round(percentile(live.lat_ms, 99), 1),
        "drain_live_sqlite_write_p99_ms": round(percentile(live.write_s, 99) * 1000, 2),
    }
    res.figures["lost"] = res.figures.get("lost", 0) + lost
    res.figures["duplicated"] = res.figures.get("duplicated", 0) + duplicated
    return drain_rate


def _count_messages(res: Results, relay: Relay) -> None:
    """Add up the AMQP messages the relays had acked, for the broker's count to match."""
    res.figures["relay_messages"] = res.figures.get("relay_messages", 0) + relay.messages_sent


async def run_blobs(
    config: AgentConfig,
    store: Store,
    site: Site,
    s3: Minio,
    pool: asyncpg.Pool,
    meter: CpuMeter,
    count: int,
    size: int,
    res: Results,
    pause_ingest: Callable[[bool], None],
) -> float:
    """Uploads: ``count`` objects of ``size`` bytes with a bare ``minio`` put loop (one
    single-part PUT after another), then the same files as segments through the relay (upload
    grant from central's API, presigned PUT, confirmed publish, mark sent; two at a time, as
    the relay runs).

    Central's ingest is paused (SIGSTOP) while the relay uploads: its claim-check reads every
    object back to hash it, which in the field happens on central's machines, not on the
    agent's; here it would share the same 2 cores. Once resumed, every segment must be
    verified and stored (``blob_lost`` otherwise). Returns agent MB/s over bare MB/s."""
    folder = config.data_dir / "blobs"
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    paths = [folder / f"{i}.mp4" for i in range(count)]
    for path in paths:
        path.write_bytes(data)
    warm = folder / "warm.mp4"
    warm.write_bytes(data[: 64 * 1024])
    prefix = f"{site.city}/bench-{uuid.uuid4()}"

    def put_all() -> None:
        for i, path in enumerate(paths):
            # part_size >= size: one plain PUT per object, as the relay makes.
            s3.fput_object("recordings", f"{prefix}/{i}.mp4", str(path),
                           part_size=max(size, 5 * 1024 * 1024))  # fmt: skip

    cpu0 = meter.snapshot()
    t0 = time.monotonic()
    await asyncio.to_thread(put_all)
    bare_s = time.monotonic() - t0
    cpu1 = meter.snapshot()
    mb = count * size / 1e6
    print(
        f"blobs, bare minio put loop: {count} x {size / 1e6:.1f} MB in {bare_s:.2f} s: "
        f"{mb / bare_s:.1f} MB/s",
        flush=True,
    )
    print("  " + _cpu_line(cpu0, cpu1, bare_s, count), flush=True)

    camera = site.cameras["blob"]
    run_id = uuid.uuid4()
    base_ms = time.time_ns() // 1_000_000 - 3_600_000
    await store.add_run(run_id, "blob", camera, base_ms)

    def segment(i: int, path: Path, n: int, digest: str) -> Segment:
        return Segment(uuid.uuid4(), camera, run_id, i, path, base_ms + i * 2000, 2000, n,
                       digest, "h264")  # fmt: skip

    relay = Relay(config, store)
    try:
        # Warm-up (connections, first grant) with a small object, not timed.
        await store.add_segment(segment(0, warm, len(warm.read_bytes()),
                                        hashlib.sha256(warm.read_bytes()).hexdigest()))  # fmt: skip
        if await relay.run_once() != 1:
            raise RuntimeError("the warm-up segment was not sent")
        for i, path in enumerate(paths, start=1):
            await store.add_segment(segment(i, path, size, sha))
        sent = 0
        pause_ingest(True)
        try:
            cpu0 = meter.snapshot()
            t0 = time.monotonic()
            while sent < count:
                sent += await relay.run_once()
            agent_s = time.monotonic() - t0
            cpu1 = meter.snapshot()
        finally:
            pause_ingest(False)
    finally:
        await relay.close()
    stored = 0
    async with pool.acquire() as conn:
        for _ in range(600):
            stored = await conn.fetchval(
                "SELECT count(*) FROM segments WHERE camera_id = $1", camera
            )
            if stored >= count + 1:
                break
            await asyncio.sleep(0.1)
    ratio = bare_s / agent_s
    print(
        f"blobs, agent relay (grant, PUT, confirmed publish, mark sent; 2 at a time): "
        f"{count} segments in {agent_s:.2f} s: {mb / agent_s:.1f} MB/s = {ratio:.2f} x bare",
        flush=True,
    )
    print("  " + _cpu_line(cpu0, cpu1, agent_s, count), flush=True)
    print(f"  central verified and stored {stored} of {count + 1} segments", flush=True)
    res.cpu["blobs"] = _cpu_delta(cpu0, cpu1)
    res.figures |= {
        "blob_objects": count,
        "blob_object_bytes": size,
        "blob_bare_mb_per_s": round(mb / bare_s, 1),
        "blob_agent_mb_per_s": round(mb / agent_s, 1),
        "blob_ratio": round(ratio, 3),
        "blob_lost": count + 1 - stored,
    }
    return ratio


async def broker_counts(mgmt: httpx.AsyncClient, expected: int) -> dict[str, int | None]:
    """Messages routed to and redelivered from the plates queue, from the broker's statistics.

    The management plugin samples every 5 s, later on a busy machine: wait until the published
    count settles (up to about a minute).
    """
    last: int | None = None
    stats: dict[str, Any] = {}
    for _ in range(60):
        stats = (await queue_stats(mgmt)).get("message_stats", {})
        now = stats.get("publish")
        if now is not None and now >= expected and now == last:
            break
        last = now
        await asyncio.sleep(1.0 if now is None or now < expected else 5.5)
    return {
        "broker_published": stats.get("publish"),
        "broker_redelivered": stats.get("redeliver"),
    }


async def bench(
    args: argparse.Namespace,
    stack: Stack,
    env: dict[str, str],
    state: Path,
    meter: CpuMeter,
    ingest_alive: Callable[[], bool],
    api_url: str,
    pause_ingest: Callable[[bool], None],
) -> Results:
    res = Results(args.reads, args.quick)
    s3 = Minio(env["S3_ENDPOINT"], env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"], secure=False)
    mq = stack.service("rabbitmq")
    assert mq is not None
    mgmt_plain = urlsplit(mq.info["management_url"])
    user, password = quote(mq.info["user"], safe=""), quote(mq.info["password"], safe="")
    mgmt_url = f"http://{user}:{password}@{mgmt_plain.netloc}"
    pool = await create_pool(env["DATABASE_URL"], max_size=4)
    broker = BrokerAdmin(mgmt_url)
    mgmt = httpx.AsyncClient(
        base_url=f"http://{mgmt_plain.netloc}",
        auth=(mq.info["user"], mq.info["password"]),
        timeout=10,
    )
    store = TimedStore(state / "agent" / "agent.sqlite3")
    try:
        await wait_consumers(mgmt, ingest_alive)
        site = await make_site(pool, broker, env["AMQP_URL"])
        config = AgentConfig(
            agent_id=site.agent,
            city_id=site.city,
            data_dir=state / "agent",
            central=CentralConfig(
                # The relay calls the API only to upload blobs (upload grants).
                api_url=api_url,
                amqp_url=SecretStr(site.amqp_url),
                token=SecretStr(site.token),
            ),
        )
        await store.open()
        n = args.reads

        # Warm-up through the same path, not timed: connections, JIT, caches, the first pages.
        warm = make_reads(site.agent, site.cameras["warmup"], WARMUP_READS)
        await publish_bare(site, warm, batched=False)
        await wait_in_pg(pool, site.cameras["warmup"], warm[-1].read_id, WARMUP_READS, 60.0)
        print(f"warm-up: {WARMUP_READS} messages through broker and consumer", flush=True)

        window = await run_baseline("window", site, pool, meter, n, res)
        batched = await run_baseline("batched", site, pool, meter, n, res)
        copy = await run_copy(site, pool, meter, n, res)
        # The relay one read per message (the shape before batches), then as it runs.
        reads, _ = await fill_backlog(store, site, n, "single")
        single = await run_drain(config, store, site, pool, meter, reads, res, reads_per_message=1)
        reads, sqlite_rate = await fill_backlog(store, site, n)
        res.figures["sqlite_insert_per_s"] = round(sqlite_rate)
        e2e = await run_drain(config, store, site, pool, meter, reads, res)
        lat = await run_online(config, store, site, pool, meter, args.rate, args.seconds, res)
        big_drain = await run_drain_live(
            config, store, site, pool, meter, args.backlog, args.rate, res, env["AMQP_URL"]
        )
        blob_ratio = await run_blobs(
            config, store, site, s3, pool, meter, args.blobs, args.blob_mb * 1_000_000, res,
            pause_ingest,
        )  # fmt: skip

        expected = WARMUP_READS + 2 * n + res.figures["relay_messages"]
        counts = await broker_counts(mgmt, expected)
        extra = (
            None if counts["broker_published"] is None else counts["broker_published"] - expected
        )
        print(
            f"broker: {counts['broker_published']} messages routed to {PLATES_QUEUE.name} for "
            f"{expected} sent ({extra} extra), {counts['broker_redelivered']} redelivered",
            flush=True,
        )
        res.figures |= {
            "e2e_reads_per_s": round(e2e),
            "single_ratio_vs_baseline": round(single / window, 3),
            "blob_ratio": round(blob_ratio, 3),
            "baseline_msgs_per_s": round(window),
            "ratio_vs_baseline": round(e2e / window, 3),
            "copy_reads_per_s": round(copy),
            "ratio_vs_copy": round(e2e / copy, 3),
            "drain_vs_live_rate": round(e2e / args.rate, 1),
            # The drain: the big backlog, with live reads flowing, over the live rate.
            "drain_ratio": round(big_drain / args.rate, 1),
            "latency_p50_ms": round(percentile(lat, 50), 1),
            "latency_p95_ms": round(percentile(lat, 95), 1),
            "latency_p99_ms": round(percentile(lat, 99), 1),
            "baseline_batched_msgs_per_s": round(batched),
            "ratio_vs_batched_baseline": round(e2e / batched, 3),
            "broker_extra_publishes": extra,
            "broker_redelivered": counts["broker_redelivered"],
        }
        res.figures["lost"] += res.figures["online_lost"] + res.figures["blob_lost"]
    finally:
        await store.close()
        await mgmt.aclose()
        await broker.aclose()
        await pool.close()
    return res


def _wait_http(url: str, alive: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Until ``url`` answers (any status), or raise if the process died or time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the process serving {url} exited")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=2)
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout_s:.0f} s")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="20k reads, 15 s online, 200k backlog")
    ap.add_argument("--reads", type=int, help="reads per phase (default 100000, quick 20000)")
    ap.add_argument(
        "--backlog", type=int, help="backlog drained under live reads (default 1M, quick 200k)"
    )
    ap.add_argument("--rate", type=float, default=100.0, help="online write rate, reads/s")
    ap.add_argument("--seconds", type=float, help="online phase length (default 60, quick 15)")
    ap.add_argument("--blobs", type=int, help="objects uploaded (default 32, quick 16)")
    ap.add_argument("--blob-mb", type=int, help="MB per object (default 16, quick 8)")
    args = ap.parse_args(argv)
    args.reads = args.reads or (20_000 if args.quick else 100_000)
    args.backlog = args.backlog or (200_000 if args.quick else 1_000_000)
    args.seconds = args.seconds or (15.0 if args.quick else 60.0)
    args.blobs = args.blobs or (16 if args.quick else 32)
    args.blob_mb = args.blob_mb or (8 if args.quick else 16)
    if args.reads < 1 or args.backlog < 1 or args.rate <= 0 or args.seconds <= 0 or args.blobs < 1:
        ap.error("need --reads >= 1, --backlog >= 1, --rate > 0, --seconds > 0, --blobs >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    state = Path(tempfile.mkdtemp(prefix="gtv-bench-sync-"))
    os.chmod(state, 0o755)  # noqa: S103 - postgres must traverse it to its data dir; nothing secret
    # Production durability: PostgreSQL fsyncs its commits as it would in the field.
    stack = Stack(state, StackOptions(pg_fsync=True, redis_persist=False))
    load_start = os.getloadavg()[0]
    t0 = time.monotonic()
    try:
        stack.up(SERVICES, ports=Ports.free())
        env = stack.env()
        load = os.getloadavg()
        print(
            f"services up in {time.monotonic() - t0:.1f} s (state {state}); "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores",
            flush=True,
        )
        migrate.upgrade(env["DATABASE_URL"])
        # Central's ingest as its own process, as deployed: its CPU is its own, not this
        # process's (the two still share the machine's cores).
        ingest_log = state / "logs" / "ingest.log"
        # The ingest never signs anything, but Settings demands a key of 32+ characters.
        ingest_env = dict(env) | {"GTVISION_SECRET_KEY": secrets.token_urlsafe(32)}
        ingest = start_process(
            [Path(sys.executable).parent / "gtvision-central", "ingest"],
            ingest_log,
            env=ingest_env,
        )
        # Recorded in the stack so that down() stops it (first) by its PID.
        stack.record(RunningService("central-ingest", [ProcRef.of(ingest.pid)], "", ingest_log))
        # Central's API, for the relay's upload grants.
        api_log = state / "logs" / "api.log"
        api_port = free_port()  # the stack's ports are bound by now: not chosen again
        api = start_process(
            [Path(sys.executable).parent / "gtvision-central", "api", "--port", str(api_port)],
            api_log,
            env=ingest_env,
        )
        stack.record(RunningService("central-api", [ProcRef.of(api.pid)], "", api_log))
        api_url = f"http://127.0.0.1:{api_port}"
        _wait_http(f"{api_url}/api/health", lambda: api.poll() is None)
        svcs = stack.services()
        meter = CpuMeter(
            {
                "ingest": [ingest.pid],
                "api": [api.pid],
                "rabbitmq": svcs["rabbitmq"].pids,
                "postgres": svcs["postgres"].pids,
                "s3": svcs["s3"].pids,
            }
        )
        try:

            def pause_ingest(pause: bool) -> None:
                os.kill(ingest.pid, signal.SIGSTOP if pause else signal.SIGCONT)

            res = asyncio.run(
                bench(
                    args, stack, env, state, meter, lambda: ingest.poll() is None, api_url,
                    pause_ingest,
                )
            )  # fmt: skip
        except Exception:
            print("ingest log tail:\n" + tail(ingest_log), file=sys.stderr)
            print("api log tail:\n" + tail(api_log), file=sys.stderr)
            raise
    finally:
        stack.down()
        shutil.rmtree(state, ignore_errors=True)

    f = res.figures
    print(
        f"end to end {f['e2e_reads_per_s']} reads/s (target >= 3000) = "
        f"{f['ratio_vs_baseline']:.2f} x bare publisher ({f['baseline_msgs_per_s']}/s; one read "
        f"per message: {f['single_e2e_reads_per_s']} reads/s = "
        f"{f['single_ratio_vs_baseline']:.2f} x) = {f['ratio_vs_copy']:.2f} x bare COPY "
        f"({f['copy_reads_per_s']}/s); lost {f['lost']}, duplicated {f['duplicated']}; "
        f"{f['drain_backlog_reads']}-read backlog drained at {f['drain_backlog_reads_per_s']}/s "
        f"= {f['drain_ratio']} x live rate (target >= 10), live p50/p99 meanwhile "
        f"{f['drain_live_p50_ms']}/{f['drain_live_p99_ms']} ms; online p99 "
        f"{f['latency_p99_ms']} ms (target < 250); blobs {f['blob_agent_mb_per_s']} MB/s = "
        f"{f['blob_ratio']:.2f} x bare minio (target >= 0.8)",
        flush=True,
    )
    result: dict[str, Any] = (
        {
            "bench": "sync",
            "reads": res.reads,
            # The issue's names for the targets' figures.
            "reads_per_s": f["e2e_reads_per_s"],
            "p99_ms": f["latency_p99_ms"],
            "drain_ratio": f["drain_ratio"],
            "blob_ratio": f["blob_ratio"],
            "lost": f["lost"],
            "duplicates": f["duplicated"],
            "copy_reads_per_s": f["copy_reads_per_s"],
            "ratio_vs_copy": f["ratio_vs_copy"],
            "drain_live_p50_ms": f["drain_live_p50_ms"],
            "drain_live_p99_ms": f["drain_live_p99_ms"],
            "sqlite_insert_per_s": f["sqlite_insert_per_s"],
            "e2e_reads_per_s": f["e2e_reads_per_s"],
            "baseline_msgs_per_s": f["baseline_msgs_per_s"],
            "ratio_vs_baseline": f["ratio_vs_baseline"],
            "duplicated": f["duplicated"],
            "drain_vs_live_rate": f["drain_vs_live_rate"],
            "online_rate": args.rate,
            "latency_p50_ms": f["latency_p50_ms"],
            "latency_p95_ms": f["latency_p95_ms"],
            "latency_p99_ms": f["latency_p99_ms"],
            "quick": args.quick,
        }
        | {k: v for k, v in f.items() if k not in ("lost", "duplicated")}
        | {"cpu_s": res.cpu}
        # The machine is shared: how busy it was before we started (other users' load).
        | {"loadavg_1m_start": round(load_start, 2)}
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
