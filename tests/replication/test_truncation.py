"""pysyncobj's follower truncates entries it already acknowledged (docs/protocol.md, safety rule 7).

The follower's AppendEntries handler is driven directly with crafted messages (no
network, no timing): ``autoTick=False`` and the name-mangled handler. The stock
``SyncObj`` is expected to show the bug (``xfail(strict=True)``: if a pysyncobj release
fixes it, this test XPASSes, the run fails, and the guard can be revisited); our classes
must not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf

from coordinator.replication.node import _RaftNode
from coordinator.replication.raft_patch import TruncationSafeSyncObj
from tests.replication.helpers import free_port

STOCK = pytest.param(
    SyncObj,
    marks=pytest.mark.xfail(strict=True, reason="pysyncobj 0.3.17 truncates acknowledged entries"),
    id="stock-pysyncobj",
)
PATCHED = [pytest.param(TruncationSafeSyncObj, id="patched"), pytest.param(_RaftNode, id="node")]


class Follower:
    def __init__(self, cls: type[SyncObj]) -> None:
        self.raft = cls(
            f"127.0.0.1:{free_port()}",
            [f"127.0.0.1:{free_port()}"],
            SyncObjConf(autoTick=False),
        )
        self.leader = next(iter(self.raft.otherNodes))
        self.sent: list[dict[str, Any]] = []
        self.raft._SyncObj__transport.send = lambda node, message: self.sent.append(message)

    def deliver(self, message: dict[str, Any]) -> None:
        self.raft._SyncObj__onMessageReceived(self.leader, message)

    def log(self) -> list[tuple[int, int]]:
        return [(index, term) for _command, index, term in self.raft._SyncObj__raftLog[:]]

    def last_reply(self) -> dict[str, Any]:
        return self.sent[-1]


def append(
    term: int, prev: tuple[int, int], entries: list[tuple[int, int]], commit: int = 1
) -> dict[str, Any]:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": commit,
        "prevLogIdx": prev[0],
        "prevLogTerm": prev[1],
        "entries": [(b"\x01", index, entry_term) for index, entry_term in entries],
    }


@pytest.fixture(params=[STOCK, *PATCHED])
def follower(request: pytest.FixtureRequest) -> Iterator[Follower]:
    node = Follower(request.param)
    yield node
    node.raft._doDestroy()


@pytest.fixture(params=PATCHED)
def patched(request: pytest.FixtureRequest) -> Iterator[Follower]:
    node = Follower(request.param)
    yield node
    node.raft._doDestroy()


TEN = [(index, 1) for index in range(2, 12)]


@pytest.mark.parametrize(
    "resend",
    [
        pytest.param(append(1, (1, 0), TEN[:4]), id="shorter-batch-from-start"),
        pytest.param(append(1, (3, 1), TEN[2:5]), id="shorter-batch-from-middle"),
        pytest.param(append(1, (5, 1), []), id="stale-heartbeat"),
    ],
)
def test_resent_same_term_batch_keeps_acknowledged_entries(
    follower: Follower, resend: dict[str, Any]
) -> None:
    follower.deliver(append(1, (1, 0), TEN))
    assert follower.last_reply()["next_node_idx"] == 12  # entries 2..11 acknowledged
    follower.deliver(resend)
    assert follower.log() == [(1, 0), *TEN], "acknowledged entries were truncated"
    vouched = resend["entries"][-1][1] if resend["entries"] else resend["prevLogIdx"]
    assert follower.last_reply() == {
        "type": "next_node_idx",
        "next_node_idx": vouched + 1,
        "reset": False,
        "success": True,
    }


def test_conflicting_term_still_truncates_from_the_conflict(patched: Follower) -> None:
    patched.deliver(append(1, (1, 0), TEN))
    # A new leader (term 2) holds 2..5 from term 1, then its own 6..7.
    patched.deliver(append(2, (3, 1), [(4, 1), (5, 1), (6, 2), (7, 2)]))
    assert patched.log() == [(1, 0), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2)]
    assert patched.last_reply()["next_node_idx"] == 8


def test_commit_index_only_covers_entries_the_leader_vouched_for(patched: Follower) -> None:
    patched.deliver(append(1, (1, 0), TEN))
    # A leader of term 2 that so far only confirmed up to index 5 and has committed 9
    # (its own entries 6..9 are not yet here): the follower's 6..11 are unconfirmed.
    patched.deliver(append(2, (5, 1), [], commit=9))
    assert patched.raft.raftCommitIndex == 5
    assert patched.log() == [(1, 0), *TEN]


def test_mismatched_prev_is_refused_without_touching_the_log(patched: Follower) -> None:
    patched.deliver(append(1, (1, 0), TEN))
    patched.deliver(append(2, (5, 2), [(6, 2)]))
    assert patched.log() == [(1, 0), *TEN]
    assert patched.last_reply()["success"] is False
