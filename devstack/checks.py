"""``gtvision-dev check``: every check the project has, in one command, as CI runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def steps(pytest_args: list[str]) -> list[tuple[str, list[str]]]:
    """The checks in order; cheap ones first so a typo fails in seconds."""
    return [
        ("format", [_bin("ruff"), "format", "--check", "."]),
        ("lint", [_bin("ruff"), "check", "."]),
        ("types", [_bin("mypy")]),
        ("compose", ["bash", "packaging/check_compose.sh"]),
        ("tests", [_bin("pytest"), *pytest_args]),
    ]


def run_checks(pytest_args: list[str], only: list[str] | None = None) -> int:
    """Run the checks; returns 0 only if all pass. Prints a summary with durations."""
    results: list[tuple[str, int, float]] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name, cmd in steps(pytest_args):
        if only and name not in only:
            continue
        print(f"==> {name}: {' '.join(cmd)}", flush=True)
        started = time.monotonic()
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        results.append((name, code, time.monotonic() - started))
    print("\n==> summary")
    for name, code, seconds in results:
        print(
            f"    {name:<8} {'ok' if code == 0 else f'FAILED (exit {code})':<18} {seconds:6.1f} s"
        )
    return 0 if all(code == 0 for _, code, _ in results) else 1
