"""A small asyncio TCP proxy for fault tests: pass traffic through, cut the link, stall it.

``TcpProxy`` listens on 127.0.0.1 and forwards each connection to one target. While running it
can be switched between three states:

- **pass**: bytes flow both ways (optionally throttled to ``rate_bytes_per_s`` in total);
- **cut**: every connection is closed at once (reset) and new ones are refused: the listening
  socket is closed, so a connect fails with "connection refused", like a dead route;
- **stall**: connections stay open but nothing is forwarded either way, and new connections are
  accepted and held without reaching the target: a half-open link, which only heartbeats and
  timeouts can notice. ``stall("up")`` or ``stall("down")`` stops one direction only (client
  to target, or back): e.g. messages reach a broker but its confirms never come back, which
  puts a publisher deterministically between "published" and "acknowledged".

``restore()`` returns to pass: the listener reopens on the same port; stalled connections
resume with whatever was buffered. It runs in the caller's event loop: keep that loop free
(blocking calls in ``asyncio.to_thread``) or the proxy stalls too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

State = Literal["pass", "cut", "stall"]
Direction = Literal["both", "up", "down"]
CHUNK = 65536


@dataclass
class ProxyStats:
    accepted: int = 0  # client connections accepted since start
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client
    cut_connections: int = 0  # closed by cut()


class _Throttle:
    """One leaky bucket shared by every connection and direction."""

    def __init__(self, rate_bytes_per_s: float) -> None:
        self.rate = rate_bytes_per_s
        self._next_free = 0.0

    def chunk(self) -> int:
        return max(1024, min(CHUNK, int(self.rate / 20)))

    async def take(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_free)
        self._next_free = start + n / self.rate
        if self._next_free - now > 0:
            await asyncio.sleep(self._next_free - now)


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.client_r, self.client_w = client_r, client_w
        self.target_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for w in (self.client_w, self.target_w):
            if w is not None:
                w.transport.abort()
        for t in self.tasks:
            t.cancel()


class TcpProxy:
    """Forward 127.0.0.1:``port`` to ``target_host``:``target_port``; cut, stall, restore.

    Use as ``async with TcpProxy(host, port) as proxy:`` or call ``start()``/``close()``.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        rate_bytes_per_s: float | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self._port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        # Set while bytes may flow client -> target ("up") and target -> client ("down").
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._up.set()
        self._down.set()
        self.state: State = "pass"
        self.stats = ProxyStats()
        self._throttle = _Throttle(rate_bytes_per_s) if rate_bytes_per_s else None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the proxy has not started")
        return self._port

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._links)

    def throttle(self, rate_bytes_per_s: float | None) -> None:
        """Limit the bytes/s forwarded (both directions together); None lifts the limit."""
        if rate_bytes_per_s is not None and rate_bytes_per_s <= 0:
            raise ValueError("rate_bytes_per_s must be positive (use stall() to stop traffic)")
        self._throttle = _Throttle(rate_bytes_per_s) if rate_bytes_per_s else None

    async def start(self) -> TcpProxy:
        await self._listen()
        return self

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def _abort_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.abort()
        self._links.clear()
        return len(links)

    async def cut(self) -> None:
        """Close every connection and refuse new ones until ``restore()``."""
        self.state = "cut"
        self._up.clear()
        self._down.clear()
        await self._stop_listening()
        self.stats.cut_connections += self._abort_all()
        log.info("proxy :%d -> %s:%d cut", self._port, *self.target)

    async def stall(self, direction: Direction = "both") -> None:
        """Keep connections open but forward nothing (in ``direction``), until ``restore()``."""
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be both, up or down (got {direction!r})")
        if self._server is None:
            await self._listen()
        self.state = "stall"
        for name, flow in (("up", self._up), ("down", self._down)):
            if direction in ("both", name):
                flow.clear()
            else:
                flow.set()
        log.info("proxy :%d -> %s:%d stalled (%s)", self._port, *self.target, direction)

    async def restore(self) -> None:
        """Back to passing traffic (the listener reopens on the same port after a cut)."""
        if self._server is None:
            await self._listen()
        self.state = "pass"
        self._up.set()
        self._down.set()
        log.info("proxy :%d -> %s:%d restored", self._port, *self.target)

    async def close(self) -> None:
        await self._stop_listening()
        self._abort_all()
        self._up.set()
        self._down.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.state == "cut":  # accepted in the instant before the listener closed
            writer.transport.abort()
            return
        self.stats.accepted += 1
        link = _Link(reader, writer)
        self._links.add(link)
        try:
            await self._up.wait()  # a stalled link holds new connections too
            if link not in self._links:  # cut while it waited
                return
            try:
                target_r, target_w = await asyncio.open_connection(*self.target)
            except OSError as exc:
                log.info("proxy :%d: target %s:%d unreachable: %s", self._port, *self.target, exc)
                return
            link.target_w = target_w
            if link not in self._links:  # cut meanwhile
                target_w.transport.abort()
                return
            link.tasks = [
                asyncio.create_task(self._pump(reader, target_w, self._up, up=True)),
                asyncio.create_task(self._pump(target_r, writer, self._down, up=False)),
            ]
            # Either side closing ends the link (no half-close games: AMQP and HTTP do not
            # need them), which the other pump then sees.
            _, pending = await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
        except asyncio.CancelledError:
            pass
        finally:
            self._links.discard(link)
            if self._server is None:  # cut (or closed): reset, as a dead link does
                link.abort()
            else:
                _close(link)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flowing: asyncio.Event,
        *,
        up: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await flowing.wait()
                throttle = self._throttle
                data = await reader.read(throttle.chunk() if throttle else CHUNK)
                if not data:
                    return
                # Read before a stall began: held until the link is restored.
                await flowing.wait()
                if self._throttle is not None:
                    await self._throttle.take(len(data))
                writer.write(data)
                await writer.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)


def _close(link: _Link) -> None:
    for w in (link.client_w, link.target_w):
        if w is not None:
            with contextlib.suppress(Exception):
                w.close()
