"""A coordinator node's configuration: one table of settings, from a TOML file, the
environment, or flags.

Every setting of `concord serve` is a row of ``SETTINGS``, and each row is, by the same
name, a key of the config file (``heartbeat_ms = 50``), an environment variable
(``CONCORD_HEARTBEAT_MS=50``) and a flag (``--heartbeat-ms 50``). Precedence, lowest
first: the config file (``--config`` or ``CONCORD_CONFIG``), the environment, flags;
unset settings take their defaults. The one exception to "the same name" is the member
list: the key ``peers`` and ``CONCORD_PEERS`` (``;``-separated) are the flag ``--peer``,
given once per peer.

Every problem is a ``ConfigError`` whose message names where the bad value came from
and says what to fix; the CLI prints it on one line and exits 2.

A peer is written ``ID=RAFT_HOST:PORT,GRPC_HOST:PORT``, for example
``c2=127.0.0.1:7002,127.0.0.1:8002``.

The member list may name this node too (at its own addresses): then every node of a
cluster can share one file, each given its own ``node_id``, ``raft`` and ``grpc`` by the
environment or flags. The member list only bootstraps a new data dir: after that the
Raft log says who the members are (coordinator/replication/membership.py). A node that
joins a running cluster gives ``--join`` (gRPC addresses of members) instead of
``--peer`` and learns the members from the cluster.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.audit.log import AUDIT_RECORDS_MAX
from coordinator.replication.node import NodeAddress, RaftTiming
from coordinator.runtime.logfmt import FORMATS
from coordinator.security.identity import Role
from coordinator.security.transport import Transport, TransportError

ENV_PREFIX = "CONCORD_"
CONFIG_ENV = "CONCORD_CONFIG"  # the config file, when --config does not name one
SECRET_CHARS_MIN = 16
SECRET_DISTINCT_CHARS_MIN = 8
MEMBERS_MAX = 7  # as coordinator/replication/membership.py
TIMING_MS_MAX = 60_000  # a timing beyond a minute is a typo (seconds given as ms?)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")

# Where a value came from, lowest precedence first.
SOURCES = ("default", "file", "env", "flag")


class ConfigError(Exception):
    """The user's configuration is wrong; the message says how to fix it."""


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One setting of `concord serve`: the file key ``name``, the environment variable
    ``CONCORD_<NAME>``, the flag ``--name-with-dashes`` (or ``flag_name``).

    ``kind`` says what a value is: ``text``, ``address`` (HOST:PORT), ``path``, ``ms``
    (whole milliseconds, 1..TIMING_MS_MAX), ``count`` (a positive whole number),
    ``switch`` (a TOML boolean; in the environment one of TRUE/FALSE), ``list`` (a TOML
    list of strings, or one string of ``separator``-separated items) or ``choice``."""

    name: str
    kind: str
    help: str
    metavar: str | None = None
    default: Any = None
    choices: tuple[str, ...] = ()
    separator: str = ","
    flag_name: str = ""
    port_zero: bool = False  # an address whose port may be 0 (any free port)
    secret: bool = False  # never printed

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


_TIMING = RaftTiming()

# Every setting of `concord serve`. A new one is a row here: its flag, file key and
# environment variable follow (tests/test_config_settings.py checks that no serve flag
# is missing from this table).
SETTINGS: tuple[Setting, ...] = (
    Setting(name="node_id", kind="text", metavar="ID", help="this node's id, e.g. c1"),
    Setting(name="raft", kind="address", metavar="HOST:PORT", help="this node's Raft address"),
    Setting(name="grpc", kind="address", metavar="HOST:PORT", help="this node's gRPC address"),
    Setting(
        name="peers",
        kind="list",
        flag_name="--peer",
        separator=";",
        metavar="ID=RAFT,GRPC",
        help="another node of the cluster; repeat per node (file: a list; env: ';'-separated)",
    ),
    Setting(
        name="join",
        kind="list",
        metavar="GRPC,...",
        help="join a running cluster: gRPC addresses of one or more members, instead of "
        "--peer (then `concord cluster add-node` on the cluster)",
    ),
    Setting(name="data_dir", kind="path", metavar="DIR", help="where this node keeps its Raft log"),
    Setting(
        name="new_cluster",
        kind="switch",
        help="the first start of a new cluster: its data dir may be empty (ignored once it "
        "holds a Raft log)",
    ),
    Setting(
        name="secret_file",
        kind="path",
        metavar="FILE",
        help="a file (mode 600) holding the cluster secret that authenticates Raft traffic",
    ),
    Setting(
        name="secret",
        kind="text",
        metavar="SECRET",
        secret=True,
        help="the cluster secret itself (as a flag visible to every user in the process "
        "list: prefer --secret-file or CONCORD_SECRET)",
    ),
    Setting(
        name="tls_dir",
        kind="path",
        metavar="DIR",
        help="TLS: a directory made by `concord certs init` holding this node's certificate",
    ),
    Setting(name="tls_ca", kind="path", metavar="FILE", help="TLS: the CA"),
    Setting(name="tls_cert", kind="path", metavar="FILE", help="TLS: this node's cert"),
    Setting(name="tls_key", kind="path", metavar="FILE", help="TLS: its key (mode 600)"),
    Setting(
        name="insecure",
        kind="switch",
        help="serve and dial in plaintext, without identities: anyone who reaches a port may "
        "do anything (development only)",
    ),
    Setting(
        name="election_timeout_min_ms",
        kind="ms",
        metavar="MS",
        default=_TIMING.election_timeout_min_ms,
        help="a follower that hears no leader for a random time between this and "
        "--election-timeout-max-ms starts an election",
    ),
    Setting(
        name="election_timeout_max_ms",
        kind="ms",
        metavar="MS",
        default=_TIMING.election_timeout_max_ms,
        help="see --election-timeout-min-ms",
    ),
    Setting(
        name="heartbeat_ms",
        kind="ms",
        metavar="MS",
        default=_TIMING.heartbeat_ms,
        help="how often the leader sends AppendEntries when idle; under a third of the "
        "election minimum",
    ),
    Setting(
        name="metrics",
        kind="address",
        metavar="HOST:PORT",
        port_zero=True,
        help="serve Prometheus metrics on HOST:PORT/metrics",
    ),
    Setting(
        name="ui",
        kind="address",
        metavar="HOST:PORT",
        port_zero=True,
        help="serve the web dashboard on http://HOST:PORT/ (every page readable by whoever "
        "reaches it: bind it to loopback or a network only operators reach; actions need "
        "the token the node writes to DATA_DIR/ui-token)",
    ),
    Setting(
        name="audit_records_max",
        kind="count",
        metavar="N",
        default=AUDIT_RECORDS_MAX,
        help="audit records kept on this node; older ones are pruned behind an anchor",
    ),
    Setting(name="log_level", kind="choice", choices=LOG_LEVELS, default="INFO", help="log level"),
    Setting(name="log_format", kind="choice", choices=FORMATS, default="text", help="log format"),
    Setting(
        name="trace_otlp",
        kind="text",
        metavar="ENDPOINT",
        help="export OpenTelemetry spans to this OTLP/gRPC collector, e.g. "
        "http://127.0.0.1:4317 (needs the tracing extra)",
    ),
    Setting(name="trace_console", kind="switch", help="print OpenTelemetry spans on stdout"),
    Setting(
        name="trace_file",
        kind="path",
        metavar="PATH",
        help="append OpenTelemetry spans to PATH as JSON lines",
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}
FIELDS = tuple(BY_NAME)  # the keys a config file may hold
TIMING_FIELDS = ("election_timeout_min_ms", "election_timeout_max_ms", "heartbeat_ms")


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
    metrics: str | None = None  # HOST:PORT for /metrics
    ui: str | None = None  # HOST:PORT for the web dashboard (coordinator/ui)
    audit_records_max: int = AUDIT_RECORDS_MAX
    log_level: str = "INFO"
    log_format: str = "text"
    trace_otlp: str | None = None
    trace_console: bool = False
    trace_file: Path | None = None

    @property
    def nodes(self) -> tuple[NodeAddress, ...]:
        return (NodeAddress(node_id=self.node_id, raft=self.raft, grpc=self.grpc), *self.peers)

    def grpc_address_of(self) -> dict[str, str]:
        return {n.node_id: n.grpc for n in self.nodes}


@dataclass(frozen=True)
class Effective:
    """What each setting came to, and from where (one of SOURCES); unset ones absent."""

    config_file: Path | None
    values: dict[str, Any]
    sources: dict[str, str]


# CONCORD_* variables that are not node settings: the command line's own.
NOT_SETTINGS_ENV = (CONFIG_ENV, "CONCORD_COORDINATORS", "CONCORD_CONTEXT")


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """``CONCORD_*`` variables that name no setting (a typo is otherwise silently
    ignored), each with the nearest setting's variable when one is close."""
    known = [s.env for s in SETTINGS]
    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known and name not in NOT_SETTINGS_ENV:
            close = difflib.get_close_matches(name, known, n=1)
            found.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every row of SETTINGS as a flag; unset flags are None (so the environment and
    the file show through)."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"a TOML file with the settings below, by their names (env {CONFIG_ENV})",
    )
    for setting in SETTINGS:
        where = f"file key {setting.name}, env {setting.env}"
        if setting.default is not None:
            where += f"; default {setting.default}"
        options: dict[str, Any] = {
            "dest": setting.name,
            "default": None,
            "help": f"{setting.help} ({where})",
        }
        if setting.kind == "switch":
            options["action"] = "store_true"
        else:
            options["metavar"] = setting.metavar
            if setting.choices:
                options["choices"] = setting.choices
            if setting.flag_name == "--peer":
                options["action"] = "append"
        parser.add_argument(setting.flag, **options)


def effective(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Effective:
    """The settings from the file, the environment and the flags, each checked for its
    kind, the later source winning; defaults for the unset ones that have one."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        if setting.default is not None:
            values[setting.name], sources[setting.name] = setting.default, "default"
    path = getattr(args, "config", None) or environ.get(CONFIG_ENV) or None
    config_file = Path(path) if path else None
    if config_file is not None:
        for key, raw in _read_file(config_file).items():
            values[key] = _parse(BY_NAME[key], raw, f"{config_file}: {key}", typed=True)
            sources[key] = "file"
    for setting in SETTINGS:
        text = environ.get(setting.env)
        if text:  # an empty variable is an unset one
            values[setting.name] = _parse(setting, text, setting.env, typed=False)
            sources[setting.name] = "env"
    for setting in SETTINGS:
        raw = getattr(args, setting.name, None)
        if raw is not None:
            values[setting.name] = _parse(setting, raw, setting.flag, typed=False)
            sources[setting.name] = "flag"
    return Effective(config_file, values, sources)


def load(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> NodeConfig:
    return load_effective(effective(args, environ))


def load_effective(settings: Effective) -> NodeConfig:
    values, sources = settings.values, settings.sources
    missing = [BY_NAME[f].flag for f in ("node_id", "raft", "grpc", "data_dir") if f not in values]
    if missing:
        raise ConfigError(
            f"missing {', '.join(missing)} (or the same in --config / CONCORD_* environment "
            "variables)"
        )
    secret = _secret(values, sources)
    _check_secret_strength(secret)
    node_id = str(values["node_id"])
    # A joining node learns its peers: --join from a later source than the member list
    # (e.g. CONCORD_JOIN for a new node, given the file the members share) wins.
    members = _later(values, sources, "peers", "join", "a joining node learns its peers")
    join = tuple(values["join"]) if members == "join" else ()
    peers = (
        ()
        if members == "join"
        else _others(node_id, values["raft"], values["grpc"], values.get("peers", ()))
    )
    config = NodeConfig(
        node_id=node_id,
        raft=values["raft"],
        grpc=values["grpc"],
        data_dir=values["data_dir"],
        secret=secret,
        peers=peers,
        join=join,
        secret_on_command_line=sources.get("secret") == "flag",
        new_cluster=bool(values.get("new_cluster")),
        tls=_transport(values, node_id),
        timing=_timing(values),
        metrics=values.get("metrics"),
        ui=values.get("ui"),
        audit_records_max=values["audit_records_max"],
        log_level=values["log_level"],
        log_format=values["log_format"],
        trace_otlp=values.get("trace_otlp"),
        trace_console=bool(values.get("trace_console")),
        trace_file=values.get("trace_file"),
    )
    _check_members(config)
    return config


def _later(
    values: Mapping[str, Any], sources: Mapping[str, str], one: str, other: str, why: str
) -> str | None:
    """Of two settings that exclude each other, the one set by the later source (None
    when neither is set); both set by one source is a contradiction."""
    if values.get(one) and values.get(other):
        rank_one, rank_other = SOURCES.index(sources[one]), SOURCES.index(sources[other])
        if rank_one == rank_other:
            where = {"file": "the config file", "env": "the environment", "flag": "flags"}
            raise ConfigError(
                f"{where[sources[one]]} give both {one} and {other}: give one ({why})"
            )
        return one if rank_one > rank_other else other
    return one if values.get(one) else other if values.get(other) else None


def _secret(values: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """The secret itself or the one in ``secret_file``: whichever comes from the later
    source; both from one source is a contradiction."""
    chosen = _later(values, sources, "secret", "secret_file", "the secret or a file holding it")
    if chosen == "secret_file":
        return _read_secret_file(values["secret_file"])
    if chosen is None:
        raise ConfigError(
            "no cluster secret: Raft traffic is always authenticated and encrypted; "
            "pass --secret-file or set CONCORD_SECRET (the same on every node)"
        )
    return str(values["secret"])


def _parse(setting: Setting, raw: Any, where: str, *, typed: bool) -> Any:
    """``raw`` as ``setting`` takes it. ``typed``: from the TOML file, where numbers and
    switches have types of their own; otherwise text (environment, flags)."""
    kind = setting.kind
    if kind == "switch":
        if raw is True or raw is False:
            return raw
        if not typed and str(raw).strip().lower() in TRUE + FALSE:
            return str(raw).strip().lower() in TRUE
        expected = "true or false" if typed else f"one of {'/'.join(TRUE + FALSE)}"
        raise ConfigError(f"{where} {raw!r} is not a switch: give {expected}")
    if kind in ("ms", "count"):
        if isinstance(raw, bool) or (typed and not isinstance(raw, int)):
            raise ConfigError(f"{where} {raw!r} is not a whole number")
        try:
            number = int(str(raw).strip())
        except ValueError:
            unit = " of milliseconds" if kind == "ms" else ""
            raise ConfigError(f"{where} {raw!r} is not a whole number{unit}") from None
        if kind == "ms" and not 0 < number <= TIMING_MS_MAX:
            raise ConfigError(f"{where} {raw!r} must be between 1 and {TIMING_MS_MAX} ms")
        if kind == "count" and number <= 0:
            raise ConfigError(f"{where} {raw!r} must be positive")
        return number
    if kind == "list":
        items = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{where} {raw!r} is not a list of strings")
        parts = [p.strip() for item in items for p in item.split(setting.separator)]
        parts = [p for p in parts if p]
        if setting.name == "join":
            return tuple(_address(where, p) for p in parts)
        return tuple(parts)
    if not isinstance(raw, str):
        raise ConfigError(f"{where} {raw!r} is not a string")
    text = raw.strip()
    if not text:
        raise ConfigError(f"{where} is empty")
    if kind == "address":
        return _address(where, text, port_zero=setting.port_zero)
    if kind == "path":
        return Path(text)
    if kind == "choice" and text not in setting.choices:
        raise ConfigError(f"{where} {raw!r} is not one of {', '.join(setting.choices)}")
    return text


def _timing(settings: Mapping[str, Any]) -> RaftTiming:
    """The Raft timing, refused unless heartbeats fit three times into the shortest
    election timeout (a follower must hear several before it gives up on its leader)
    below the longest."""
    timing = RaftTiming(**{name: settings[name] for name in TIMING_FIELDS})
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


def _transport(settings: Mapping[str, Any], node_id: str) -> Transport:
    files = [settings.get(f"tls_{part}") for part in ("ca", "cert", "key")]
    insecure = bool(settings.get("insecure"))
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
        close = {k: difflib.get_close_matches(k, FIELDS, n=1) for k in unknown}
        hints = [f"{m[0]} (for {k})" for k, m in close.items() if m]
        hint = f"; did you mean {', '.join(hints)}?" if hints else ""
        raise ConfigError(
            f"config file {path}: unknown keys {unknown}{hint} (the keys are the serve flags' "
            "names with _ for -; see concord serve --help)"
        )
    return data


def _address(flag: str, text: str, *, port_zero: bool = False) -> str:
    host, sep, port = text.rpartition(":")
    lowest = 0 if port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
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


def _others(node_id: str, raft: str, grpc: str, peers: tuple[str, ...]) -> tuple[NodeAddress, ...]:
    """The peers but this node: a list of every member may name this node too (so that
    all nodes can share one config file, each with its own ``node_id``, ``raft`` and
    ``grpc``), at this node's own addresses."""
    others = []
    for text in peers:
        peer = _peer(text)
        if peer.node_id != node_id:
            others.append(peer)
        elif (peer.raft, peer.grpc) != (raft, grpc):
            raise ConfigError(
                f"--peer {text!r} names this node ({node_id}) at other addresses than its "
                f"--raft {raft} and --grpc {grpc}"
            )
    return tuple(others)


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
