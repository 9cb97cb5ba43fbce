"""The isolation core (participant_sdk/isolation.py) on its own: the Prepare check,
the lock table and adds, against a dict of committed state with versions."""

from __future__ import annotations

import pytest

from participant_sdk.isolation import (
    NEVER_WRITTEN,
    Add,
    BranchWork,
    Footprint,
    LockConflict,
    LockTable,
    Version,
    check,
)


class State:
    """Committed state with versions, as the store keeps it (tombstones included)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.versions: dict[str, Version] = {}
        self.seq = 0

    def commit(self, txn_id: str, writes: dict[str, bytes | None]) -> None:
        self.seq += 1
        for key, value in writes.items():
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = value
            self.versions[key] = Version(self.seq, txn_id)

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def version(self, key: str) -> Version:
        return self.versions.get(key, NEVER_WRITTEN)

    def newest_under(self, prefix: str, after_seq: int) -> tuple[str, Version] | None:
        for key, version in sorted(self.versions.items()):
            if key.startswith(prefix) and version.seq > after_seq:
                return key, version
        return None


def read(state: State, work: BranchWork, *keys: str) -> BranchWork:
    for key in keys:
        work.reads.setdefault(key, state.version(key))
    return work


def test_a_read_changed_since_is_a_conflict_naming_key_and_writer() -> None:
    state, locks = State(), LockTable()
    state.commit("init", {"stock": b"10"})
    mine = read(state, BranchWork(), "stock")
    mine.stage("stock", b"9")
    state.commit("other", {"stock": b"9"})
    assert (
        check("mine", mine, state, locks, 0)
        == "conflict: 'stock' changed since read (by txn 'other')"
    )


def test_reading_a_key_that_is_absent_then_inserted_is_a_conflict() -> None:
    state = State()
    mine = read(state, BranchWork(), "seat/1")
    state.commit("other", {"seat/1": b"bob"})
    assert "changed since read (by txn 'other')" in check("mine", mine, state, LockTable(), 0)


def test_a_delete_keeps_a_version_so_a_read_of_it_is_checked() -> None:
    state = State()
    state.commit("init", {"k": b"1"})
    mine = read(state, BranchWork(), "k")
    state.commit("deleter", {"k": None})
    assert "changed since read (by txn 'deleter')" in check("mine", mine, state, LockTable(), 0)


def test_a_phantom_under_a_scanned_prefix_is_a_conflict() -> None:
    state = State()
    state.commit("init", {"acct/1": b"5"})
    mine = BranchWork(scans={"acct/": state.seq})
    state.commit("other", {"acct/2": b"1", "zzz": b"1"})
    assert check("mine", mine, state, LockTable(), 0) == (
        "conflict: 'acct/2' under scanned 'acct/' changed since the scan (by txn 'other')"
    )
    outside = BranchWork(scans={"b/": 0})
    assert check("outside", outside, state, LockTable(), 0) == ""


@pytest.mark.parametrize(
    ("mine", "theirs", "conflict"),
    [
        (Footprint(reads=frozenset({"k"})), Footprint(reads=frozenset({"k"})), False),
        (Footprint(reads=frozenset({"k"})), Footprint(writes={"k": b"1"}), True),
        (Footprint(writes={"k": b"1"}), Footprint(reads=frozenset({"k"})), True),
        (Footprint(writes={"k": None}), Footprint(writes={"k": b"1"}), True),
        (Footprint(writes={"k": Add(delta=1)}), Footprint(writes={"k": Add(delta=-1)}), False),
        (Footprint(writes={"k": Add(delta=1)}), Footprint(reads=frozenset({"k"})), True),
        (Footprint(reads=frozenset({"k"})), Footprint(writes={"k": Add(delta=1)}), True),
        # an add to a key the branch also read is a plain write: no other add may pass
        (
            Footprint(reads=frozenset({"k"}), writes={"k": Add(delta=1)}),
            Footprint(writes={"k": Add(delta=1)}),
            True,
        ),
        (Footprint(scans=frozenset({"a/"})), Footprint(writes={"a/1": b"1"}), True),
        (Footprint(writes={"a/1": b"1"}), Footprint(scans=frozenset({"a/"})), True),
        (Footprint(reads=frozenset({"a/1"})), Footprint(scans=frozenset({"a/"})), False),
        (Footprint(scans=frozenset({"a/"})), Footprint(writes={"b/1": b"1"}), False),
    ],
)
def test_what_a_prepared_branch_holds_excludes(
    mine: Footprint, theirs: Footprint, conflict: bool
) -> None:
    locks = LockTable()
    locks.hold("theirs", theirs)
    reason = locks.conflict("mine", mine, now_ms=0)
    assert bool(reason) is conflict, reason
    if conflict:
        assert "theirs" in reason
    locks.release("theirs")
    assert locks.conflict("mine", mine, now_ms=0) == ""
    assert locks.prepared == {}


def test_a_branch_never_conflicts_with_itself() -> None:
    locks = LockTable()
    footprint = Footprint(reads=frozenset({"k"}), writes={"k": b"1"}, scans=frozenset({"k"}))
    locks.hold("t", footprint)
    assert locks.conflict("t", footprint, now_ms=0) == ""


def test_adds_are_bounded_against_the_worst_case_of_adds_in_doubt() -> None:
    state, locks = State(), LockTable()
    state.commit("init", {"stock": b"10"})
    locks.hold("t1", Footprint(writes={"stock": Add(delta=-6, min=0)}))
    locks.hold("t2", Footprint(writes={"stock": Add(delta=+5)}))  # might abort: not counted
    ok = BranchWork(writes={"stock": Add(delta=-4, min=0)})
    assert check("t3", ok, state, locks, 0) == ""
    too_much = BranchWork(writes={"stock": Add(delta=-5, min=0)})
    assert check("t4", too_much, state, locks, 0) == (
        "bound: 'stock' would go below min=0 (10 committed, -6 in doubt, -5 here)"
    )
    capped = BranchWork(writes={"stock": Add(delta=+1, max=15)})
    assert "would go above max=15 (10 committed, +5 in doubt, +1 here)" in check(
        "t5", capped, state, locks, 0
    )


def test_an_add_to_a_value_that_is_no_integer_votes_no() -> None:
    state = State()
    state.commit("init", {"name": b"alice"})
    work = BranchWork(writes={"name": Add(delta=1)})
    assert "does not hold an integer" in check("t", work, state, LockTable(), 0)


def test_adds_staged_twice_sum_and_keep_both_bounds() -> None:
    work = BranchWork()
    work.stage("n", Add(delta=-2, min=0))
    work.stage("n", Add(delta=-3, min=1, max=100))
    assert work.writes["n"] == Add(delta=-5, min=1, max=100)
    work.stage("v", b"7")
    work.stage("v", Add(delta=3))
    assert work.writes["v"] == b"10"
    with pytest.raises(ValueError, match=r"outside 0\.\.None"):
        work.stage("v", Add(delta=-11, min=0))


def test_leases_are_exclusive_no_wait_and_expire() -> None:
    locks = LockTable()
    locks.lease("a", ["x", "y"], now_ms=0, until_ms=1000)
    with pytest.raises(LockConflict, match="'y' is locked by txn 'a'"):
        locks.lease("b", ["z", "y"], now_ms=10, until_ms=1010)
    assert locks.leased("b") == set()  # all or none
    locks.lease("a", ["x"], now_ms=20, until_ms=1020)  # again: fine
    # a leased key makes another branch that touches it vote NO
    reason = locks.conflict("b", Footprint(reads=frozenset({"x"})), now_ms=30)
    assert reason == "conflict: 'x' is locked by active txn 'a' (lease)"
    assert locks.conflict("b", Footprint(reads=frozenset({"x"})), now_ms=1020) == ""
    locks.lease("b", ["x"], now_ms=1021, until_ms=2000)  # expired: free


def test_a_lease_is_refused_on_a_key_a_prepared_branch_holds() -> None:
    locks = LockTable()
    locks.hold("p", Footprint(reads=frozenset({"x"}), scans=frozenset({"s/"})))
    with pytest.raises(LockConflict, match="held \\(in doubt\\) by txn 'p'"):
        locks.lease("a", ["x"], now_ms=0, until_ms=100)
    with pytest.raises(LockConflict, match="under scanned 's/'"):
        locks.lease("a", ["s/1"], now_ms=0, until_ms=100)


def test_holding_drops_the_branch_own_leases() -> None:
    locks = LockTable()
    locks.lease("a", ["x"], now_ms=0, until_ms=100)
    locks.hold("a", Footprint(writes={"x": b"1"}))
    assert locks.leased("a") == set()
    locks.release("a")
    locks.lease("b", ["x"], now_ms=1, until_ms=100)
