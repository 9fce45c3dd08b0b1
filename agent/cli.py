"""``gtvision-agent``: run the agent, validate its config, show its backlog."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from agent.config import ConfigError, load_config
from agent.service import run_agent
from agent.store import Store

DEFAULT_CONFIG = Path("/etc/gtvision/agent.yaml")


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: OK ({len(config.cameras)} camera(s))")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_agent(config, stop)

    asyncio.run(main())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2

    async def main() -> dict[str, object]:
        store = Store(config.data_dir / "agent.sqlite3")
        await store.open()
        try:
            return await store.backlog()
        finally:
            await store.close()

    print(json.dumps(asyncio.run(main()), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gtvision-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (
        ("run", _cmd_run, "record cameras and sync to central"),
        ("check-config", _cmd_check_config, "validate a config file and exit"),
        ("status", _cmd_status, "show the outbox backlog"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file")
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result: int = args.fn(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
