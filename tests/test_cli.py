"""The `concord` CLI: dispatch, and one-line errors (never a traceback) for bad usage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.runtime.cli import COMMANDS, EXIT_USAGE, main
from tests.test_cli_cluster import concord


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("concord ")


@pytest.mark.parametrize(
    "argv",
    [[], ["--no-such-flag"], ["no-such-command"], ["version", "--no-such-flag"]],
)
def test_bad_usage_is_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("concord")


def test_every_command_is_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in COMMANDS)


def test_installed_entry_point_reports_bad_flag_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.runtime.cli", "--bogus"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == EXIT_USAGE
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_control_characters_from_others_reach_the_terminal_escaped(tmp_path: Path) -> None:
    """A name someone else chose (here a certificate file) with an escape sequence in
    it must not drive the operator's terminal."""
    from coordinator.security.certs import init_dir
    from coordinator.security.identity import Identity, Role

    directory = tmp_path / "certs"
    init_dir(directory, "c", [Identity("c", Role.NODE, "n1")])
    (directory / "node-n1.pem").rename(directory / "evil\x1b[2J\u202e.pem")
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.runtime.cli", "certs", "check", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "evil\\x1b[2J\\u202e.pem" in result.stdout


def test_a_missing_tls_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """From --tls-dir or CONCORD_TLS_DIR: the user's mistake, not a traceback."""
    env = {**os.environ, "CONCORD_CONTEXT": str(tmp_path / "no-context.toml")}
    missing = tmp_path / "nope"
    for flags, extra in (
        (["--tls-dir", str(missing)], {}),
        ([], {"CONCORD_TLS_DIR": str(missing)}),
    ):
        done = concord("status", "--coordinators", "127.0.0.1:1", *flags, env=env | extra)
        assert done.returncode == EXIT_USAGE, done
        assert done.stderr.strip() == f"concord: TLS directory {missing} does not exist", done


def test_a_context_whose_tls_directory_is_gone_says_so(tmp_path: Path) -> None:
    """A context left by a cluster since removed (`cluster up` in a temp dir, say)."""
    context = tmp_path / "context.toml"
    gone = tmp_path / "old-cluster" / "tls"
    context.write_text(
        f'coordinators = "127.0.0.1:1"\ntls_dir = "{gone}"\ncluster_dir = "{gone.parent}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    done = concord("status", env=env | {"CONCORD_CONTEXT": str(context)})
    assert done.returncode == EXIT_USAGE, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"names TLS directory {gone}, which does not exist" in lines[0]
