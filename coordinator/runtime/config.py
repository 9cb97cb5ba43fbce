"""A coordinator node's configuration: from flags, a TOML file, or the environment.

Precedence, lowest first: the config file (``--config``), environment variables
(``CONCORD_*``), flags. Every problem is a ``ConfigError`` whose message says what to
fix; the CLI prints it on one line and exits 2.

A peer is written ``ID=RAFT_HOST:PORT,GRPC_HOST:PORT``, for example
``c2=127.0.0.1:7002,127.0.0.1:8002``.

The member list only bootstraps a new data dir: after that the Raft log says who the
members are (coordinator/replication/membership.py). A node that joins a running
cluster gives ``--join`` (gRPC addresses of members) instead of ``--peer`` and learns
the members from the cluster.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.replication.node import NodeAddress, RaftTiming
from coordinator.security.identity import Role
from coordinator.security.transport import Transport, TransportError

ENV_PREFIX = "CONCORD_"
# Raft timing, in milliseconds (docs/operations.md, "Elections and heartbeats").
TIMING_FIELDS = ("election_timeout_min_ms", "election_timeout_max_ms", "heartbeat_ms")
FIELDS = (
    "node_id",
    "raft",
    "grpc",
    "data_dir",
    "secret",
    "secret_file",
    "peers",
    "join",
    "tls_dir",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "insecure",
    "new_cluster",
    *TIMING_FIELDS,
)
SECRET_CHARS_MIN = 16
SECRET_DISTINCT_CHARS_MIN = 8
MEMBERS_MAX = 7  # as coordinator/replication/membership.py
TIMING_MS_MAX = 60_000  # a timing beyond a minute is a typo (seconds given as ms?)


class ConfigError(Exception):
    """The user's configuration is wrong; the message says how to fix it."""


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    node_id: str
    raft: str
    grpc: str
    data_dir: Path
    secret: str
    peers: tuple[NodeAddress, ...]
    join: tuple[str, ...] = ()  # gRPC addresses of members to learn the members from
    secret_on_command_line: bool = False  # --secret: readable in the process list
    # --new-cluster: this is the first start of a new cluster, an empty data dir is
    # expected. Without it (or --join) a node with no Raft log refuses to start.
    new_cluster: bool = False
    tls: Transport = field(default_factory=Transport.insecure)  # insecure: --insecure only
    timing: RaftTiming = field(default_factory=RaftTiming)

    @property
    def nodes(self) -> tuple[NodeAddress, ...]:
        return (NodeAddress(node_id=self.node_id, raft=self.raft, grpc=self.grpc), *self.peers)

    def grpc_address_of(self) -> dict[str, str]:
        return {n.node_id: n.grpc for n in self.nodes}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="a TOML file with the settings below"
    )
    parser.add_argument(
        "--node-id", dest="node_id", help="this node's id, e.g. c1 (env CONCORD_NODE_ID)"
    )
    parser.add_argument("--raft", help="this node's Raft address HOST:PORT (env CONCORD_RAFT)")
    parser.add_argument("--grpc", help="this node's gRPC address HOST:PORT (env CONCORD_GRPC)")
    parser.add_argument(
        "--peer",
        dest="peers",
        action="append",
        metavar="ID=RAFT,GRPC",
        help="another node of the cluster; repeat per node (env CONCORD_PEERS, ';'-separated)",
    )
    parser.add_argument(
        "--join",
        metavar="GRPC,...",
        help="join a running cluster: gRPC addresses of one or more members, instead of "
        "--peer (then `concord cluster add-node` on the cluster; env CONCORD_JOIN)",
    )
    parser.add_argument(
        "--data-dir", dest="data_dir", type=Path, help="where this node keeps its Raft log"
    )
    parser.add_argument(
        "--tls-dir",
        dest="tls_dir",
        type=Path,
        metavar="DIR",
        help="TLS: a directory made by `concord certs init` holding this node's certificate "
        "(env CONCORD_TLS_DIR)",
    )
    parser.add_argument("--tls-ca", dest="tls_ca", type=Path, metavar="FILE", help="TLS: the CA")
    parser.add_argument(
        "--tls-cert", dest="tls_cert", type=Path, metavar="FILE", help="TLS: this node's cert"
    )
    parser.add_argument(
        "--tls-key", dest="tls_key", type=Path, metavar="FILE", help="TLS: its key (mode 600)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve and dial in plaintext, without identities: anyone who reaches a port may "
        "do anything (development only)",
    )
    parser.add_argument(
        "--new-cluster",
        dest="new_cluster",
        action="store_true",
        help="the first start of a new cluster: its data dir may be empty (ignored once it "
        "holds a Raft log; env CONCORD_NEW_CLUSTER)",
    )
    defaults = RaftTiming()
    parser.add_argument(
        "--election-timeout-min-ms",
        dest="election_timeout_min_ms",
        type=int,
        metavar="MS",
        help="a follower that hears no leader for a random time between this and "
        "--election-timeout-max-ms starts an election "
        f"(default {defaults.election_timeout_min_ms}; env CONCORD_ELECTION_TIMEOUT_MIN_MS)",
    )
    parser.add_argument(
        "--election-timeout-max-ms",
        dest="election_timeout_max_ms",
        type=int,
        metavar="MS",
        help=f"see --election-timeout-min-ms (default {defaults.election_timeout_max_ms}; "
        "env CONCORD_ELECTION_TIMEOUT_MAX_MS)",
    )
    parser.add_argument(
        "--heartbeat-ms",
        dest="heartbeat_ms",
        type=int,
        metavar="MS",
        help="how often the leader sends AppendEntries when idle; under a third of the "
        f"election minimum (default {defaults.heartbeat_ms}; env CONCORD_HEARTBEAT_MS)",
    )
    parser.add_argument(
        "--secret-file",
        dest="secret_file",
        type=Path,
        metavar="FILE",
        help="a file (mode 600) holding the cluster secret that authenticates Raft traffic "
        "(env CONCORD_SECRET_FILE; or the secret itself in CONCORD_SECRET)",
    )
    parser.add_argument(
        "--secret",
        help="the cluster secret itself (visible to every user in the process list: "
        "prefer --secret-file or CONCORD_SECRET)",
    )


def load(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> NodeConfig:
    settings: dict[str, Any] = {}
    if args.config is not None:
        settings.update(_read_file(args.config))
    for name in FIELDS:
        value = environ.get(ENV_PREFIX + name.upper())
        if value:
            settings[name] = [p for p in value.split(";") if p] if name == "peers" else value
    for name in FIELDS:
        value = getattr(args, name, None)
        if value or (name in TIMING_FIELDS and value is not None):  # 0 is refused, not lost
            settings[name] = value
    missing = [f for f in ("node_id", "raft", "grpc", "data_dir") if not settings.get(f)]
    if missing:
        flags = ", ".join("--" + f.replace("_", "-") for f in missing)
        raise ConfigError(
            f"missing {flags} (or the same in --config / CONCORD_* environment variables)"
        )
    if settings.get("secret_file") and not getattr(args, "secret", None):
        settings["secret"] = _read_secret_file(Path(settings["secret_file"]))
    if not settings.get("secret"):
        raise ConfigError(
            "no cluster secret: Raft traffic is always authenticated and encrypted; "
            "pass --secret-file or set CONCORD_SECRET (the same on every node)"
        )
    _check_secret_strength(str(settings["secret"]))
    raft = _address("--raft", str(settings["raft"]))
    grpc = _address("--grpc", str(settings["grpc"]))
    peers = tuple(_peer(p) for p in settings.get("peers") or ())
    join = tuple(_address("--join", a.strip()) for a in _split(settings.get("join")))
    if join and peers:
        raise ConfigError("give --join or --peer, not both: a joining node learns its peers")
    config = NodeConfig(
        node_id=str(settings["node_id"]),
        raft=raft,
        grpc=grpc,
        data_dir=Path(settings["data_dir"]),
        secret=str(settings["secret"]),
        peers=peers,
        join=join,
        secret_on_command_line=bool(getattr(args, "secret", None)),
        new_cluster=_flag(settings.get("new_cluster")),
        tls=_transport(settings, str(settings["node_id"])),
        timing=_timing(settings),
    )
    _check_members(config)
    return config


def _timing(settings: Mapping[str, Any]) -> RaftTiming:
    """The Raft timing from the settings, each missing one at its default; refused
    unless heartbeats fit three times into the shortest election timeout (a follower
    must hear several before it gives up on its leader) below the longest."""
    defaults = RaftTiming()
    values = {}
    for name in TIMING_FIELDS:
        value = settings.get(name)
        if value is None or value == "":
            values[name] = getattr(defaults, name)
            continue
        flag = "--" + name.replace("_", "-")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{flag} {value!r} is not a whole number of milliseconds") from None
        if isinstance(value, bool) or not 0 < number <= TIMING_MS_MAX:
            raise ConfigError(f"{flag} {value!r} must be between 1 and {TIMING_MS_MAX} ms")
        values[name] = number
    timing = RaftTiming(**values)
    low, high = timing.election_timeout_min_ms, timing.election_timeout_max_ms
    if low >= high:
        raise ConfigError(
            f"--election-timeout-min-ms ({low}) must be below --election-timeout-max-ms "
            f"({high}): followers draw their timeout from that range so they do not all "
            "stand at once"
        )
    if timing.heartbeat_ms * 3 >= low:
        raise ConfigError(
            f"--heartbeat-ms ({timing.heartbeat_ms}) must be under a third of "
            f"--election-timeout-min-ms ({low}): a follower must miss several heartbeats "
            f"before it stands for election"
        )
    return timing


def _flag(value: Any) -> bool:
    return str(value or "").lower() in ("1", "true", "yes")


def _transport(settings: Mapping[str, Any], node_id: str) -> Transport:
    files = [settings.get(f"tls_{part}") for part in ("ca", "cert", "key")]
    insecure = _flag(settings.get("insecure"))
    try:
        if any(files):
            if not all(files):
                raise ConfigError("give all of --tls-ca, --tls-cert and --tls-key, or none")
            if insecure:
                raise ConfigError("--insecure and TLS files contradict each other: choose one")
            return Transport.from_files(*(Path(f) for f in files if f))
        if settings.get("tls_dir"):
            if insecure:
                raise ConfigError("--insecure and --tls-dir contradict each other: choose one")
            return Transport.from_dir(Path(settings["tls_dir"]), Role.NODE, node_id)
    except TransportError as error:
        raise ConfigError(f"TLS: {error}") from None
    if not insecure:
        raise ConfigError(
            "no TLS certificate: give --tls-dir (made by `concord certs init`) or "
            "--tls-ca/--tls-cert/--tls-key; or --insecure for a plaintext development node"
        )
    return Transport.insecure()


def _read_secret_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"secret file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read secret file {path}: {error}") from None
    if mode & 0o077:
        raise ConfigError(
            f"secret file {path} is readable by other users (mode {mode & 0o777:o}): "
            f"chmod 600 {path}"
        )
    return text


def _check_secret_strength(secret: str) -> None:
    if len(secret) < SECRET_CHARS_MIN or len(set(secret)) < SECRET_DISTINCT_CHARS_MIN:
        raise ConfigError(
            f"the cluster secret is too weak: at least {SECRET_CHARS_MIN} characters, "
            f"{SECRET_DISTINCT_CHARS_MIN} of them different (make one with "
            "`openssl rand -hex 32 > secret && chmod 600 secret`)"
        )


def _split(value: Any) -> list[str]:
    if not value:
        return []
    parts = value if isinstance(value, list) else [value]
    return [a for part in parts for a in str(part).split(",") if a.strip()]


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {unknown} (known: {list(FIELDS)})")
    return data


def _address(flag: str, text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {text!r} is not HOST:PORT (e.g. 127.0.0.1:7001)")
    return text


def _peer(text: str) -> NodeAddress:
    node_id, sep, addresses = text.partition("=")
    raft, comma, grpc = addresses.partition(",")
    if not sep or not node_id or not comma:
        raise ConfigError(f"--peer {text!r} is not ID=RAFT_HOST:PORT,GRPC_HOST:PORT")
    return NodeAddress(
        node_id=node_id, raft=_address("--peer", raft), grpc=_address("--peer", grpc)
    )


def _check_members(config: NodeConfig) -> None:
    ids = [n.node_id for n in config.nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"node ids must be unique, got {ids}")
    addresses = [a for n in config.nodes for a in (n.raft, n.grpc)]
    if len(set(addresses)) != len(addresses):
        raise ConfigError("every node needs its own Raft and gRPC address; some are listed twice")
    if len(config.nodes) > MEMBERS_MAX:
        raise ConfigError(
            f"a cluster has at most {MEMBERS_MAX} nodes; this one lists {len(config.nodes)}"
        )


def check_new_cluster_size(config: NodeConfig) -> None:
    """A cluster bootstrapped from flags has 1, 3 or 5 members (an even count adds no
    fault tolerance); other sizes arise only through membership changes."""
    if not config.join and len(config.nodes) not in (1, 3, 5):
        raise ConfigError(
            f"a new cluster has 1, 3 or 5 nodes; this one lists {len(config.nodes)} (grow or "
            f"shrink a running one with concord cluster add-node / remove-node)"
        )
