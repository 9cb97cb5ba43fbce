"""The serializability checker, shown to fail on each anomaly it names and to pass
serial histories (including ones it sees only in part)."""

from __future__ import annotations

from participant_sdk.isolation import NEVER_WRITTEN, Version
from simulations.serializability import Observed, check_serializable

X, Y = ("a", "x"), ("b", "y")


def txn(txn_id: str, reads=None, writes=None, scans=None, committed=True) -> Observed:  # type: ignore[no-untyped-def]
    return Observed(
        txn_id=txn_id,
        committed=committed,
        reads=reads or {},
        writes=writes or {},
        scans=scans or {},
    )


def test_a_serial_history_passes() -> None:
    history = [
        txn("t1", reads={X: NEVER_WRITTEN}, writes={X: 1}),
        txn("t2", reads={X: Version(1, "t1"), Y: NEVER_WRITTEN}, writes={X: 2, Y: 1}),
        txn("t3", reads={X: Version(2, "t2"), Y: Version(1, "t2")}),
        txn("t4", reads={X: Version(2, "t2")}, writes={X: None}),  # seq unknown
    ]
    assert check_serializable(history) == []


def test_a_lost_update_is_named() -> None:
    history = [
        txn("t1", reads={X: NEVER_WRITTEN}, writes={X: 1}),
        txn("t2", reads={X: NEVER_WRITTEN}, writes={X: 2}),
    ]
    [lost, cycle] = check_serializable(history)
    assert lost.startswith("lost update: t1, t2 all read a:x at version 0")
    assert cycle.startswith("G-single") and "t1 -ww-> t2" in cycle and "t2 -rw-> t1" in cycle


def test_write_skew_is_g2() -> None:
    history = [
        txn("t1", reads={X: NEVER_WRITTEN, Y: NEVER_WRITTEN}, writes={X: 1}),
        txn("t2", reads={X: NEVER_WRITTEN, Y: NEVER_WRITTEN}, writes={Y: 1}),
    ]
    [anomaly] = check_serializable(history)
    assert anomaly.startswith("G2 write skew")


def test_read_skew_across_participants_is_g_single() -> None:
    # t2 moves money from x (at a) to y (at b); t3 sees y before and x after it
    history = [
        txn("t2", reads={X: NEVER_WRITTEN, Y: NEVER_WRITTEN}, writes={X: 1, Y: 1}),
        txn("t3", reads={X: Version(1, "t2"), Y: NEVER_WRITTEN}),
    ]
    [anomaly] = check_serializable(history)
    assert anomaly.startswith("G-single") and "b:y read v0, next v1" in anomaly


def test_circular_information_flow_is_g1c() -> None:
    history = [
        txn("t1", reads={Y: Version(1, "t2")}, writes={X: 1}),
        txn("t2", reads={X: Version(1, "t1")}, writes={Y: 1}),
    ]
    [anomaly] = check_serializable(history)
    assert anomaly.startswith("G1c")


def test_an_aborted_read_is_g1a() -> None:
    history = [
        txn("t1", writes={X: 1}, committed=False),
        txn("t2", reads={X: Version(1, "t1")}),
    ]
    assert check_serializable(history) == [
        "G1a aborted read: t2 read a:x as written by t1, which aborted"
    ]


def test_a_phantom_under_a_scan_is_an_anti_dependency() -> None:
    # t1 counts the keys under "acct/" and writes the count to y; t2 inserts acct/9
    # and reads y as it was before t1: neither order explains both
    inserted = ("a", "acct/9")
    history = [
        txn("t1", scans={("a", "acct/"): 0}, reads={Y: NEVER_WRITTEN}, writes={Y: 2}),
        txn("t2", reads={inserted: NEVER_WRITTEN, Y: NEVER_WRITTEN}, writes={inserted: 1}),
    ]
    [anomaly] = check_serializable(history)
    assert anomaly.startswith("G2") and "scan a:acct/* at 0, acct/9 v1" in anomaly


def test_a_long_chain_is_checked_without_recursion() -> None:
    history = [txn("t0", reads={X: NEVER_WRITTEN}, writes={X: 1})]
    for i in range(1, 20_000):
        history.append(txn(f"t{i}", reads={X: Version(i, f"t{i - 1}")}, writes={X: i + 1}))
    assert check_serializable(history) == []
    history.append(txn("late", reads={X: Version(5, "t4")}, writes={X: 50_000}))
    assert any(a.startswith("lost update") for a in check_serializable(history))


def test_blind_adds_commute_even_in_opposite_orders() -> None:
    # t1 and t2 add to x (at a) and y (at b); a applied t1 first, b applied t2 first
    both = frozenset({X, Y})
    history = [
        Observed(txn_id="t1", committed=True, writes={X: 1, Y: 2}, adds=both),
        Observed(txn_id="t2", committed=True, writes={X: 2, Y: 1}, adds=both),
        txn("t3", reads={X: Version(2, "t2"), Y: Version(2, "t1")}),
    ]
    assert check_serializable(history) == []
    # without the knowledge that they commute, the same history is a write cycle
    plain = [txn("t1", writes={X: 1, Y: 2}), txn("t2", writes={X: 2, Y: 1})]
    assert check_serializable(plain)[0].startswith("G0")


def test_a_reader_inside_a_run_of_adds_saw_every_add_before_it() -> None:
    # t3 read x after t1's add (v1) and t2's (v2): it depends on both, so a t1 that
    # read t3's write is a cycle even though t3 did not read t1's version itself
    history = [
        Observed(
            txn_id="t1",
            committed=True,
            writes={X: 1},
            adds=frozenset({X}),
            reads={Y: Version(1, "t3")},
        ),
        Observed(txn_id="t2", committed=True, writes={X: 2}, adds=frozenset({X})),
        txn("t3", reads={X: Version(2, "t2")}, writes={Y: 1}),
    ]
    [anomaly] = check_serializable(history)
    assert anomaly.startswith("G1c") and "a:x v1 seen at v2" in anomaly


def test_a_plain_write_after_a_run_of_adds_follows_all_of_them() -> None:
    # t3 overwrote x after both adds; t1 read t3's y first: t3 -> t1 (wr) and t1 -> t3 (ww)
    history = [
        Observed(
            txn_id="t1",
            committed=True,
            writes={X: 1},
            adds=frozenset({X}),
            reads={Y: Version(1, "t3")},
        ),
        Observed(txn_id="t2", committed=True, writes={X: 2}, adds=frozenset({X})),
        txn("t3", reads={X: Version(2, "t2")}, writes={X: 3, Y: 1}),
    ]
    assert any(a.startswith("G1c") for a in check_serializable(history))
