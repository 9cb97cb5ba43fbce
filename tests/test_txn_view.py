"""How `concord txn` and `status` show rounds: one word per outcome everywhere
(COMPENSATED in the list, the show and the JSON), enums without their prefix, JSON
with snake_case names and numbers as numbers, newest first, unique id prefixes."""

from __future__ import annotations

import json

import pytest

from concord.v1 import common_pb2, coordinator_pb2
from coordinator.runtime import txn_view
from coordinator.runtime.txn_view import IdError, resolve_prefix


def _saga(round_id: str, decision: int = common_pb2.DECISION_ABORT) -> coordinator_pb2.GetTxnReply:
    return coordinator_pb2.GetTxnReply(
        round_id=round_id,
        kind=common_pb2.KIND_SAGA,
        phase="DONE",
        decision=decision,
        deadline_ms=1_765_000_000_000,
        steps=[coordinator_pb2.SagaStepStatus(participant_id="p1", status="COMPENSATED")],
    )


def test_a_compensated_saga_reads_compensated_in_the_table_and_the_json() -> None:
    saga = _saga("trip-1")
    assert txn_view.decision_word(saga.kind, saga.decision) == "COMPENSATED"
    assert " COMPENSATED " in txn_view.row(saga)
    out = txn_view.round_json(saga)
    assert (out["kind"], out["decision"], out["phase"]) == ("SAGA", "COMPENSATED", "DONE")
    assert "KIND_" not in json.dumps(out) and "DECISION_" not in json.dumps(out)


@pytest.mark.parametrize(
    ("kind", "decision", "word"),
    [
        (common_pb2.KIND_TXN, common_pb2.DECISION_COMMIT, "COMMIT"),
        (common_pb2.KIND_TXN, common_pb2.DECISION_ABORT, "ABORT"),
        (common_pb2.KIND_SAGA, common_pb2.DECISION_COMMIT, "COMPLETED"),
        (common_pb2.KIND_TXN, common_pb2.DECISION_UNSPECIFIED, "-"),
        (common_pb2.KIND_UNSPECIFIED, common_pb2.DECISION_ABORT, "ABORT"),
    ],
)
def test_decision_words(kind: int, decision: int, word: str) -> None:
    assert txn_view.decision_word(kind, decision) == word


def test_json_numbers_are_numbers_and_names_snake_case() -> None:
    status = coordinator_pb2.ClusterStatusReply(
        node_id="c1",
        leader_id="c1",
        term=7,
        commit_index=12_345_678_901,
        members=[coordinator_pb2.ClusterMember(node_id="c1", address="a:1", reachable=True)],
    )
    out = txn_view.message_json(status)
    assert out["term"] == 7 and out["commit_index"] == 12_345_678_901
    assert out["applied_index"] == 0 and out["rounds_inflight"] == 0  # present, as numbers
    assert out["members"] == [{"node_id": "c1", "address": "a:1", "reachable": True}]
    assert not any(any(c.isupper() for c in key) for key in out)
    deadline = txn_view.round_json(_saga("s"))["deadline_ms"]
    assert deadline == 1_765_000_000_000 and isinstance(deadline, int)


def test_newest_first() -> None:
    rounds = [_saga(f"r{i}") for i in range(5)]  # as the cluster lists them: oldest first
    assert [r.round_id for r in txn_view.newest_first(rounds, 2)] == ["r4", "r3"]
    assert [r.round_id for r in txn_view.newest_first(rounds, 0)] == [
        f"r{i}" for i in (4, 3, 2, 1, 0)
    ]


def test_newest_first_by_begin_time_where_the_cluster_says() -> None:
    class Round:
        def __init__(self, round_id: str, begun: int) -> None:
            self.round_id, self.begun_ms = round_id, begun

    listed = [Round("b", 2), Round("a", 1), Round("c", 3)]
    assert [r.round_id for r in txn_view.newest_first(listed, 0)] == ["c", "b", "a"]
    assert txn_view.time_text(txn_view.begun_ms(listed[0])) == "1970-01-01 00:00:00"


def test_the_table_has_a_time_column() -> None:
    assert txn_view.HEADER.split()[-2:] == ["BEGUN", "(UTC)"]
    assert txn_view.time_text(0) == "-"
    assert txn_view.time_text(1_765_000_000_000) == "2025-12-06 05:46:40"


def test_id_prefixes() -> None:
    held = ["t-abc123", "t-abd456", "t-1", "t-10"]
    assert resolve_prefix("t-abc", held) == "t-abc123"
    assert resolve_prefix("t-1", held) == "t-1"  # an exact id wins over the ids it begins
    assert resolve_prefix("zzz", held) == "zzz"  # none: the cluster says what it knows
    with pytest.raises(
        IdError, match=r"id prefix 't-ab' is ambiguous: it begins t-abc123, t-abd456"
    ):
        resolve_prefix("t-ab", held)
    many = [f"x{i}" for i in range(8)]
    with pytest.raises(IdError, match=r"and 3 more; give more of it"):
        resolve_prefix("x", many)
    with pytest.raises(IdError, match="empty"):
        resolve_prefix("", held)
