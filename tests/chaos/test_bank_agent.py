"""The chaos agent's ``ops`` action over a real Participant (LMDB), called as the leader
relays a call (``Participant.run_action``) and with the test playing the leader: what
the bank's checkers rely on (reads with versions, the values read over every call,
staged writes, the commit sequence each write installed)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from coordinator.core.messages import Decide, Prepare, VoteReply
from coordinator.core.types import Decision, Kind
from participant_sdk import Participant
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
        "p1",
        tmp_path / "p1",
        [],
        validate=agent.validate,
        actions=agent.actions(),
        on_decided=agent.on_decided,
    )
    agent.participant = participant
    participant.start_in_thread()
    try:
        yield agent
    finally:
        participant.stop_in_thread()


class Failed(Exception):
    pass


_CALLS: dict[tuple[int, str], int] = {}  # (participant, txn) -> calls made
_CALL_IDS = itertools.count()


def _ops(
    agent: Agent, txn: str, ops: list[list[object]], vote: str = "yes", calls_before: int = -1
) -> dict:  # type: ignore[type-arg]
    """One ``ops`` call of ``txn``, numbered as a client numbers its calls."""
    assert agent.participant is not None
    key = (id(agent.participant), txn)
    done = _CALLS.get(key, 0) if calls_before < 0 else calls_before
    payload = json.dumps({"ops": ops, "vote": vote}).encode()
    call_id = f"c{next(_CALL_IDS)}"  # a new id per call, as a client's
    result, error = agent.participant.run_action(txn, call_id, "ops", payload, done)
    if error:
        raise Failed(error)
    _CALLS[key] = done + 1
    return json.loads(result)  # type: ignore[no-any-return]


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
    opened = _ops(
        agent,
        "open",
        [["get", "acct/0"], ["put", "acct/0", "100"], ["get", "acct/1"], ["put", "acct/1", "100"]],
        "yes",
    )
    assert opened["reads"] == {"acct/0": [0, ""], "acct/1": [0, ""]}
    assert opened["values"] == {"acct/0": None, "acct/1": None}
    _commit(agent, "open")
    assert _installed(agent, "open") == {"acct/0": 1, "acct/1": 1}

    read = _ops(agent, "t1", [["get", "acct/0"]], "yes")
    assert read["results"] == ["100"]
    wrote = _ops(agent, "t1", [["put", "acct/0", "95"]], "yes")
    # the last call reports everything the branch read, over all its calls
    assert wrote["reads"] == {"acct/0": [1, "open"]}
    assert wrote["values"] == {"acct/0": "100"}
    assert wrote["writes"] == {"acct/0": "95"}
    added = _ops(agent, "t2", [["add", "acct/1", -10, 0, None]], "yes")
    assert added["reads"] == {} and added["writes"] == {
        "acct/1": {"add": -10, "min": 0, "max": None}
    }
    _commit(agent, "t1", "t2")  # one batch: two commits, sequences 2 and 3
    assert _installed(agent, "t1") == {"acct/0": 2}
    assert _installed(agent, "t2") == {"acct/1": 3}

    # two adds to one key decided in one batch: the first one's version is overwritten
    # before on_decided runs, so its sequence is unknown (never guessed)
    _ops(agent, "t3", [["add", "acct/1", 1, None, None]], "yes")
    _ops(agent, "t4", [["add", "acct/1", 2, None, None]], "yes")
    _commit(agent, "t3", "t4")
    assert _installed(agent, "t3") == {}
    assert _installed(agent, "t4") == {"acct/1": 5}

    scan = _ops(agent, "r1", [["scan", "acct/"]], "yes")
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
    _ops(agent, "open", [["put", "acct/0", "100"]], "yes")
    _commit(agent, "open")
    _ops(agent, "a", [["get", "acct/0"], ["put", "acct/0", "90"]], "yes")
    _ops(agent, "b", [["get", "acct/0"], ["put", "acct/0", "80"]], "yes")
    _commit(agent, "a")
    yes, reason = _votes(agent, "b")["b"]
    assert not yes and reason == "conflict: 'acct/0' changed since read (by txn 'a')"
    _ops(agent, "n", [["put", "acct/9", "1"]], "no")
    assert _votes(agent, "n")["n"] == (False, "told to vote no")


def test_a_branch_this_process_did_not_begin_is_not_resumed(agent: Agent) -> None:
    """After an agent restart, a transfer's write must not begin the branch afresh: the
    balance it writes was computed from a read the new branch never made."""
    with pytest.raises(Failed, match="not open here"):
        _ops(agent, "t", [["put", "acct/0", "95"]], "yes", calls_before=1)
    _ops(agent, "t", [["get", "acct/0"]], "yes", calls_before=0)
    assert _ops(agent, "t", [["put", "acct/0", "95"]], "yes", calls_before=1)["writes"] == {
        "acct/0": "95"
    }


def test_a_lease_refuses_another_branch_at_once(agent: Agent) -> None:
    _ops(agent, "audit", [["lock", "acct/0", "acct/1"]], "yes")
    refused = _ops(agent, "t", [["lock", "acct/1"]], "yes")
    assert "acct/1" in refused["conflict"]
    # Still open: the caller tries again once the lease ends.
    assert _ops(agent, "t", [["get", "acct/2"]], "yes")["results"] == [None]


def test_an_update_reads_and_writes_in_one_call_and_refuses_an_overdraft(agent: Agent) -> None:
    """A one-shot transfer leg: the balance is read through the branch (so its Prepare
    checks it) and the new one written; a source that would go below 0 refuses."""
    _ops(agent, "open", [["put", "acct/0", "100"]], "yes")
    _commit(agent, "open")
    leg = _ops(agent, "u1", [["update", "acct/0", -30, 0]], "yes")
    assert leg["results"] == [100] and leg["writes"] == {"acct/0": "70"}
    assert leg["reads"] == {"acct/0": [1, "open"]} and leg["values"] == {"acct/0": "100"}
    with pytest.raises(Failed, match="insufficient funds: acct/0 holds 100"):
        _ops(agent, "u2", [["update", "acct/0", -101, 0]], "yes")
    yes, reason = _votes(agent, "u2")["u2"]
    assert not yes and "insufficient funds" in reason
    with pytest.raises(Failed, match="acct/7 does not exist"):
        _ops(agent, "u3", [["update", "acct/7", 5, None]], "yes")


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
