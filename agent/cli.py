"""``gtvision-agent``: run the agent, validate its config, show its cameras and backlog."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from agent.config import ConfigError, load_config
from agent.enroll import EnrolError, enroll
from agent.reload import without_yaml_snippets
from agent.service import read_status, run_agent, status_path
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
        # The journal keeps this: no quoted source lines (one may be a password's).
        print(f"invalid config: {without_yaml_snippets(str(exc))}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # The config file is watched: valid edits are applied live (see agent/reload.py).
        await run_agent(config, stop, args.config.absolute())

    asyncio.run(main())
    return 0


def _data_dir_of(path: Path) -> Path | None:
    """``data_dir`` from a config file that does not validate (to show status all the same).

    Even a file that is not YAML any more usually still has its ``data_dir:`` line intact.
    """
    try:
        text = path.read_text()
    except OSError:
        return None
    candidates = [text, *(line for line in text.splitlines() if line.startswith("data_dir:"))]
    for candidate in candidates:
        try:
            data = yaml.safe_load(candidate)
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and isinstance(data.get("data_dir"), str):
            return Path(data["data_dir"])
    return None


def _cmd_status(args: argparse.Namespace) -> int:
    rc = 0
    try:
        data_dir = load_config(args.config).data_dir
    except ConfigError as exc:
        # A bad edit is exactly when the running agent's state matters: show it if we can.
        print(f"invalid config: {without_yaml_snippets(str(exc))}", file=sys.stderr)
        found = _data_dir_of(args.config)
        if found is None:
            return 2
        data_dir, rc = found, 2

    async def main() -> dict[str, object]:
        store = Store(data_dir / "agent.sqlite3")
        await store.open()
        try:
            return await store.backlog()
        finally:
            await store.close()

    print_agent_status(read_status(data_dir), status_path(data_dir))
    print("outbox backlog:")
    print(json.dumps(asyncio.run(main()), indent=2))
    return rc


def _age(iso: str | None) -> str:
    if not iso:
        return "never"
    seconds = max(0, round(time.time() - datetime.fromisoformat(iso).timestamp()))
    return f"{iso} ({seconds} s ago)"


def print_agent_status(status: dict[str, Any] | None, path: Path) -> None:
    """The cameras and config reload state the running agent wrote to its status file."""
    if status is None:
        print(f"agent: no status file at {path} (the agent has not run with this data_dir)")
        return
    state = status.get("state", "unknown")
    updated = status.get("updated_at")
    stale_after = 5 * float(status.get("status_interval_s", 2.0))
    if state == "running" and updated:
        age = time.time() - datetime.fromisoformat(updated).timestamp()
        if age > stale_after:
            state = (
                f"not responding or killed (pid {status.get('pid')} last wrote {round(age)} s ago)"
            )
    pid, since = status.get("pid"), status.get("started_at")
    print(f"agent {status.get('agent_id')}: {state} (pid {pid}, since {since})")
    print(f"status updated: {_age(updated)}")
    print("cameras:")
    cameras = status.get("cameras") or []
    if not cameras:
        print("  (none configured)")
    for cam in cameras:
        print(
            f"  {cam['key']:<16} {cam['status']:<9} {cam['segments_registered']:>6} segment(s)  "
            f"{cam['name']} - {cam['reason']}"
        )
    reload = status.get("reload") or {}
    if not reload.get("watching"):
        print("config: not watched (changes need a restart)")
    else:
        print(f"config: {reload.get('config_path')} (watched)")
        last = reload.get("last")
        if last is None:
            print("  no reload since start")
        else:
            outcome = "applied" if last["ok"] else "REJECTED"
            print(f"  last reload: {outcome} at {last['at']}")
        error = reload.get("error")
        if error:
            print("  the file on disk is NOT running (the last good config is):")
            for line in str(error["message"]).splitlines():
                print(f"    {line}")
        if reload.get("restart_required"):
            keys = ", ".join(reload["restart_required"])
            print(f"  changed keys waiting for a restart: {keys}")
    hint = status.get("central_hint")
    if hint:
        cap = hint.get("max_upload_mbps")
        off = ", ".join(hint.get("cameras_disabled") or []) or "none"
        print(
            f"central config hint: version {hint['version']}, upload cap "
            f"{f'{cap} Mbps' if cap else 'none'}, cameras disabled at central: {off}"
        )
    print_storage_status(status.get("storage"))


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    if abs(n) < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def print_storage_status(storage: dict[str, Any] | None) -> None:
    """The disk budget, the spool's usage and the retention it buys (agent/eviction.py)."""
    if not storage:
        return
    limits = []
    if storage.get("max_bytes") is not None:
        limits.append(f"at most {_size(storage['max_bytes'])} of video")
    if storage.get("min_free_bytes") is not None:
        limits.append(f"keep {_size(storage['min_free_bytes'])} free")
    every = storage.get("check_seconds")
    print(f"disk budget: {', '.join(limits) or 'none'} (checked every {every} s)")
    check = storage.get("last_check")
    if storage.get("last_error"):
        print(f"  last check FAILED: {storage['last_error']}")
    if not check:
        print("  not checked yet")
        return
    print(
        f"  spool: {_size(check['used_bytes'])} in {check['segments']} segment(s); "
        f"{_size(check['free_bytes'])} free on its filesystem; "
        f"the budget holds {_size(check['capacity_bytes'])}"
    )
    rate, days = check.get("bytes_per_day"), check.get("retention_days")
    if rate is None:
        print("  retention: not enough recording yet to measure the bitrate")
    else:
        print(
            f"  recording {_size(rate)}/day (last hours): the budget holds about "
            f"{days:.1f} day(s) of video"
        )
    oldest = check.get("oldest_segment_ms")
    if oldest is not None:
        held = max(0.0, (check["checked_ms"] - oldest) / 86_400_000)
        since = datetime.fromtimestamp(oldest / 1000).isoformat(timespec="seconds")
        print(f"  oldest segment held: {since} ({held:.1f} day(s) ago)")
    if check.get("evicted_segments"):
        print(
            f"  evicted so far: {check['evicted_segments']} segment(s), "
            f"{_size(check['evicted_bytes'])}; {check['evicted_unsynced']} of them never "
            "synced (reported to central as losses)"
        )


def _cmd_enroll(args: argparse.Namespace) -> int:
    try:
        path = enroll(args.central, args.token, args.config, force=args.force)
    except EnrolError as exc:
        print(f"enrolment failed: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled: credentials written to {path} (mode 0600)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gtvision-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (
        ("run", _cmd_run, "record cameras and sync to central"),
        ("check-config", _cmd_check_config, "validate a config file and exit"),
        ("status", _cmd_status, "show cameras, config reload state and the outbox backlog"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file")
        p.set_defaults(fn=fn)
    p = sub.add_parser("enroll", help="exchange a one-time token from central for credentials")
    p.add_argument("--central", required=True, help="central's API URL, e.g. https://central/")
    p.add_argument("--token", required=True, help="the one-time enrolment token")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file")
    p.add_argument("--force", action="store_true", help="replace existing credentials")
    p.set_defaults(fn=_cmd_enroll)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "1 change detected": ours says more
    result: int = args.fn(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
