"""Network emulation between devices and the cloud: a TCP proxy on loopback.

The proxy forwards bytes untouched, so HTTP/2 gRPC (or anything else) passes
transparently; it only decides *when* each chunk arrives, whether a
connection survives, and whether the link is up at all:

* latency: a one-way delay per chunk, lognormal around a median; chunks of a
  connection never overtake each other (TCP delivers in order, so jitter
  shows as head-of-line blocking, as on a real link);
* loss: TCP never drops bytes, so a lost segment shows as a retransmission
  delay; ``reset`` cuts the connection instead (a handover, a NAT timeout);
* bandwidth: a per-connection, per-direction serialisation delay;
* outages: windows of *simulated* time (the fleet's clock) during which new
  connections are refused and open ones cut (``refuse``), or bytes stall
  until the window ends (``blackhole``: calls run into their deadlines).

Under the fleet's ``sim`` clock a window's simulated seconds can pass in a
few wall milliseconds (other devices' events move the clock on while one call
waits), shorter than a wall-clock deadline or the watcher's 20 ms poll. The
fleet therefore holds the clock at a window's edges until the calls in flight
have ended, and calls :meth:`ProxyThread.apply_outages` as the window opens,
so open connections are cut at once (see simulator/fleet.py).

``stop()`` cancels the proxy's own tasks (connection handlers, deliverers,
the watcher) and waits for them; a handler that is cancelled ends quietly.

Example::

    proxy = ProxyThread("127.0.0.1:50051", LinkProfile(latency_ms=40, jitter=0.3), clock=sim_clock)
    address = proxy.start()      # "127.0.0.1:PORT": point the devices here
    ...
    proxy.stats.bytes_up, proxy.stats.bytes_down
    proxy.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

OutageMode = Literal["refuse", "blackhole"]
_CHUNK = 64 * 1024  # bytes read at a time; one HTTP/2 frame batch


@dataclass(frozen=True)
class LinkProfile:
    """What the link between a device and the cloud does to bytes (per direction)."""

    latency_ms: float = 0.0  # median one-way delay
    jitter: float = 0.0  # sigma of the lognormal around the median; 0 = every chunk the same
    loss: float = 0.0  # probability a chunk needs a retransmission
    retransmit_ms: float = 200.0  # what a retransmission costs: Linux's minimum TCP RTO
    reset: float = 0.0  # probability per chunk that the connection is cut
    bandwidth_kbps: float = 0.0  # per connection and direction; 0 = unlimited
    outage_mode: OutageMode = "refuse"

    def validate(self) -> None:
        for name in ("latency_ms", "jitter", "retransmit_ms", "bandwidth_kbps"):
            if getattr(self, name) < 0:
                raise ValueError(f"network.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("loss", "reset"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"network.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.outage_mode not in ("refuse", "blackhole"):
            raise ValueError(f"network.outage_mode must be refuse or blackhole, got {self.outage_mode!r}")

    @property
    def transparent(self) -> bool:
        """True when the proxy adds nothing but a hop (forwarding takes the fast path)."""
        return (self.latency_ms == 0 and self.loss == 0 and self.reset == 0
                and self.bandwidth_kbps == 0)


@dataclass(frozen=True)
class Window:
    """[start_s, end_s) in simulated seconds."""

    start_s: float
    end_s: float

    def __contains__(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass
class ProxyStats:
    bytes_up: int = 0  # device -> cloud, as forwarded
    bytes_down: int = 0  # cloud -> device
    connections: int = 0
    refused: int = 0  # accepted and closed at once (link down or upstream unreachable)
    resets: int = 0  # connections cut by the loss model or by an outage
    retransmits: int = 0  # chunks delayed by an emulated loss
    open: int = 0


@dataclass
class _Link:
    """One direction of one connection: when its last chunk arrives and the wire frees up."""

    last_at: float = 0.0
    wire_free: float = 0.0


@dataclass(eq=False)  # kept in a set: identity, not value
class _Conn:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def abort(self) -> None:
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.transport.abort()


class NetemProxy:
    """The proxy itself; runs on the event loop that calls :meth:`start`."""

    def __init__(self, upstream: str, profile: LinkProfile | None = None,
                 outages: Sequence[Window] = (), clock: Callable[[], float] = time.monotonic,
                 seed: int = 0, connect_timeout_s: float = 2.0) -> None:
        self.profile = profile or LinkProfile()
        self.profile.validate()
        host, _, port = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.outages = list(outages)
        self.clock = clock
        self.rng = random.Random(seed)
        self.connect_timeout_s = connect_timeout_s
        self.stats = ProxyStats()
        self.forced_down = False  # set by tests and by faults outside the windows
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # handlers, deliverers, the watcher
        self._stopping = False

    def down(self) -> bool:
        if self.forced_down:
            return True
        if not self.outages:
            return False
        now = self.clock()
        return any(now in w for w in self.outages)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        self._spawn(self._watch_outages())
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("netem proxy %s:%d -> %s:%d (%s)", host, bound, *self.upstream, self.profile)
        return bound

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Stop listening, cut every connection, cancel the proxy's tasks and wait for them."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.abort()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            done, _ = await asyncio.wait(tasks, timeout=timeout_s)
            for t in done:  # retrieved, so none is logged as "never retrieved"
                if not t.cancelled():
                    t.exception()

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def apply_outages(self) -> None:
        """Cut open connections now if the link is down in refuse mode (new ones are refused)."""
        if self.profile.outage_mode == "refuse" and self._conns and self.down():
            for c in list(self._conns):
                c.abort()
                self._conns.discard(c)  # counted once, though its handler ends later
                self.stats.resets += 1

    async def _watch_outages(self) -> None:
        """Cut open connections when the link goes down (refuse mode); bounded 20 ms polling."""
        while True:
            await asyncio.sleep(0.02)
            self.apply_outages()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One device connection, until a side closes it or :meth:`stop` cancels the handler."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Only stop() cancels a handler. Ending cancelled would make Python 3.11's stream
            # server log a CancelledError traceback per connection: end quietly instead.
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.down() and self.profile.outage_mode == "refuse":
            self.stats.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), self.connect_timeout_s)
        except (OSError, TimeoutError):
            self.stats.refused += 1  # the cloud is not there: the device sees the connection drop
            writer.transport.abort()
            return
        conn = _Conn([writer, up_writer])
        self._conns.add(conn)
        self.stats.open += 1
        try:
            await asyncio.gather(self._pump(reader, up_writer, conn, up=True),
                                 self._pump(up_reader, writer, conn, up=False))
        finally:
            self._conns.discard(conn)
            self.stats.open -= 1
            conn.abort()

    def _delay_s(self) -> float:
        p = self.profile
        d = p.latency_ms
        if d and p.jitter:
            d *= math.exp(self.rng.gauss(0.0, p.jitter))
        if p.loss and self.rng.random() < p.loss:
            self.stats.retransmits += 1
            d += p.retransmit_ms
        return d / 1e3

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    conn: _Conn, up: bool) -> None:
        """Forward one direction until EOF; chunks keep their order and arrive at their time.

        A reader stamps each chunk with its arrival time and queues it; a writer
        delivers it then. Reading never waits for delivery, so many chunks are
        in flight at once, as packets are on a real link (a bounded queue plays
        the part of TCP's window).
        """
        p = self.profile
        if p.transparent and p.outage_mode == "refuse":
            await self._forward(reader, writer, conn, up, None)
            return
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=256)
        deliver = self._spawn(self._deliver(queue, writer, up))
        try:
            await self._forward(reader, writer, conn, up, queue)
        finally:
            if not self._stopping:  # the chunks in flight still arrive, then the deliverer ends
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(queue.put(None), 5.0)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(deliver, 30.0)
            deliver.cancel()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn,
                       up: bool, queue: asyncio.Queue[tuple[float, bytes] | None] | None) -> None:
        p = self.profile
        loop = asyncio.get_running_loop()
        link = _Link()
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if p.reset and self.rng.random() < p.reset:
                    self.stats.resets += 1
                    conn.abort()
                    return
                if queue is None:  # fast path: a plain hop
                    writer.write(data)
                    self._count(up, len(data))
                    await writer.drain()
                    continue
                start = max(loop.time(), link.wire_free)
                link.wire_free = start + (len(data) * 8 / (p.bandwidth_kbps * 1e3)
                                          if p.bandwidth_kbps else 0.0)
                link.last_at = max(link.wire_free + self._delay_s(), link.last_at)
                await queue.put((link.last_at, data))
        except (ConnectionError, OSError):
            pass
        finally:
            if queue is None:
                with contextlib.suppress(Exception):
                    writer.close()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes] | None],
                       writer: asyncio.StreamWriter, up: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await queue.get()) is not None:
                at, data = item
                await asyncio.sleep(max(0.0, at - loop.time()))
                while self.down() and self.profile.outage_mode == "blackhole":
                    await asyncio.sleep(0.01)  # the link stalls; bytes flow again when it is back
                writer.write(data)
                self._count(up, len(data))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _count(self, up: bool, n: int) -> None:
        if up:
            self.stats.bytes_up += n
        else:
            self.stats.bytes_down += n


class ProxyThread:
    """A :class:`NetemProxy` on its own event loop in a daemon thread.

    The fleet's device work blocks in gRPC calls, so the proxy must not share
    its thread. ``start()`` returns the address devices should dial.
    """

    def __init__(self, upstream: str, profile: LinkProfile | None = None,
                 outages: Sequence[Window] = (), clock: Callable[[], float] = time.monotonic,
                 seed: int = 0) -> None:
        self.proxy = NetemProxy(upstream, profile, outages, clock, seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netem", daemon=True)
        self.port = 0

    @property
    def stats(self) -> ProxyStats:
        return self.proxy.stats

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> str:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop)
        self.port = fut.result(timeout_s)
        return self.address

    def set_down(self, down: bool) -> None:
        self.proxy.forced_down = down

    def apply_outages(self, timeout_s: float = 5.0) -> None:
        """Act on the link's state now, on the proxy's loop; returns once open connections are cut."""
        async def apply() -> None:
            self.proxy.apply_outages()

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)

    def __enter__(self) -> ProxyThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
