"""deploy/agent.py, the example agent: a bad argument is one line and exit 2 (its real
work runs in docs/deploy.md's walkthrough, a test of its own)."""

from __future__ import annotations

import pytest

from tests.deploy.conftest import load_agent

CLUSTER = "--coordinators=127.0.0.1:1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["move", CLUSTER, "agent1:coins:lots"], "'agent1:coins:lots' is not AGENT:KEY:AMOUNT"),
        (["serve", CLUSTER, "--id", "agent1"], "the following arguments are required: --data-dir"),
        (["launch"], "invalid choice: 'launch'"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_agent().main(argv) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and message in errors[0], errors


def test_a_cluster_that_cannot_be_reached_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listens at the address: the transaction is not done, said in one line."""
    assert load_agent().main(["move", CLUSTER, "agent1:coins:-1", "agent2:coins:1"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("not done: "), errors
