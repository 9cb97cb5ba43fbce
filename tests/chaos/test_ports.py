"""One port allocator per process, never handing out a port twice: a chaos cluster
once got one port for two nodes ("every node needs its own Raft and gRPC address")
because it asked the OS twice and the OS handed a released port back."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

from coordinator.runtime.local_cluster import PortAllocator, free_ports
from simulations.tier2.cluster import ChaosCluster
from tests.replication.helpers import free_port


def test_two_allocations_never_overlap() -> None:
    # The OS hands back ports it just released (here about one in seven over a
    # thousand picks); the allocator must skip every one of them.
    taken: set[int] = set()
    for _ in range(100):
        ports = free_ports(20)
        assert len(set(ports)) == 20
        assert not taken & set(ports), sorted(taken & set(ports))
        taken |= set(ports)


def test_every_helper_shares_the_one_allocator() -> None:
    ports = [free_port() for _ in range(50)] + free_ports(50)
    assert len(set(ports)) == 100


class _Reusing:
    """A fake OS that hands out 5000, 5001, 5002 and then starts over: what bind(0)
    may do after the sockets are closed."""

    def __init__(self) -> None:
        self.cycle = itertools.cycle([5000, 5001, 5002, 5000, 5003, 5004, 5001, 5005, 5006])
        self.open = 0

    def bind(self) -> socket.socket:
        port = next(self.cycle)
        owner = self

        class Fake:
            def getsockname(self) -> tuple[str, int]:
                return ("127.0.0.1", port)

            def close(self) -> None:
                owner.open -= 1

        self.open += 1
        return Fake()  # type: ignore[return-value]


def test_a_port_the_os_hands_back_is_skipped() -> None:
    os_ = _Reusing()
    allocator = PortAllocator(bind=os_.bind)
    first = allocator.take(2)
    second = allocator.take(3)
    third = allocator.take(2)
    assert first == [5000, 5001]
    assert second == [5002, 5003, 5004]
    assert third == [5005, 5006]
    assert os_.open == 0  # every socket was closed


def test_chaos_clusters_never_share_a_port(tmp_path: Path) -> None:
    def ports(cluster: ChaosCluster) -> list[int]:
        out = [c.raft_port for c in cluster.coordinators.values()]
        out += [c.grpc_port for c in cluster.coordinators.values()]
        # (0: an agent that only connects out serves nothing)
        out += [a.grpc_port for a in cluster.agents.values() if a.grpc_port]
        return out + [p.listen_port for p in cluster.proxies]

    seen: list[int] = []
    for i in range(10):
        cluster = ChaosCluster(tmp_path / str(i), nodes=5, participants=8)
        mine = ports(cluster)
        assert len(set(mine)) == len(mine), "one cluster got a port twice"
        seen += mine
    assert len(set(seen)) == len(seen), "two clusters of one process got one port"
