"""Helpers for tests/deploy: the deployment files cannot run here (no container runtime,
no Kubernetes, no systemd), so each command they run is put through the real `concord`
command line, with the environment and files they give it, inside a scratch directory
that stands for the container's (or host's) file system."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.runtime import cli
from coordinator.runtime import config as node_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
STRONG_SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Docker Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        value = environ.get(name, "")
        if op == ":?" and not value:
            raise AssertionError(f"${{{name}}} unset: {arg}")
        return value or (arg if op == ":-" else "")

    return re.sub(r"\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}", one, text)


@dataclass
class Machine:
    """A container's (or host's) file system, mapped into a scratch directory: each
    mount point (or the whole /) is a directory under ``root``."""

    root: Path
    mounts: dict[str, Path] = field(default_factory=dict)  # absolute path inside -> here

    def mount(self, inside: str, here: Path) -> None:
        self.mounts[inside.rstrip("/")] = here

    def path(self, inside: str | Path) -> Path:
        text = str(inside)
        assert text.startswith("/"), f"{text}: the deployment files use absolute paths"
        for point in sorted(self.mounts, key=len, reverse=True):
            if text == point or text.startswith(point + "/"):
                return self.mounts[point] / text[len(point) :].lstrip("/")
        return self.root / text.lstrip("/")


def concord_args(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` (without the leading ``concord``) as the real command line parses it;
    fails with the command line's own one-line message."""
    words = list(argv)
    assert words, "an empty concord command"
    chosen = words[0]
    assert chosen in cli.COMMANDS, f"concord has no command {chosen!r}: {shlex.join(words)}"
    try:
        return cli.build_parser(chosen).parse_args(words)
    except cli.UsageError as error:
        pytest.fail(f"concord {shlex.join(words)}: {error}")


def node_settings(
    args: argparse.Namespace, environ: Mapping[str, str], machine: Machine
) -> node_config.NodeConfig:
    """The node `concord serve` (or `concord health`) would run as, given ``args`` and
    ``environ`` inside ``machine``: every path setting read from the mapped place."""
    environ = dict(environ)
    if environ.get(node_config.CONFIG_ENV):
        environ[node_config.CONFIG_ENV] = str(machine.path(environ[node_config.CONFIG_ENV]))
    if getattr(args, "config", None) is not None:
        args.config = machine.path(args.config)
    try:
        settings = node_config.effective(args, environ)
        for setting in node_config.SETTINGS:
            if setting.kind == "path" and setting.name in settings.values:
                settings.values[setting.name] = machine.path(settings.values[setting.name])
        return node_config.load_effective(settings)
    except node_config.ConfigError as error:
        pytest.fail(f"concord serve would refuse this node: {error}")


def run_concord(argv: Sequence[str], machine: Machine) -> None:
    """Run a concord command that only writes files (certs init) for real, its paths
    mapped into ``machine``."""
    words = [str(machine.path(w)) if w.startswith("/") else w for w in argv]
    code = cli.main(words)
    assert code == 0, f"concord {shlex.join(argv)} failed ({code})"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            found.append((instruction.upper(), rest.strip()))
    return found


def exec_form(arguments: str) -> list[str]:
    """A Dockerfile JSON (exec-form) array."""
    import json

    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def systemd_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections and their settings (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}: {line!r}"
            values[key] = value
    return values


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def load_agent() -> Any:
    """deploy/agent.py as a module (it is a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_agent", DEPLOY / "agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
