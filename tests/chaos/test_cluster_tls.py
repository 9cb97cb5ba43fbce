"""The chaos harness runs mutual TLS by default, as users deploy: a development CA per
run, each node, each agent and each of the harness's clients with its own certificate;
``--insecure`` runs plaintext, said explicitly on every command line."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from coordinator.security.certs import identities_in
from coordinator.security.identity import Identity, Role
from coordinator.security.transport import Transport
from participant_sdk import ConcordClient, Unavailable
from simulations.tier2 import agent as chaos_agent
from simulations.tier2.cli import configure_chaos
from simulations.tier2.cluster import CLUSTER_NAME, ChaosCluster, child_env
from simulations.tier2.harness import http

WAIT_S = 60.0


def _flags(command: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in command if a.startswith("--") and "=" in a)


def _identity(pem_path: str | Path) -> Identity:
    found = identities_in(Path(pem_path).read_bytes())
    assert len(found) == 1, pem_path
    return found[0]


def test_every_process_and_client_has_its_own_certificate(tmp_path: Path) -> None:
    cluster = ChaosCluster(tmp_path / "cluster", nodes=3, participants=2)
    ca = str(cluster.tls_dir / "ca.pem")
    for node_id, coordinator in cluster.coordinators.items():
        command = coordinator.process.command
        flags = _flags(command)
        assert "--insecure" not in command
        assert flags["tls-ca"] == ca
        assert _identity(flags["tls-cert"]) == Identity(CLUSTER_NAME, Role.NODE, node_id)
        assert Path(flags["tls-key"]).stat().st_mode & 0o077 == 0
    for pid, agent in cluster.agents.items():
        env = agent.process.env
        assert "--insecure" not in agent.process.command
        assert env["CONCORD_TLS_CA"] == ca
        assert _identity(env["CONCORD_TLS_CERT"]) == Identity(CLUSTER_NAME, Role.PARTICIPANT, pid)
        assert Path(env["CONCORD_TLS_KEY"]).stat().st_mode & 0o077 == 0
    names = ["worker-0", "worker-1", "audit", "bank-open", "watch-c1", "status"]
    identities = [cluster.transport(Role.CLIENT, name).identity for name in names]
    assert identities == [Identity(CLUSTER_NAME, Role.CLIENT, name) for name in names]
    assert cluster.transport(Role.CLIENT, "audit") is cluster.transport(Role.CLIENT, "audit")


def test_insecure_is_plaintext_everywhere_and_said_explicitly(tmp_path: Path) -> None:
    cluster = ChaosCluster(tmp_path / "cluster", nodes=3, participants=2, insecure=True)
    assert not cluster.tls_dir.exists()
    for coordinator in cluster.coordinators.values():
        assert "--insecure" in coordinator.process.command
        assert not any(a.startswith("--tls-") for a in coordinator.process.command)
    for agent in cluster.agents.values():
        assert "--insecure" in agent.process.command
        assert not any(k.startswith("CONCORD_TLS_") for k in agent.process.env)
    assert not cluster.transport(Role.CLIENT, "worker-0").secure


def test_children_never_inherit_the_harness_tls_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONCORD_TLS_DIR", "/somewhere/else")
    monkeypatch.setenv("CONCORD_TLS_CERT", "/somewhere/else/x.pem")
    env = child_env({"CONCORD_TLS_CA": "/run/ca.pem"})
    assert "CONCORD_TLS_DIR" not in env and "CONCORD_TLS_CERT" not in env
    assert env["CONCORD_TLS_CA"] == "/run/ca.pem"
    assert env["PATH"]


def test_an_agent_without_a_certificate_refuses_to_start_unless_insecure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DIR", "CA", "CERT", "KEY"):
        monkeypatch.delenv(f"CONCORD_TLS_{name}", raising=False)
    with pytest.raises(SystemExit, match="--insecure"):
        chaos_agent.transport("p1", insecure=False)
    assert not chaos_agent.transport("p1", insecure=True).secure


def test_the_cli_runs_tls_unless_told_insecure() -> None:
    parser = argparse.ArgumentParser()
    configure_chaos(parser)
    assert not parser.parse_args(["run", "--out=x"]).insecure
    assert parser.parse_args(["run", "--insecure", "--out=x"]).insecure


async def _one_booking(cluster: ChaosCluster, client: ConcordClient, txn: str) -> None:
    async with client.transaction(cluster.participant_ids, timeout_s=10.0, txn_id=txn) as t:
        for pid in cluster.agents:
            await t.call(pid, "stage", {"writes": {f"seat/{pid}": txn}, "vote": "yes"})
    await client.applied(txn, timeout_s=WAIT_S)  # every participant has applied it


@pytest.mark.integration
@pytest.mark.parametrize("insecure", [False, True], ids=["tls", "insecure"])
def test_the_harness_cluster_commits_and_refuses_strangers(tmp_path: Path, insecure: bool) -> None:
    """Nodes and agents start, agents register, a transaction commits through the
    proxies; with TLS, a plaintext client and a client of another CA are refused."""

    async def scenario() -> None:
        cluster = ChaosCluster(tmp_path / "cluster", nodes=3, participants=2, insecure=insecure)
        try:
            await cluster.start(ready_timeout_s=WAIT_S)
            tls = cluster.transport(Role.CLIENT, "test")
            async with ConcordClient(cluster.client_addresses, tls=tls) as client:
                await _one_booking(cluster, client, "t1")
                for pid, agent in cluster.agents.items():
                    view = await http(agent.http_port, "/", timeout_s=10.0)
                    assert view["state"] == {f"seat/{pid}": "t1"}, view
            if not insecure:
                stranger = ChaosCluster(tmp_path / "other", nodes=3, participants=1)
                for tls in (Transport.insecure(), stranger.transport(Role.CLIENT, "test")):
                    addresses = cluster.client_addresses
                    async with ConcordClient(addresses, tls=tls, attempts_max=3) as client:
                        with pytest.raises(Unavailable):
                            await client.begin(["p1"], timeout_s=5.0, txn_id="t2")
        finally:
            await cluster.stop()

    asyncio.run(scenario())
