"""Plate search latency (exact, prefix, fuzzy) over millions of lpr_events rows."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import string
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from central import agents, cameras, cities, migrate, plates
from devstack.stack import Ports, Stack

CAMERAS_PER_CITY = 20
CITIES = 10
BATCH = 1_000_000


def random_plate(rng: random.Random) -> str:
    letters = "".join(rng.choices(string.ascii_uppercase, k=3))
    if rng.random() < 0.6:  # Mercosul
        fifth = rng.choice(string.ascii_uppercase)
        return f"{letters}{rng.randint(0, 9)}{fifth}{rng.randint(0, 99):02d}"
    return f"{letters}{rng.randint(0, 9999):04d}"


async def populate(url: str, rows: int, seed: int) -> tuple[list[str], list[uuid.UUID]]:
    """Fill lpr_events with ``rows`` reads over 30 days, 10 cities x 20 cameras.

    Rows are generated inside PostgreSQL (``generate_series``, ``setseed``) with the search
    indexes dropped and rebuilt afterwards from their own definitions, as a bulk load would be:
    minutes for 10 M rows instead of the better part of an hour through the client.
    Returns some plates that exist (search targets) and the city ids.
    """
    rng = random.Random(seed)
    conn = await asyncpg.connect(url)
    try:
        city_ids, cams, cam_cities = [], [], []
        for c in range(CITIES):
            city = await cities.create_city(conn, f"Cidade {c}", "SP", 30)
            agent, _ = await agents.create_agent(conn, city, f"agente-{c}")
            city_ids.append(city)
            for k in range(CAMERAS_PER_CITY):
                cams.append(
                    await cameras.create_camera(conn, city, f"cam-{c}-{k}", "rtsp://x/y", agent)
                )
                cam_cities.append(city)
        # A fleet of 200k vehicles seen repeatedly: realistic repetition for exact search.
        fleet = [random_plate(rng) for _ in range(200_000)]
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'lpr_events'"
            " AND indexname <> 'lpr_events_pkey'"
        )
        for ix in indexes:
            await conn.execute(f'DROP INDEX "{ix["indexname"]}"')
        await conn.execute("CREATE TEMP TABLE fleet (i int PRIMARY KEY, plate text NOT NULL)")
        await conn.copy_records_to_table(
            "fleet", records=list(enumerate(fleet, start=1)), columns=["i", "plate"]
        )
        await conn.execute("SELECT setseed($1)", (seed % 1000) / 1000)
        t0 = datetime(2026, 1, 1)
        done = 0
        while done < rows:
            n = min(BATCH, rows - done)
            await conn.execute(
                """
                INSERT INTO lpr_events (id, camera_id, plate, confidence, image_url,
                                        detected_at, city_id)
                SELECT gen_random_uuid(), ($1::uuid[])[s.k], f.plate,
                       round((0.6 + random() * 0.4)::numeric, 2), NULL,
                       $3::timestamp + floor(random() * 30 * 86400) * interval '1 second',
                       ($2::uuid[])[s.k]
                FROM (SELECT 1 + floor(random() * $4)::int AS k,
                             1 + floor(random() * $5)::int AS p
                      FROM generate_series(1, $6)) s
                JOIN fleet f ON f.i = s.p
                """,
                cams, cam_cities, t0, len(cams), len(fleet), n,
            )  # fmt: skip
            done += n
            print(f"  {done:,} rows", flush=True)
        started = time.monotonic()
        for ix in indexes:
            await conn.execute(ix["indexdef"])
        print(f"  {len(indexes)} indexes rebuilt in {time.monotonic() - started:.0f} s", flush=True)
        await conn.execute("ANALYZE lpr_events")
        return rng.sample(fleet, 200), city_ids
    finally:
        await conn.close()


async def measure(
    url: str, targets: list[str], city_ids: list[uuid.UUID], repeats: int
) -> dict[str, dict[str, float]]:
    """p50/p95 ms per mode, as the API runs them (scoped to 3 cities, newest 50)."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    out: dict[str, dict[str, float]] = {}
    rng = random.Random(1)
    scope = city_ids[:3]
    try:
        async with pool.acquire() as conn:
            for mode in ("exact", "prefix", "fuzzy"):
                timings = []
                hits = 0
                for i in range(repeats):
                    plate = targets[i % len(targets)]
                    q = {"exact": plate, "prefix": plate[:4], "fuzzy": plate}[mode]
                    if mode == "fuzzy" and rng.random() < 0.5:  # a look-alike typo
                        q = q[:4] + {"B": "8", "8": "B", "0": "O", "O": "0"}.get(q[4], q[4]) + q[5:]
                    started = time.perf_counter()
                    rows = await plates.search(conn, q, mode, scope, limit=50)
                    timings.append((time.perf_counter() - started) * 1000)
                    hits += bool(rows)
                timings.sort()
                out[mode] = {
                    "p50_ms": round(statistics.median(timings), 2),
                    "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2),
                    "hit_rate": round(hits / repeats, 3),
                }
                f = out[mode]
                print(f"  {mode:<6} p50 {f['p50_ms']:7.2f} ms  p95 {f['p95_ms']:7.2f} ms"
                      f"  hits {f['hit_rate']:.0%}")  # fmt: skip
    finally:
        await pool.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 M rows instead of 10 M")
    parser.add_argument("--rows", type=int, help="rows in lpr_events")
    parser.add_argument("--repeats", type=int, default=200, help="queries per mode")
    args = parser.parse_args(argv)
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)

    state = Path(tempfile.mkdtemp(prefix="gtv-bench-search-"))
    stack = Stack(state)
    try:
        stack.up(["postgres"], ports=Ports.free())
        url = stack.env()["DATABASE_URL"]
        migrate.upgrade(url)
        print(f"populating {rows:,} plate reads")
        started = time.monotonic()
        targets, city_ids = asyncio.run(populate(url, rows, seed=7))
        load_s = time.monotonic() - started
        print(f"loaded in {load_s:.0f} s; querying ({args.repeats} per mode)")
        figures = asyncio.run(measure(url, targets, city_ids, args.repeats))
    finally:
        stack.down()
    result: dict[str, Any] = {"bench": "search", "rows": rows, "load_s": round(load_s, 1),
                              "quick": args.quick}  # fmt: skip
    for mode, f in figures.items():
        result |= {f"{mode}_p50_ms": f["p50_ms"], f"{mode}_p95_ms": f["p95_ms"],
                   f"{mode}_hit_rate": f["hit_rate"]}  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
