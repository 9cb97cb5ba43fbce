"""Network namespaces as hosts, for tests/deploy/test_netns.py: each host is a namespace
with one address on a shared bridge, which lives in one more namespace (the agents' host).
Nothing is made in the machine's own namespace, and every name carries a per-run tag, so
parallel runs never collide; `Network.close` removes all of it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_S = 20.0


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces (run the tests as root)"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2) to create network namespaces"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip() or probe.returncode}"
    return None


class NetnsError(Exception):
    pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Network:
    """A bridge in the namespace ``hub`` (address ``hub_address``) and one namespace per
    host in ``hosts`` (name -> address), each linked to the bridge by a veth pair whose
    bridge-side end is named after the host."""

    def __init__(self, hosts: Mapping[str, str], hub: str, hub_address: str) -> None:
        self.tag = f"concord-{uuid.uuid4().hex[:8]}"
        self.hosts = dict(hosts)
        self.hub = hub
        self.made: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            self._open(hub_address)
        except BaseException:
            self.close()
            raise

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def _open(self, hub_address: str) -> None:
        hub = self.ns(self.hub)
        _ip("netns", "add", hub)
        self.made.append(hub)
        _ip("-n", hub, "link", "set", "lo", "up")
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "addr", "add", f"{hub_address}/24", "dev", "br0")
        _ip("-n", hub, "link", "set", "br0", "up")
        for host, address in self.hosts.items():
            ns = self.ns(host)
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", hub, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", hub, "link", "set", host, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def cut(self, host: str) -> None:
        """The host's only link goes down (its cable pulled)."""
        _ip("-n", self.ns(host), "link", "set", "eth0", "down")

    def restore(self, host: str) -> None:
        _ip("-n", self.ns(host), "link", "set", "eth0", "up")

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host`` (ip netns exec execs it: same process id)."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def start(
        self, host: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.command(host, argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def run(
        self, host: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(host, argv),
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> list[str]:
        """Stops every process this network started (each by its own id), then removes the
        namespaces; returns what could not be undone."""
        problems = []
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                problems.append(f"pid {process.pid} ignored SIGTERM for {STOP_S:.0f} s")
        for ns in reversed(self.made):
            try:
                _ip("netns", "del", ns)
            except NetnsError as error:
                problems.append(str(error))
        return problems
