"""Where the `concord` command line finds the cluster, when no flag says.

In order: ``--coordinators``, then ``CONCORD_COORDINATORS`` (comma-separated gRPC
addresses), then the *context* that ``concord cluster up`` writes once its nodes are
up (like a kubeconfig context): a TOML file with the cluster's addresses and the
directory of its development certificates, at ``CONCORD_CONTEXT`` or else
``$XDG_CONFIG_HOME/concord/context.toml`` (``~/.config/concord/context.toml``). Its
TLS directory is used when neither ``--tls-dir`` nor any ``CONCORD_TLS_*`` variable
says otherwise. Without any of these: ``127.0.0.1:8001``, plaintext.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Context", "default_coordinators", "load", "path", "write"]

COORDINATORS_ENV = "CONCORD_COORDINATORS"
CONTEXT_ENV = "CONCORD_CONTEXT"
FALLBACK_COORDINATORS = "127.0.0.1:8001"


@dataclass(frozen=True)
class Context:
    coordinators: tuple[str, ...]
    tls_dir: Path | None
    cluster_dir: Path


def path(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get(CONTEXT_ENV):
        return Path(environ[CONTEXT_ENV])
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "concord" / "context.toml"


def write(
    coordinators: Sequence[str],
    tls_dir: Path | None,
    cluster_dir: Path,
    environ: Mapping[str, str] = os.environ,
) -> Path:
    """Make this cluster the current context (atomically: a reader sees the old file
    or the new one)."""
    target = path(environ)
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# written by `concord cluster up`: the cluster `concord` commands talk to",
        f"coordinators = [{', '.join(_quote(a) for a in coordinators)}]",
        f"cluster_dir = {_quote(str(cluster_dir.resolve()))}",
    ]
    if tls_dir is not None:
        lines.append(f"tls_dir = {_quote(str(tls_dir.resolve()))}")
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(target)
    return target


def load(environ: Mapping[str, str] = os.environ) -> Context | None:
    """The current context; None when there is none or it cannot be read (commands
    then fall back, and say where they dialled when that fails)."""
    try:
        data = tomllib.loads(path(environ).read_text())
        coordinators = tuple(str(a) for a in data["coordinators"])
        tls_dir = Path(data["tls_dir"]) if data.get("tls_dir") else None
        return Context(coordinators, tls_dir, Path(data["cluster_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def default_coordinators(environ: Mapping[str, str] = os.environ) -> str:
    """What ``--coordinators`` means when it is not given."""
    if environ.get(COORDINATORS_ENV):
        return environ[COORDINATORS_ENV]
    context = load(environ)
    if context is not None and context.coordinators:
        return ",".join(context.coordinators)
    return FALLBACK_COORDINATORS


def default_tls_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The context's certificates, unless the environment names some already."""
    if any(environ.get(f"CONCORD_TLS_{part}") for part in ("DIR", "CA", "CERT", "KEY")):
        return None
    context = load(environ)
    return None if context is None else context.tls_dir


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
