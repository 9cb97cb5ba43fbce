"""The chaos agent's /branch operations over a real Participant (LMDB), the test playing
the leader: what the bank's checkers rely on (reads with versions, the values read over
every call, staged writes, the commit sequence each write installed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from coordinator.core.messages import Decide, Prepare, VoteReply
from coordinator.core.types import Decision, Kind
from participant_sdk import BranchClosed, LockConflict, Participant
from simulations.tier2.agent import Agent
from simulations.tier2.bank import BankConfig, plan_transfer


def _prepare(txn: str) -> Prepare:
    return Prepare(round_id=txn, participant_id="p1", session_id="s", term=1, kind=Kind.TXN)


def _decide(txn: str) -> Decide:
    return Decide(
        round_id=txn, participant_id="p1", decision=Decision.COMMIT, term=1, kind=Kind.TXN
    )


@pytest.fixture
def agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    agent = Agent(installed_path=tmp_path / "p1.installed.jsonl")
    participant = Participant(
        "p1", tmp_path / "p1", [], validate=agent.validate, on_decided=agent.on_decided
    )
    agent.participant = participant
    participant.start_in_thread()
    try:
        yield agent
    finally:
        participant.stop_in_thread()


def _votes(agent: Agent, *txns: str) -> dict[str, tuple[bool, str]]:
    assert agent.participant is not None
    replies = agent.participant.handle_messages([_prepare(t) for t in txns])
    return {r.round_id: (r.yes, r.reason) for r in replies if isinstance(r, VoteReply)}


def _commit(agent: Agent, *txns: str) -> None:
    assert all(yes for yes, _ in _votes(agent, *txns).values())
    assert agent.participant is not None
    agent.participant.handle_messages([_decide(t) for t in txns])


def _installed(agent: Agent, txn: str) -> dict[str, int]:
    return agent.installed.get(txn, {})


def test_reads_values_writes_and_installed_sequences(agent: Agent) -> None:
    opened = agent.run_ops(
        "open",
        [["get", "acct/0"], ["put", "acct/0", "100"], ["get", "acct/1"], ["put", "acct/1", "100"]],
        "yes",
    )
    assert opened["reads"] == {"acct/0": [0, ""], "acct/1": [0, ""]}
    assert opened["values"] == {"acct/0": None, "acct/1": None}
    _commit(agent, "open")
    assert _installed(agent, "open") == {"acct/0": 1, "acct/1": 1}

    read = agent.run_ops("t1", [["get", "acct/0"]], "yes")
    assert read["results"] == ["100"]
    wrote = agent.run_ops("t1", [["put", "acct/0", "95"]], "yes")
    # the last call reports everything the branch read, over all its calls
    assert wrote["reads"] == {"acct/0": [1, "open"]}
    assert wrote["values"] == {"acct/0": "100"}
    assert wrote["writes"] == {"acct/0": "95"}
    added = agent.run_ops("t2", [["add", "acct/1", -10, 0, None]], "yes")
    assert added["reads"] == {} and added["writes"] == {
        "acct/1": {"add": -10, "min": 0, "max": None}
    }
    _commit(agent, "t1", "t2")  # one batch: two commits, sequences 2 and 3
    assert _installed(agent, "t1") == {"acct/0": 2}
    assert _installed(agent, "t2") == {"acct/1": 3}

    # two adds to one key decided in one batch: the first one's version is overwritten
    # before on_decided runs, so its sequence is unknown (never guessed)
    agent.run_ops("t3", [["add", "acct/1", 1, None, None]], "yes")
    agent.run_ops("t4", [["add", "acct/1", 2, None, None]], "yes")
    _commit(agent, "t3", "t4")
    assert _installed(agent, "t3") == {}
    assert _installed(agent, "t4") == {"acct/1": 5}

    scan = agent.run_ops("r1", [["scan", "acct/"]], "yes")
    assert scan["results"] == [{"acct/0": "95", "acct/1": "93"}]
    assert scan["scans"] == {"acct/": 5}
    assert scan["reads"] == {"acct/0": [2, "t1"], "acct/1": [5, "t4"]}

    # a restarted agent still knows what the commits before it installed
    assert agent._installed_file is not None
    path = Path(agent._installed_file.name)
    with path.open("a") as file:
        file.write('["cut", {"acct')  # a line cut by a SIGKILL
    restarted = Agent(installed_path=path)
    assert restarted.installed == {
        "open": {"acct/0": 1, "acct/1": 1},
        "t1": {"acct/0": 2},
        "t2": {"acct/1": 3},
        "t3": {},
        "t4": {"acct/1": 5},
    }
    assert restarted._installed_file is not None
    restarted._installed_file.write(json.dumps(["t9", {"acct/0": 9}]) + "\n")
    restarted._installed_file.flush()  # the cut line before it did not swallow it:
    assert Agent(installed_path=path).installed["t9"] == {"acct/0": 9}


def test_a_stale_read_votes_no_and_a_told_no_votes_no(agent: Agent) -> None:
    agent.run_ops("open", [["put", "acct/0", "100"]], "yes")
    _commit(agent, "open")
    agent.run_ops("a", [["get", "acct/0"], ["put", "acct/0", "90"]], "yes")
    agent.run_ops("b", [["get", "acct/0"], ["put", "acct/0", "80"]], "yes")
    _commit(agent, "a")
    yes, reason = _votes(agent, "b")["b"]
    assert not yes and reason == "conflict: 'acct/0' changed since read (by txn 'a')"
    agent.run_ops("n", [["put", "acct/9", "1"]], "no")
    assert _votes(agent, "n")["n"] == (False, "told to vote no")


def test_a_branch_this_process_did_not_begin_is_not_resumed(agent: Agent) -> None:
    """After an agent restart, a transfer's write must not begin the branch afresh: the
    balance it writes was computed from a read the new branch never made."""
    with pytest.raises(BranchClosed, match="not open here"):
        agent.run_ops("t", [["put", "acct/0", "95"]], "yes", resume=True)
    agent.run_ops("t", [["get", "acct/0"]], "yes")
    assert agent.run_ops("t", [["put", "acct/0", "95"]], "yes", resume=True)["writes"] == {
        "acct/0": "95"
    }


def test_a_lease_refuses_another_branch_at_once(agent: Agent) -> None:
    agent.run_ops("audit", [["lock", "acct/0", "acct/1"]], "yes")
    with pytest.raises(LockConflict):
        agent.run_ops("t", [["lock", "acct/1"]], "yes")


def test_the_seed_fixes_the_bank_transfers() -> None:
    pids = ["p1", "p2", "p3", "p4"]

    def plans(seed: int) -> list[dict]:  # type: ignore[type-arg]
        rng = random.Random(seed)
        return [plan_transfer(rng, pids, BankConfig(accounts=10, hot_keys=2)) for _ in range(500)]

    assert plans(1) == plans(1) != plans(2)
    accounts = []
    for plan in plans(1):
        legs = plan["legs"]
        assert len(legs) in (2, 3)
        assert len({leg["participant"] for leg in legs}) == len(legs)
        assert sum(leg["delta"] for leg in legs) == 0
        assert legs[0]["delta"] < 0 and all(leg["delta"] > 0 for leg in legs[1:])
        accounts += [leg["account"] for leg in legs]
    assert {len(p["legs"]) for p in plans(1)} == {2, 3}
    assert {p["kind"] for p in plans(1)} == {"rmw", "add"}
    hot = sum(a in ("acct/0", "acct/1") for a in accounts) / len(accounts)
    assert 0.7 < hot < 0.95  # 80 % hot, plus the cold draws that land on a hot one
