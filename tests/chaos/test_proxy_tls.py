"""The nemesis's proxies carry mutual TLS end to end: gRPC over TLS through a Proxy, with
the identities checked by the endpoints (the proxy only sees ciphertext); a cut stalls
a TLS stream that completes after the heal; a connection dropped in the middle of a
TLS record fails cleanly (an RPC error, never a corrupted message) and the channel
reconnects with a new handshake."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from coordinator.runtime.local_cluster import free_ports
from coordinator.security.certs import init_dir
from coordinator.security.identity import Identity, Role
from coordinator.security.transport import Transport
from simulations.tier2.proxy import Network, Proxy

WAIT_S = 10.0
ECHO, STREAM = "/chaos.test.Echo/Echo", "/chaos.test.Echo/Stream"
MESSAGE_BYTES = 64 * 1024
STREAM_MESSAGES = 200  # 12.8 MB: far more than flow control lets be in flight at once
TLS_HEADER_BYTES = 5
TLS_APPLICATION_DATA = 23


def _certificates(tmp_path: Path) -> tuple[Path, Path]:
    """Our CA (server s1, client a) and another CA (a client of the same name)."""
    ours, other = tmp_path / "tls", tmp_path / "other"
    server, client = Identity("chaos", Role.NODE, "s1"), Identity("chaos", Role.CLIENT, "a")
    init_dir(ours, "chaos", [server, client])
    init_dir(other, "chaos", [Identity("chaos", Role.CLIENT, "a")])
    return ours, other


async def _server(transport: Transport) -> tuple[grpc.aio.Server, int]:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for index in range(STREAM_MESSAGES):
            yield bytes([index % 256]) * MESSAGE_BYTES

    handler = grpc.method_handlers_generic_handler(
        "chaos.test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.aio.server(options=transport.server_options())
    server.add_generic_rpc_handlers((handler,))
    port = transport.add_port(server, "127.0.0.1:0")
    await server.start()
    return server, port


@contextlib.asynccontextmanager
async def _setup(tmp_path: Path) -> AsyncIterator[tuple[Network, Proxy, Path, Path]]:
    ours, other = _certificates(tmp_path)
    server, port = await _server(Transport.from_dir(ours, Role.NODE, "s1"))
    network = Network()
    proxy = Proxy(network, src="a", dst="b", target_port=port, listen_port=free_ports(1)[0])
    await proxy.start()
    try:
        yield network, proxy, ours, other
    finally:
        await proxy.close()
        await server.stop(None)


def _client(
    tls_dir: Path, address: str, *, to: Role = Role.NODE, name: str = ""
) -> grpc.aio.Channel:
    return Transport.from_dir(tls_dir, Role.CLIENT, "a").aio_channel(address, to=to, name=name)


async def _echo(channel: grpc.aio.Channel, data: bytes, timeout_s: float = WAIT_S) -> bytes:
    reply: bytes = await channel.unary_unary(ECHO)(data, timeout=timeout_s, wait_for_ready=True)
    return reply


def test_tls_runs_end_to_end_through_the_proxy(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _setup(tmp_path) as (_, proxy, ours, other):
            async with _client(ours, proxy.address) as channel:
                assert await _echo(channel, b"hello") == b"hello"
            # The endpoints check each other through the proxy: a client of another CA,
            # a client expecting another server identity, a plaintext client: refused.
            refused = [
                _client(other, proxy.address),
                _client(ours, proxy.address, to=Role.PARTICIPANT, name="p1"),
                grpc.aio.insecure_channel(proxy.address),
            ]
            for channel in refused:
                async with channel:
                    with pytest.raises(grpc.aio.AioRpcError) as error:
                        await channel.unary_unary(ECHO)(b"x", timeout=WAIT_S)
                    assert error.value.code() is grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_a_cut_stalls_a_tls_stream_and_the_heal_delivers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _setup(tmp_path) as (network, proxy, ours, _):
            async with _client(ours, proxy.address) as channel:
                assert await _echo(channel, b"up") == b"up"
                for cut in (("a", "b"), ("b", "a")):
                    network.set_cut({cut})
                    call = asyncio.ensure_future(_echo(channel, b"held " + "".join(cut).encode()))
                    await asyncio.sleep(0.3)
                    assert not call.done(), f"{cut} is cut: nothing may get through"
                    network.heal()
                    assert await asyncio.wait_for(call, WAIT_S) == b"held " + "".join(cut).encode()
            # A new connection across a cut: its handshake waits for the heal.
            network.set_cut({("a", "b")})
            async with _client(ours, proxy.address) as channel:
                call = asyncio.ensure_future(_echo(channel, b"new"))
                await asyncio.sleep(0.3)
                assert not call.done()
                network.heal()
                assert await asyncio.wait_for(call, WAIT_S) == b"new"

    asyncio.run(scenario())


def test_a_dropped_connection_fails_cleanly_and_the_channel_reconnects(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _setup(tmp_path) as (_, proxy, ours, _):
            channel = _client(ours, proxy.address)
            try:
                stream = channel.unary_stream(STREAM)(b"", timeout=WAIT_S, wait_for_ready=True)
                first = await stream.read()
                assert first == bytes([0]) * MESSAGE_BYTES
                connections = proxy.connections
                await proxy.reset()  # while megabytes of records are in flight
                received = 1
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    while (message := await stream.read()) is not grpc.aio.EOF:
                        assert message == bytes([received % 256]) * MESSAGE_BYTES
                        received += 1
                assert failed.value.code() is grpc.StatusCode.UNAVAILABLE, failed.value
                assert received < STREAM_MESSAGES
                assert await _echo(channel, b"again") == b"again"
                assert proxy.connections > connections  # a new connection, a new handshake
            finally:
                await channel.close()

    asyncio.run(scenario())


class RecordCutter:
    """A TCP forwarder that knows TLS record boundaries (server -> client): once
    ``armed``, it forwards half of the next record and closes both sides. Only the
    first connection is cut; later ones are forwarded whole."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.armed = asyncio.Event()
        self.cut_done = asyncio.Event()
        self.cut_record = (0, 0)  # (content type, length) of the record cut
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        cutting = self.accepted == 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pumps = [
            asyncio.ensure_future(self._raw(reader, up_writer)),
            asyncio.ensure_future(
                self._records(up_reader, writer) if cutting else self._raw(up_reader, writer)
            ),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                with contextlib.suppress(BaseException):
                    await pump
            writer.close()
            up_writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _records(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            header = await reader.readexactly(TLS_HEADER_BYTES)
            length = int.from_bytes(header[3:5], "big")
            body = await reader.readexactly(length)
            if self.armed.is_set() and header[0] == TLS_APPLICATION_DATA and length > 2:
                writer.write(header + body[: length // 2])
                await writer.drain()
                self.cut_record = (header[0], length)
                self.cut_done.set()
                return  # both sides are closed now, half a record delivered
            writer.write(header + body)
            await writer.drain()


def test_a_tls_record_cut_in_half_fails_cleanly_and_the_channel_reconnects(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with _setup(tmp_path) as (_, proxy, ours, _):
            cutter = RecordCutter(proxy.listen_port)  # client -> cutter -> proxy -> server
            port = await cutter.start()
            try:
                async with _client(ours, f"127.0.0.1:{port}") as channel:
                    stream = channel.unary_stream(STREAM)(b"", timeout=WAIT_S, wait_for_ready=True)
                    assert await stream.read() == bytes([0]) * MESSAGE_BYTES
                    cutter.armed.set()
                    received = 1
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        while (message := await stream.read()) is not grpc.aio.EOF:
                            assert message == bytes([received % 256]) * MESSAGE_BYTES
                            received += 1
                    assert cutter.cut_done.is_set()
                    assert cutter.cut_record[0] == TLS_APPLICATION_DATA
                    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE, failed.value
                    assert received < STREAM_MESSAGES
                    assert await _echo(channel, b"again") == b"again"
            finally:
                await cutter.close()

    asyncio.run(scenario())
