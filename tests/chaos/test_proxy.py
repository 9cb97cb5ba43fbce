"""The fault-injecting proxy: forwards, stalls a cut direction (and only that one),
delivers after the heal, and the Raft layout gives every pair exactly one proxied
connection whose dialler's identity matches what the accepting node knows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from simulations.tier2.cluster import ChaosCluster
from simulations.tier2.proxy import Network, Proxy, owner_of

WAIT_S = 5.0


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _proxy(network: Network, target: int) -> Proxy:
    from coordinator.runtime.local_cluster import free_ports

    proxy = Proxy(network, src="a", dst="b", target_port=target, listen_port=free_ports(1)[0])
    await proxy.start()
    return proxy


def test_cut_stalls_one_direction_and_heal_delivers() -> None:
    async def scenario() -> None:
        network = Network()
        server, port = await _echo_server()
        proxy = await _proxy(network, port)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        writer.write(b"one")
        assert await asyncio.wait_for(reader.readexactly(3), WAIT_S) == b"one"
        # b -> a cut: the request reaches the echo server, the echo does not come back
        network.set_cut({("b", "a")})
        writer.write(b"two")
        echoed = asyncio.ensure_future(reader.readexactly(3))
        await asyncio.sleep(0.3)
        assert not echoed.done()
        network.heal()
        assert await asyncio.wait_for(echoed, WAIT_S) == b"two"
        # a -> b cut, plus a new connection across it: nothing until the heal
        network.set_cut({("a", "b")})
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        writer2.write(b"new")
        pending = asyncio.ensure_future(reader2.readexactly(3))
        await asyncio.sleep(0.3)
        assert not pending.done()
        network.heal()
        assert await asyncio.wait_for(pending, WAIT_S) == b"new"
        writer.close()
        writer2.close()
        await proxy.close()
        server.close()

    asyncio.run(scenario())


def test_delay_is_added() -> None:
    async def scenario() -> None:
        network = Network()
        server, port = await _echo_server()
        proxy = await _proxy(network, port)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        network.set_delay({("a", "b"): 0.2})
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"x")
        await asyncio.wait_for(reader.readexactly(1), WAIT_S)
        assert loop.time() - started >= 0.19
        writer.close()
        await proxy.close()
        server.close()

    asyncio.run(scenario())


def test_connection_tracking_names_the_dialling_process(tmp_path: Path) -> None:
    async def scenario() -> None:
        network = Network()
        server, port = await _echo_server()
        from coordinator.runtime.local_cluster import free_ports

        holder: dict[str, str] = {}
        proxy = Proxy(network, dst="b", target_port=port, listen_port=free_ports(1)[0],
                      identify=lambda peer: holder.setdefault("who", "?"))  # fmt: skip
        script = (
            "import socket,sys;s=socket.create_connection(('127.0.0.1',int(sys.argv[1])));"
            "s.sendall(b'hi');s.recv(2);sys.stdin.read()"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(proxy.listen_port)], stdin=subprocess.PIPE
        )
        try:
            proxy.identify = lambda peer: holder.setdefault(
                "who", owner_of(peer, proxy.listen_port, {"me": os.getpid(), "kid": child.pid})
            )
            await proxy.start()
            for _ in range(100):
                if "who" in holder:
                    break
                await asyncio.sleep(0.05)
            assert holder.get("who") == "kid"
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.kill()
            child.wait()
            await proxy.close()
            server.close()

    asyncio.run(scenario())


def test_raft_layout_every_pair_dials_through_its_proxy(tmp_path: Path) -> None:
    cluster = ChaosCluster(tmp_path, nodes=5, participants=2)
    commands = {c.node_id: c.process.command for c in cluster.coordinators.values()}

    def flag(node_id: str, name: str) -> list[str]:
        return [a.split("=", 1)[1] for a in commands[node_id] if a.startswith(f"--{name}=")]

    identity = {n: flag(n, "raft")[0] for n in commands}
    raft_proxies = {p.listen_port: p for p in cluster.proxies if p.target_port in
                    {c.raft_port for c in cluster.coordinators.values()}}  # fmt: skip
    for node_id in commands:
        for peer in flag(node_id, "peer"):
            other, addresses = peer.split("=", 1)
            raft = addresses.split(",")[0]
            dials = identity[node_id] > raft  # pysyncobj's rule (transport._shouldConnect)
            if dials:
                proxy = raft_proxies[int(raft.rsplit(":", 1)[1])]
                assert (proxy.src, proxy.dst) == (node_id, other)
                assert f"127.0.0.1:{proxy.target_port}" == identity[other]
            else:
                # the other side dials us and sends its identity: we must know it by it
                assert raft == identity[other]
                assert identity[other] > next(
                    a.split("=", 1)[1].split(",")[0]
                    for a in flag(other, "peer")
                    if a.startswith(f"{node_id}=")
                )
    with contextlib.suppress(Exception):
        asyncio.run(cluster.stop())
