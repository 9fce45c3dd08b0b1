"""``gtvision-central``: migrate the database, run the API, the ingest consumers or the worker,
bootstrap."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pydantic import ValidationError

from central import migrate
from central.settings import Settings

if TYPE_CHECKING:
    import asyncpg
    from minio import Minio

    Service = Callable[[Settings, asyncpg.Pool, Minio, asyncio.Event], Awaitable[None]]


def _settings() -> Settings:
    try:
        return Settings()  # filled from the environment
    except ValidationError as exc:
        names = ", ".join(str(e["loc"][0]).upper() for e in exc.errors())
        raise SystemExit(f"configuration error: check environment variable(s) {names}") from None


def _cmd_migrate(args: argparse.Namespace) -> int:
    # Only DATABASE_URL is needed here, so do not demand the rest of the settings.
    url = migrate.database_url_from_env()
    if args.downgrade:
        migrate.downgrade(url, args.downgrade)
    else:
        migrate.upgrade(url)
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from central.api import create_app

    uvicorn.run(create_app(_settings()), host=args.host, port=args.port, log_level="info")
    return 0


def _serve(service: Service) -> None:
    """Run a long-lived central process until SIGTERM/SIGINT, with its database pool and object
    storage client (buckets created if missing)."""
    from central import storage
    from central.db import create_pool
    from central.startup import until_up

    settings = _settings()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Dependencies still starting are waited for (central/startup.py), not crashed on.
        url = settings.database_url.get_secret_value()
        pool = await until_up("PostgreSQL", lambda: create_pool(url, settings.db_pool_max), stop)
        if pool is None:
            return
        try:
            s3 = storage.make_client(settings)

            async def buckets() -> bool:
                await asyncio.to_thread(storage.ensure_buckets, s3)
                return True

            if await until_up("object storage", buckets, stop):
                await service(settings, pool, s3, stop)
        finally:
            await pool.close()

    asyncio.run(main())


def _cmd_ingest(args: argparse.Namespace) -> int:
    import redis.asyncio as aioredis

    from central.ingest import run_ingest

    async def ingest(
        settings: Settings, pool: asyncpg.Pool, s3: Minio, stop: asyncio.Event
    ) -> None:
        redis = aioredis.from_url(settings.redis_url)
        try:
            await run_ingest(settings.amqp_url.get_secret_value(), pool, s3, stop, redis)
        finally:
            await redis.aclose()

    _serve(ingest)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from central import commands as versioned
    from central import config_hints, retention, watchlists
    from central.clipworker import ClipWorker, CommandPublisher

    async def work(settings: Settings, pool: asyncpg.Pool, s3: Minio, stop: asyncio.Event) -> None:
        amqp = settings.amqp_url.get_secret_value()
        commands = CommandPublisher(amqp)
        pushed = [watchlists.PUSH, config_hints.PUSH]  # watchlists, config hints
        tasks = [asyncio.create_task(versioned.run_pusher(pool, commands, stop, pushed))]
        if args.retention_interval_s > 0:
            tasks.append(
                asyncio.create_task(retention.run(pool, s3, stop, args.retention_interval_s))
            )
        try:
            await ClipWorker(pool, s3, amqp, upload_wait_s=args.upload_wait_s).run(stop)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await commands.close()

    _serve(work)
    return 0


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    """Create (idempotently) the admin; with --camera-url, a demo city and camera."""
    from central.bootstrap import bootstrap

    settings = _settings()
    out = asyncio.run(
        bootstrap(
            settings.database_url.get_secret_value(),
            admin_email=args.admin_email,
            admin_password=args.admin_password,
            camera_url=args.camera_url,
            enrolment_token=args.enrolment_token,
        )
    )
    print(json.dumps(out, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gtvision-central", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("migrate", help="apply Alembic migrations to DATABASE_URL")
    p.add_argument("--downgrade", metavar="REV", help="migrate down to REV (e.g. base)")
    p.set_defaults(fn=_cmd_migrate)
    p = sub.add_parser("api", help="serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(fn=_cmd_api)
    p = sub.add_parser("ingest", help="consume agent messages from RabbitMQ")
    p.set_defaults(fn=_cmd_ingest)
    p = sub.add_parser(
        "worker",
        help="make requested clips; keep recordings current; push watchlists and config hints; "
        "enforce retention",
    )
    p.add_argument(
        "--upload-wait-s", type=float, default=300.0,
        help="how long a clip waits for video its agent was asked to upload (default 300)",
    )  # fmt: skip
    p.add_argument(
        "--retention-interval-s", type=float, default=3600.0,
        help="seconds between retention passes (each city's plan; default 3600, 0: off)",
    )  # fmt: skip
    p.set_defaults(fn=_cmd_worker)
    p = sub.add_parser("bootstrap", help="create the first admin (and a demo city/agent/camera)")
    p.add_argument("--admin-email", required=True)
    p.add_argument("--admin-password", required=True)
    p.add_argument("--camera-url", help="also create a demo city with this camera")
    p.add_argument(
        "--enrolment-token", action="store_true", help="and a one-time token for its agent"
    )
    p.set_defaults(fn=_cmd_bootstrap)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    result: int = args.fn(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
