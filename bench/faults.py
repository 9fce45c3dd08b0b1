"""Sync fault tier, long form: more events, more kills, a long partition compressed in time.

Starts PostgreSQL, RabbitMQ, S3 and Redis (devstack, free ports, a temporary state dir),
central's API and two ingest processes, and one agent (``gtvision-agent run``) whose broker
link goes through a TcpProxy. Plate reads and segments are written into the agent's store as
its LPR and recorder would. Then:

1. rounds of faults while events keep coming, each round one of: kill -9 of the agent,
   kill -9 of an ingest, broker restart, PostgreSQL restart, S3 restart, a short link cut, a
   half-open (stalled) link;
2. a long partition: the agent's link is cut while it keeps committing reads at many times the
   live rate (hours of plate reads in a few minutes), then restored, and the backlog's drain
   is timed;
3. a poison message, and the checker (devstack/sync_checker.py) over everything.

Prints the checker's counts and, last, one JSON line. Figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import httpx

from central import migrate, storage
from central.db import create_pool
from central.settings import Settings
from devstack.procs import free_port
from devstack.stack import Ports, Stack, StackOptions
from devstack.sync_checker import check_sync, read_agent
from devstack.sync_harness import (
    AgentSite,
    CliProcess,
    Injector,
    central_env,
    enrol_site,
    ingest_process,
    purge_central_queues,
    wait_for,
)
from devstack.tcpproxy import TcpProxy
from shared.topology import EVENTS_EXCHANGE, PLATES_QUEUE, agent_user, routing_key

SERVICES = ["postgres", "rabbitmq", "s3", "redis"]
FAULTS = ("kill_agent", "kill_ingest", "broker_restart", "postgres_restart", "s3_restart",
          "link_cut", "link_stall")  # fmt: skip
DRAIN_TIMEOUT_S = 900.0


def _settings(env: dict[str, str]) -> Settings:
    mq_admin = urlsplit(env["AMQP_URL"])
    mgmt = urlsplit(env["AMQP_MANAGEMENT_URL"])
    user, password = (
        quote(mq_admin.username or "", safe=""),
        quote(mq_admin.password or "", safe=""),
    )
    return Settings(
        database_url=env["DATABASE_URL"],
        amqp_url=env["AMQP_URL"],
        rabbitmq_management_url=f"http://{user}:{password}@{mgmt.netloc}",
        s3_endpoint=env["S3_ENDPOINT"],
        s3_access_key=env["S3_ACCESS_KEY"],
        s3_secret_key=env["S3_SECRET_KEY"],
        s3_secure=False,
        redis_url=env["REDIS_URL"],
        gtvision_secret_key=secrets.token_urlsafe(32),
    )


class Run:
    """Everything one bench run started, and the faults it can do."""

    def __init__(self, args: argparse.Namespace, stack: Stack, ports: Ports, state: Path) -> None:
        self.args = args
        self.stack = stack
        self.ports = ports
        self.state = state
        self.settings = _settings(stack.env())
        self.env = central_env(self.settings)
        self.procs: list[CliProcess] = []
        self.faults: Counter[str] = Counter()
        self.supervisor_restarts: Counter[str] = Counter()
        self.rng = random.Random(args.seed)

    def process(self, proc: CliProcess) -> CliProcess:
        self.procs.append(proc)
        return proc

    async def supervise(self) -> None:
        """Restart a process that exited on its own, as production does (compose
        ``restart: unless-stopped``, systemd ``Restart=always``): e.g. an ingest started while
        the broker is down exits. Each restart is counted and reported."""
        while True:
            for proc in self.procs:
                if proc.wanted and not proc.alive:
                    print(f"supervisor: {proc.name} exited on its own; restarting", flush=True)
                    self.supervisor_restarts[proc.name] += 1
                    proc.proc = None
                    proc.start()
            await asyncio.sleep(2.0)

    async def restart_service(self, name: str, down_s: float) -> None:
        await asyncio.to_thread(self.stack.stop_service, name)
        try:
            await asyncio.sleep(down_s)
        finally:
            await asyncio.to_thread(self.stack.up, [name], self.ports)


async def start_api(run: Run) -> tuple[CliProcess, str]:
    port = free_port()
    api = run.process(
        CliProcess(
            "api",
            [str(Path(sys.executable).parent / "gtvision-central"), "api", "--port", str(port)],
            run.state / "logs" / "api.log",
            run.env,
        )
    ).start()
    url = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(url + "/api/health", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for("central's API", up, 60, alive=(api,))
    return api, url


async def publish_poison(site: AgentSite) -> str:
    """An invalid plate read, published by the agent's own broker user."""
    message_id = "bench-faults-poison"
    conn = await aio_pika.connect(site.amqp_url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=True)
        await exchange.publish(
            aio_pika.Message(b'{"type": "plate_read", "plate": null}', message_id=message_id,
                             user_id=agent_user(site.agent_id),
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key("plate_read", site.city_id, site.agent_id), timeout=10,
        )  # fmt: skip
    return message_id


async def fault_round(
    run: Run, fault: str, agent: CliProcess, ingests: list[CliProcess], proxy: TcpProxy
) -> None:
    """One fault, applied while the agent and the ingests are busy, then healed."""
    down_s = run.args.down_s
    if fault == "kill_agent":
        agent.kill9()
        await asyncio.sleep(run.rng.uniform(0, 1))
        agent.start()
    elif fault == "kill_ingest":
        victim = run.rng.choice(ingests)
        victim.kill9()
        await asyncio.sleep(run.rng.uniform(0, 1))
        victim.start()
    elif fault == "broker_restart":
        await run.restart_service("rabbitmq", down_s)
    elif fault == "postgres_restart":
        await run.restart_service("postgres", down_s)
    elif fault == "s3_restart":
        await run.restart_service("s3", down_s)
    elif fault == "link_cut":
        await proxy.cut()
        await asyncio.sleep(down_s)
        await proxy.restore()
    elif fault == "link_stall":
        await proxy.stall()
        await asyncio.sleep(max(down_s, 15.0))  # past the AMQP heartbeat timeout
        await proxy.restore()
    run.faults[fault] += 1


async def bench(run: Run) -> dict[str, Any]:
    args = run.args
    amqp_port = urlsplit(run.env["AMQP_URL"]).port
    assert amqp_port is not None
    await purge_central_queues(run.env["AMQP_URL"])
    _api, api_url = await start_api(run)
    site = await enrol_site(run.env["DATABASE_URL"], api_url, run.state / "site")
    inject = Injector(site)
    pool = await create_pool(run.env["DATABASE_URL"], max_size=2)
    s3 = storage.make_client(run.settings)
    result: dict[str, Any] = {"bench": "faults", "quick": args.quick, "seed": args.seed}
    try:
        async with TcpProxy("127.0.0.1", amqp_port) as proxy:
            site.route_amqp_via(proxy.port)
            logs = run.state / "logs"
            ingests = [
                run.process(ingest_process(run.env, logs / f"ingest{i}.log", f"ingest{i}")).start()
                for i in (1, 2)
            ]
            agent = run.process(site.process(logs / "agent.log")).start()
            supervisor = asyncio.create_task(run.supervise())

            # 1. Rounds of faults while reads and segments keep coming.
            per_round = args.reads // 2 // args.rounds
            seg_per_round = max(1, args.segments // 2 // args.rounds)
            t0 = time.monotonic()
            for i in range(args.rounds):
                fault = FAULTS[i % len(FAULTS)] if i < len(FAULTS) else run.rng.choice(FAULTS)
                await inject.add_reads(per_round)
                await inject.add_segments(seg_per_round)
                await asyncio.sleep(run.rng.uniform(0.2, 1.5))  # somewhere mid-drain
                print(f"round {i + 1}/{args.rounds}: {fault}", flush=True)
                await fault_round(run, fault, agent, ingests, proxy)
            result["fault_rounds_s"] = round(time.monotonic() - t0, 1)

            # 2. The long partition: hours of reads at the live rate, compressed in time.
            await proxy.cut()
            left = args.reads - inject.reads
            chunk = max(1, left // 20)
            t_cut = time.monotonic()
            while inject.reads < args.reads:
                await inject.add_reads(min(chunk, args.reads - inject.reads))
                await asyncio.sleep(args.partition_s / 20)
            await inject.add_segments(args.segments - inject.segments)
            await asyncio.sleep(max(0.0, args.partition_s - (time.monotonic() - t_cut)))
            backlog = await asyncio.to_thread(read_agent, site.store_path)
            partition_s = time.monotonic() - t_cut
            pending = sum(backlog.unsent.values())
            print(
                f"partition: link cut for {partition_s:.0f} s with {pending} outbox rows "
                f"waiting ({left} reads = {left / args.live_rate / 3600:.1f} h at "
                f"{args.live_rate:g} reads/s)",
                flush=True,
            )
            await proxy.restore()
            t_restore = time.monotonic()
            poison = await publish_poison(site)

            # 3. Drain, then the checker.
            async def drained() -> bool:
                agent_now = await asyncio.to_thread(read_agent, site.store_path)
                if agent_now.unsent:
                    return False
                async with pool.acquire() as conn:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM lpr_events WHERE city_id = $1", site.city_id
                    )
                    m = await conn.fetchval(
                        "SELECT count(*) FROM segments WHERE agent_id = $1", site.agent_id
                    )
                return bool(n >= len(agent_now.reads) and m >= len(agent_now.segments))

            await wait_for("the backlog to drain", drained, DRAIN_TIMEOUT_S, interval_s=0.5)
            supervisor.cancel()
            drain_s = time.monotonic() - t_restore
            print(f"drain after the partition: {pending} rows in {drain_s:.1f} s", flush=True)
            await asyncio.sleep(2)
            report = await check_sync(
                site.store_path, pool, s3, run.env["AMQP_URL"], agent_id=site.agent_id,
                city_id=site.city_id, expected_dlq={PLATES_QUEUE.dead_letter_queue: {poison}},
            )  # fmt: skip
            print(report.line(), flush=True)
            for problem in report.problems[:20]:
                print(f"  problem: {problem}", flush=True)
            result |= {
                "ok": report.ok,
                **report.counts(),
                "faults": dict(run.faults),
                "agent_kills": agent.kills,
                "ingest_kills": sum(p.kills for p in ingests),
                "supervisor_restarts": dict(run.supervisor_restarts),
                "partition_s": round(partition_s, 1),
                "partition_reads": left,
                "partition_equiv_hours": round(left / args.live_rate / 3600, 2),
                "backlog_rows_at_restore": pending,
                "drain_s": round(drain_s, 1),
                "drain_rows_per_s": round(pending / drain_s) if drain_s > 0 else None,
            }
    finally:
        for proc in reversed(run.procs):
            proc.stop()
        await pool.close()
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="30k reads, 12 segments, 7 rounds, 20 s partition")  # fmt: skip
    ap.add_argument("--reads", type=int, help="plate reads in all (default 300000)")
    ap.add_argument("--segments", type=int, help="segments in all (default 60)")
    ap.add_argument("--rounds", type=int, help="fault rounds (default 21: each fault 3 times)")
    ap.add_argument("--partition-s", type=float, help="length of the long cut (default 120)")
    ap.add_argument("--down-s", type=float, default=4.0, help="service outage per fault round")
    ap.add_argument("--live-rate", type=float, default=10.0,
                    help="one city's reads/s, to express the partition in hours")  # fmt: skip
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    args.reads = args.reads or (30_000 if args.quick else 300_000)
    args.segments = args.segments or (12 if args.quick else 60)
    args.rounds = args.rounds or (7 if args.quick else 21)
    args.partition_s = args.partition_s or (20.0 if args.quick else 120.0)
    if args.reads < 2 * args.rounds or args.segments < 2 or args.rounds < 1:
        ap.error("need --reads >= 2 x --rounds, --segments >= 2, --rounds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    state = Path(tempfile.mkdtemp(prefix="gtv-bench-faults-"))
    os.chmod(state, 0o755)  # noqa: S103 - postgres must traverse it to its data dir; nothing secret
    stack = Stack(state, StackOptions(pg_fsync=True, redis_persist=False))
    ports = Ports.free()
    t0 = time.monotonic()
    result: dict[str, Any] = {}
    try:
        stack.up(SERVICES, ports=ports)
        migrate.upgrade(stack.env()["DATABASE_URL"])
        load = os.getloadavg()
        print(f"services up in {time.monotonic() - t0:.1f} s; load average {load[0]:.2f} on "
              f"{os.cpu_count()} cores", flush=True)  # fmt: skip
        run = Run(args, stack, ports, state)
        try:
            result = asyncio.run(bench(run))
        except Exception:
            for proc in run.procs:
                print(f"--- {proc.name} log tail ---\n{proc.tail(30)}", file=sys.stderr)
            raise
    finally:
        stack.down()
        if result.get("ok"):
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"logs kept in {state / 'logs'}", file=sys.stderr)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    result["reads"] = args.reads
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
