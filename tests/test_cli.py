"""The `concord` CLI: dispatch, and one-line errors (never a traceback) for bad usage."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coordinator.runtime.cli import COMMANDS, EXIT_USAGE, main


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
