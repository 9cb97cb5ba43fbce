"""Raft timing in a node's configuration: file < environment < flags, defaults when
unset, and a one-line ConfigError for values that cannot work."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from coordinator.replication.node import RaftTiming
from coordinator.runtime.config import ConfigError, add_arguments, load

SECRET = "0123456789abcdef0123"
BASE = ["--node-id=c1", "--raft=127.0.0.1:7001", "--grpc=127.0.0.1:8001", "--insecure"]


def _load(
    flags: list[str], environ: dict[str, str] | None = None, toml: str | None = None, *, tmp: Path
) -> RaftTiming:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    extra = []
    if toml is not None:
        path = tmp / "node.toml"
        path.write_text(toml)
        extra.append(f"--config={path}")
    args = parser.parse_args([*BASE, f"--data-dir={tmp / 'data'}", *extra, *flags])
    return load(args, {"CONCORD_SECRET": SECRET, **(environ or {})}).timing


def test_unset_timing_is_the_default(tmp_path: Path) -> None:
    assert _load([], tmp=tmp_path) == RaftTiming()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    toml = "election_timeout_min_ms = 400\nelection_timeout_max_ms = 900\nheartbeat_ms = 40\n"
    environ = {"CONCORD_ELECTION_TIMEOUT_MAX_MS": "800", "CONCORD_HEARTBEAT_MS": "50"}
    timing = _load(["--heartbeat-ms=60"], environ, toml, tmp=tmp_path)
    assert timing == RaftTiming(
        election_timeout_min_ms=400,  # file
        election_timeout_max_ms=800,  # environment over file
        heartbeat_ms=60,  # flag over both
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--election-timeout-min-ms=500", "--election-timeout-max-ms=500"], "must be below"),
        (["--election-timeout-min-ms=600", "--election-timeout-max-ms=400"], "must be below"),
        (
            [
                "--heartbeat-ms=100",
                "--election-timeout-min-ms=300",
                "--election-timeout-max-ms=600",
            ],
            "under a third",
        ),
        (["--heartbeat-ms=0"], "between 1 and"),
        (["--election-timeout-max-ms=90000000"], "between 1 and"),
    ],
)
def test_timing_that_cannot_work_is_refused(tmp_path: Path, flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(flags, tmp=tmp_path)


@pytest.mark.parametrize("value", ["300.5", "true", "'30ms'"])
def test_a_timing_that_is_not_whole_milliseconds_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="heartbeat"):
        _load([], toml=f"heartbeat_ms = {value}\n", tmp=tmp_path)


def test_environment_timing_must_be_a_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a whole number"):
        _load([], {"CONCORD_HEARTBEAT_MS": "30ms"}, tmp=tmp_path)
