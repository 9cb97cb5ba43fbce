"""Fault-injecting TCP proxies, one per link the harness controls, on 127.0.0.1, in the
harness's own event loop: no root needed.

The network is a set of named endpoints ("c1", "p2", "client") and directed links
(src, dst). ``Network.cut`` holds the set of directed links that are cut; a cut link
stalls: the proxy stops reading from the sending side, so TCP backpressure stalls the
sender, exactly like a partition that drops packets (TCP retransmits until it heals;
nothing is delivered meanwhile, and what was sent arrives after the heal). A new
connection across a cut link is accepted but not forwarded until it heals (a lost SYN
looks the same to the caller: nothing answers). ``Network.delay_s`` adds latency to
every byte crossing a link.

Bytes are forwarded unchanged and in order, so TLS runs end to end through a proxy (the
endpoints check each other's certificates; the proxy sees only ciphertext): a cut or a
delay holds whole chunks as they were read, whatever TLS records they split, and a
connection the proxy drops (``reset``, or one side closed while the other direction
held bytes) may end mid-record, which the endpoints see as a failed connection.

Each proxy forwards to one destination. Its source is either fixed (per-pair proxies:
the Raft links, coordinator-to-coordinator gRPC, client and participant gRPC to
coordinators) or identified per connection (coordinators dialling a participant: one
advertised address per participant, shared by every coordinator) by connection
tracking: the accepted peer's ephemeral port is looked up in /proc/net/tcp and the
socket inode found among the file descriptors of the harness's child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK_BYTES = 65536
HALF_CLOSED_GRACE_S = 1.0  # after one side of a connection closes, before closing both
QUEUE_CHUNKS_MAX = 64  # per direction; beyond it the proxy stops reading (backpressure)
UNKNOWN = "?"


@dataclass
class Network:
    """What the nemesis controls: cut directed links and added delay."""

    cut: set[tuple[str, str]] = field(default_factory=set)
    delay_s: dict[tuple[str, str], float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def is_cut(self, src: str, dst: str) -> bool:
        return (src, dst) in self.cut

    def set_cut(self, links: set[tuple[str, str]]) -> None:
        self.cut = set(links)
        self._notify()

    def set_delay(self, delays: dict[tuple[str, str], float]) -> None:
        self.delay_s = dict(delays)
        self._notify()

    def heal(self) -> None:
        self.cut = set()
        self.delay_s = {}
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_open(self, src: str, dst: str) -> None:
        while self.is_cut(src, dst):
            await self.changed.wait()


class Proxy:
    """Listens on ``listen_port`` and forwards to ``target_port``; traffic from the
    connecting side is ``src -> dst``, the replies ``dst -> src``."""

    def __init__(
        self,
        network: Network,
        *,
        dst: str,
        target_port: int,
        listen_port: int,
        src: str | None = None,
        identify: Callable[[int], str] | None = None,
    ) -> None:
        assert (src is None) != (identify is None), "a fixed source or a way to identify it"
        self.network = network
        self.dst = dst
        self.src = src
        self.identify = identify
        self.target_port = target_port
        self.listen_port = listen_port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.listen_port, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def reset(self) -> None:
        """Drop every connection through this proxy now, both sides, discarding what it
        holds (as a crash or a reset by a middlebox would): a TLS stream may end in the
        middle of a record, and its endpoints must just fail and reconnect. New
        connections are accepted as before."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            src = self.src
            if src is None:
                assert self.identify is not None
                peer_port = writer.get_extra_info("peername")[1]
                # Reading /proc is slow and blocking: off the loop that runs every proxy.
                src = await asyncio.to_thread(self.identify, peer_port)
            await self._wait_open(src, self.dst)
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return  # the destination is down: the caller sees the connection close
            pumps = [
                asyncio.ensure_future(self._pump(reader, up_writer, src, self.dst)),
                asyncio.ensure_future(self._pump(up_reader, writer, self.dst, src)),
            ]
            try:
                # One side closed: neither gRPC nor pysyncobj half-closes on purpose, so
                # give the other direction a moment to drain, then close both. Waiting for
                # the other side to close too leaked a socket (CLOSE_WAIT) per connection.
                _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                if pending:
                    await asyncio.wait(pending, timeout=HALF_CLOSED_GRACE_S)
            finally:
                for pump in pumps:
                    pump.cancel()
                for pump in pumps:
                    with contextlib.suppress(BaseException):
                        await pump
                up_writer.close()
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _wait_open(self, src: str, dst: str) -> None:
        if src == UNKNOWN:
            # A connection we could not attribute: cut only if every source is cut to dst.
            while self.network.cut and all(s == dst or b != dst for s, b in self.network.cut):
                await self.network.changed.wait()
            return
        await self.network.wait_open(src, dst)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, src: str, dst: str
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS_MAX)

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                await self.network.wait_open(src, dst)
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                await self.network.wait_open(src, dst)
                writer.write(data)
                await writer.drain()

        delivery = asyncio.ensure_future(deliver())
        try:
            while True:
                await self.network.wait_open(src, dst)
                data = await reader.read(CHUNK_BYTES)
                due = time.monotonic() + self.network.delay_s.get((src, dst), 0.0)
                await queue.put((due, data))
                if not data:
                    break
            await delivery
        finally:
            delivery.cancel()
            with contextlib.suppress(BaseException):
                await delivery
            writer.close()


# ---------------------------------------------------------------------- identification


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the 127.0.0.1 TCP socket local_port -> remote_port (IPv4)."""
    want_local = f"{local_port:04X}"
    want_remote = f"{remote_port:04X}"
    try:
        with open("/proc/net/tcp") as file:
            next(file)
            for line in file:
                parts = line.split()
                if parts[1].endswith(":" + want_local) and parts[2].endswith(":" + want_remote):
                    return parts[9]
    except OSError:
        return None
    return None


def owner_of(peer_port: int, proxy_port: int, pids: dict[str, int]) -> str:
    """Which of ``pids`` (name -> pid) owns the socket that connected from ``peer_port``
    to ``proxy_port``; ``UNKNOWN`` when none does (or /proc is not readable)."""
    inode = _socket_inode(peer_port, proxy_port)
    if inode is None:
        return UNKNOWN
    target = f"socket:[{inode}]"
    for name, pid in pids.items():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    return name
    return UNKNOWN
