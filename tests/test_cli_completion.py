"""`concord completion bash|zsh`: the script shtab makes from the command line's own
parser; bash sourcing it completes commands, actions and flags."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from coordinator.runtime.cli import main


def _complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` (the command line so far)."""
    line = " ".join(("concord", *words))
    array = " ".join(f"'{w}'" for w in ("concord", *words))
    program = (
        f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words)}; "
        f"COMP_LINE='{line}'; COMP_POINT={len(line)}; _shtab_concord; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_bash_completes_commands_actions_and_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "concord.bash"
    script.write_text(capsys.readouterr().out)
    assert _complete(script, "tx") == ["txn"]
    assert _complete(script, "txn", "") == ["list", "show", "abort", "retry", "resolve"]
    assert "--watch" in _complete(script, "txn", "list", "--")
    assert _complete(script, "completion", "") == ["bash", "zsh"]


def test_zsh_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef concord")
    assert "txn" in script and "--coordinators" in script


def test_an_unknown_shell_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "fish"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'fish'" in err
