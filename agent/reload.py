"""Hot reload of the agent's YAML config: watch the file, validate, hand good configs on.

The watcher follows the file's *directory* (editors save by writing a temporary file and
renaming it over the original, which a watch on the file itself would lose) and keeps only
events for the file's name and for the credentials file ``load_config`` merges. Besides
inotify events it compares the file's ``stat`` signature once a second, which catches what
inotify misses (symlink swaps as Kubernetes ConfigMaps do them, network file systems) and any
change between the agent's start and the watch's.

Before a file is read it must be *quiet*: the same ``stat`` signature twice, ``SETTLE_S``
apart. A file that still changed while it was read is read again. A file that does not load
(unreadable or deleted, not YAML, not a valid config) is rejected: the running config stays,
the rejection is logged as ``config reload rejected: <reason>`` and kept in
``last_reload`` for the status file. A save in progress therefore costs at most one extra
read, and a half-written file is only reported if it stays half-written (or the writer pauses
longer than ``SETTLE_S`` in the middle; the finished file is then applied on its own event).
Rejection messages never quote the file's lines (PyYAML does; they can hold a password).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watchfiles import Change, awatch

from agent.config import CREDENTIALS_FILE, AgentConfig, ConfigError, load_config

log = logging.getLogger(__name__)

# watchfiles groups events until none arrived for STEP_MS (at most DEBOUNCE_MS).
STEP_MS = 100
DEBOUNCE_MS = 1500
# The stat signature must hold still this long before the file is read.
SETTLE_S = 0.25
SETTLE_MAX_S = 5.0
# Reads of a file that keeps changing while it is read, before the last read counts.
READ_ATTEMPTS = 3
# How often the stat signature is checked when no event arrives (also bounds shutdown).
TICK_MS = 1000

Signature = tuple[int, int, int, int, int] | None
_UNSEEN = object()


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of one reload attempt, for logs and the status file."""

    at: float  # unix time, seconds
    ok: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds"),
            "ok": self.ok,
            "message": self.message,
        }


def signature(path: Path) -> Signature:
    """What identifies one version of the file (follows symlinks); None if it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# PyYAML's error text quotes the offending source line under each "line N, column M:" (a
# snippet line, then a caret line). That line can be a password's: keep the position only.
_YAML_SNIPPET = re.compile(r"(line \d+, column \d+):\n[^\n]*\n *\^")


def without_yaml_snippets(text: str) -> str:
    return _YAML_SNIPPET.sub(r"\1", text)


def read_config(path: Path) -> AgentConfig:
    """``load_config``, with the source lines PyYAML quotes taken out of its errors."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigError(without_yaml_snippets(str(exc))) from None


class ConfigReloader:
    """Watches ``path`` and calls ``apply`` with each new valid config, one at a time."""

    def __init__(
        self,
        path: Path,
        apply: Callable[[AgentConfig], Awaitable[object]],
        current: AgentConfig | None = None,
        *,
        on_result: Callable[[ReloadResult], Awaitable[None]] | None = None,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.path = path
        self.apply = apply
        self.on_result = on_result
        self.settle_s = settle_s
        self.last_reload: ReloadResult | None = None
        self.reloads = 0  # configs handed to apply
        self._file_config = current  # the last good config read from the file
        self._seen: object = _UNSEEN  # the signature of the version last read

    @property
    def last_reload_error(self) -> ReloadResult | None:
        """The rejection in force: set while the file on disk is not the config that runs."""
        if self.last_reload is not None and not self.last_reload.ok:
            return self.last_reload
        return None

    async def watch(self, stop: asyncio.Event | None = None) -> None:
        """Reload on every change until ``stop`` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        names = {self.path.name, CREDENTIALS_FILE}  # load_config merges the credentials

        def only_our_files(change: Change, changed: str) -> bool:
            return Path(changed).name in names

        await self.check()  # anything that changed since the config was first loaded
        try:
            async for changes in awatch(
                self.path.parent,
                watch_filter=only_our_files,
                step=STEP_MS,
                debounce=DEBOUNCE_MS,
                rust_timeout=TICK_MS,
                yield_on_timeout=True,
                recursive=False,
                stop_event=stop,
            ):
                # An event forces a read: two quick in-place saves of the same size can share
                # a signature (coarse timestamps). A tick reads only if the signature moved.
                if changes:
                    await self.check(force=True)
                elif await asyncio.to_thread(signature, self.path) != self._seen:
                    await self.check()
        except OSError as exc:  # e.g. the inotify watch limit: fall back to polling
            log.warning(
                "cannot watch %s for changes (%s); checking the config every %.0f s instead",
                self.path.parent,
                exc,
                TICK_MS / 1000,
            )
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TICK_MS / 1000)
                if (
                    not stop.is_set()
                    and await asyncio.to_thread(signature, self.path) != self._seen
                ):
                    await self.check()

    async def check(self, *, force: bool = False) -> bool | None:
        """Read the file if it changed: True applied, False rejected, None nothing to do."""
        for _attempt in range(READ_ATTEMPTS):
            sig = await self._settled_signature()
            if sig == self._seen and not force:
                return None
            try:
                config: AgentConfig | None = await asyncio.to_thread(read_config, self.path)
                error = ""
            except ConfigError as exc:
                config, error = None, str(exc)
            except Exception as exc:  # a loader bug must not take the recording down
                config, error = None, f"{self.path}: cannot load: {type(exc).__name__}"
            if await asyncio.to_thread(signature, self.path) == sig:
                break
            # Changed while we read it: a save in progress. Read the finished file instead.
        self._seen = sig
        if config is None:
            log.error("config reload rejected: %s", error)
            await self._record(ReloadResult(time.time(), False, error))
            return False
        if config == self._file_config and self.last_reload_error is None:
            log.debug("config file %s touched, content unchanged", self.path)
            return None
        await self.apply(config)
        self._file_config = config
        self.reloads += 1
        await self._record(ReloadResult(time.time(), True, f"applied {self.path}"))
        return True

    async def _record(self, result: ReloadResult) -> None:
        self.last_reload = result
        if self.on_result is not None:
            await self.on_result(result)

    async def _settled_signature(self) -> Signature:
        """The file's signature once it held still for ``settle_s`` (or SETTLE_MAX_S passed)."""
        deadline = time.monotonic() + SETTLE_MAX_S
        sig = await asyncio.to_thread(signature, self.path)
        while time.monotonic() < deadline:
            await asyncio.sleep(self.settle_s)
            again = await asyncio.to_thread(signature, self.path)
            if again == sig:
                break
            sig = again
        return sig
