"""The `gtvision-dev` command: up, down, status and env for the development stack."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack import checks, system
from devstack.install import InstallError, ensure_installed
from devstack.procs import ServiceError
from devstack.stack import SERVICES, Stack, default_state_dir

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    configure: Configure
    handler: Handler


_COMMANDS: list[_Command] = []


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def command(
    name: str, help: str, configure: Configure = _no_arguments
) -> Callable[[Handler], Handler]:
    """Register a subcommand: `configure` adds its arguments, the handler returns an exit code.

    Adding a subcommand (e.g. `demo`) is one decorated function in this module or any module
    imported before `main()` builds the parser.
    """

    def register(handler: Handler) -> Handler:
        _COMMANDS.append(_Command(name, help, configure, handler))
        return handler

    return register


def stack_of(args: argparse.Namespace) -> Stack:
    return Stack(args.state_dir)


# ---- up ---------------------------------------------------------------------------------------


def _up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--only",
        nargs="+",
        choices=SERVICES,
        metavar="NAME",
        help=f"start only these services ({', '.join(SERVICES)})",
    )
    p.add_argument(
        "--no-install", action="store_true", help="do not apt-get install what is missing"
    )
    p.add_argument(
        "--services-only",
        action="store_true",
        help="start the backing services and camera, not central and the agent",
    )


@command("up", "install what is missing and start the stack (idempotent)", _up_arguments)
def cmd_up(args: argparse.Namespace) -> int:
    try:
        ensure_installed(apt=not args.no_install)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stack = stack_of(args)

    def progress(name: str, what: str, seconds: float) -> None:
        if what == "running":
            print(f"  {name:<14} already running")
        else:
            print(f"  {name:<14} started in {seconds:.1f}s")

    print(f"state dir: {stack.state_dir}")
    try:
        stack.up(args.only or SERVICES, on_event=progress)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not (args.only or args.services_only):
        try:
            ids = system.up(stack, on_event=progress)
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    _print_status(stack)
    state_opt = f" --state-dir {shlex.quote(str(args.state_dir))}" if args.state_dir else ""
    print(f'\nexport the settings with:  eval "$(gtvision-dev{state_opt} env)"')
    if not (args.only or args.services_only):
        _print_where_to_look(stack, ids)
    return 0


def _print_where_to_look(stack: Stack, ids: dict[str, str]) -> None:
    email, password = system.admin_login(stack.state_dir)
    api = f"http://127.0.0.1:{system.API_PORT}"
    print(
        f"""
GT-Vision is up.
  API docs (OpenAPI):  {api}/docs
  login:               {email} / {password}
  camera id:           {ids["camera_id"]}
  try:
    TOKEN=$(curl -s {api}/api/auth/login -H 'content-type: application/json' \\
      -d '{{"email": "{email}", "password": "{password}"}}' | python3 -c \\
      'import json,sys; print(json.load(sys.stdin)["token"])')
    curl -s -H "Authorization: Bearer $TOKEN" {api}/api/cameras/{ids["camera_id"]}/segments
    curl -s -H "Authorization: Bearer $TOKEN" "{api}/api/plates?q={_a_plate(stack)}&mode=exact"
  stop everything:     ./gtv down"""
    )


def _a_plate(stack: Stack) -> str:
    """A plate that drives past the simulated camera (from its ground truth), to search for."""
    try:
        truth = json.loads(Path(stack.env()["CAMERA_TRUTH"]).read_text())
        plate: str = truth["vehicles"][0]["plate"]
    except (KeyError, IndexError, OSError, ValueError):
        return "ABC1D23"
    return plate


# ---- down -------------------------------------------------------------------------------------


def _down_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="+", choices=SERVICES, metavar="NAME", help="stop only these")


@command("down", "stop what `up` started (by recorded PID); data is kept", _down_arguments)
def cmd_down(args: argparse.Namespace) -> int:
    stopped = stack_of(args).down(args.only)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


# ---- status -----------------------------------------------------------------------------------


def _status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _print_status(stack: Stack) -> None:
    rows = stack.status()
    if not rows:
        print("nothing recorded; run `up`")
        return
    print(f"{'service':<14} {'alive':<5} {'pids':<18} url")
    for r in rows:
        pids = ",".join(map(str, r.pids)) or "-"
        print(f"{r.name:<14} {'yes' if r.alive else 'NO':<5} {pids:<18} {r.url}")
        extra = {k: v for k, v in r.info.items() if k in ("management_url", "truth", "endpoint")}
        for k, v in extra.items():
            print(f"{'':<39} {k}: {v}")


@command("status", "show what runs where", _status_arguments)
def cmd_status(args: argparse.Namespace) -> int:
    stack = stack_of(args)
    if args.json:
        print(json.dumps([s.to_json() for s in stack.status()], indent=2))
    else:
        print(f"state dir: {stack.state_dir}")
        _print_status(stack)
    return 0


# ---- env --------------------------------------------------------------------------------------


@command("env", "print `export K=V` lines for the running stack (eval or source them)")
def cmd_env(args: argparse.Namespace) -> int:
    for key, value in stack_of(args).env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


# ---- check -------------------------------------------------------------------------------------


def _check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--only", nargs="+", choices=[n for n, _ in checks.steps([])], metavar="STEP",
        help="run only these steps (format, lint, types, compose, tests)",
    )  # fmt: skip
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")


@command("check", "every check: format, lint, types, compose file, all tests", _check_arguments)
def cmd_check(args: argparse.Namespace) -> int:
    try:
        # The tests start real services: install what they need first, as `up` does.
        ensure_installed(apt=True)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return checks.run_checks(args.pytest_args, args.only)


# ---- refdocs -----------------------------------------------------------------------------------


def _refdocs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="fail if docs/ref is out of date")


@command("refdocs", "regenerate docs/ref from the code", _refdocs_arguments)
def cmd_refdocs(args: argparse.Namespace) -> int:
    from devstack import refdocs

    stale = refdocs.write(check=args.check)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run `./gtv refdocs`)", file=sys.stderr)
        return 1
    print("docs/ref: " + (", ".join(stale) + " written" if stale else "up to date"))
    return 0


# ---- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gtvision-dev",
        description="GT-Vision development stack (PostgreSQL, RabbitMQ, S3, Redis, RTSP camera).",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"state directory (default: $GTVISION_STATE_DIR or {default_state_dir()})",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in _COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(handler=cmd.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `gtvision-dev status | head`: the reader left; silence the flush at exit too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
