"""The dashboard's pages as pure functions: a state built by applying entries, its
audit records derived as every node derives them, rendered to HTML."""

from __future__ import annotations

import pytest

from coordinator.audit.derive import derive
from coordinator.core.entries import (
    Ack,
    BeginSaga,
    BeginTxn,
    RecordAcks,
    RecordVotes,
    RegisterParticipant,
    RequestCommit,
    SagaStepSpec,
    Vote,
)
from coordinator.core.state import CoordinatorState
from coordinator.ui import render
from coordinator.ui.views import (
    ClusterView,
    FilterError,
    NodeView,
    RoundFilter,
    Sample,
    TermChange,
    ThroughputView,
    detail_of,
    intervals_of,
    parse_age,
    participants_of,
    rounds_of,
)

T0 = 1_760_000_000_000


def _cluster() -> tuple[CoordinatorState, list[dict[str, object]]]:
    """Three rounds: t-done (committed, acknowledged), t-doubt (seats voted YES, hotel
    not yet: in doubt), a saga still running."""
    state = CoordinatorState()
    records: list[dict[str, object]] = []
    entries = [
        RegisterParticipant(participant_id="seats", endpoint="127.0.0.1:9001", now_ms=T0),
        RegisterParticipant(participant_id="hotel", endpoint="127.0.0.1:9002", now_ms=T0),
        BeginTxn(txn_id="t-done", session_id="s1", participants=("seats", "hotel"),
                 timeout_ms=30_000, now_ms=T0 + 1000),
        RequestCommit(txn_id="t-done", now_ms=T0 + 1100),
        RecordVotes(votes=(Vote(round_id="t-done", participant_id="seats", yes=True),
                           Vote(round_id="t-done", participant_id="hotel", yes=True,
                                reason="room 12 held")), now_ms=T0 + 1200),
        RecordAcks(acks=(Ack(round_id="t-done", participant_id="seats"),
                         Ack(round_id="t-done", participant_id="hotel")), now_ms=T0 + 1300),
        BeginTxn(txn_id="t-doubt", session_id="s2", participants=("seats", "hotel"),
                 timeout_ms=30_000, now_ms=T0 + 2000),
        RequestCommit(txn_id="t-doubt", now_ms=T0 + 2100),
        RecordVotes(votes=(Vote(round_id="t-doubt", participant_id="seats", yes=True),),
                    now_ms=T0 + 2200),
        BeginSaga(saga_id="g-1", session_id="s3",
                  steps=(SagaStepSpec(participant_id="seats", action="hold"),
                         SagaStepSpec(participant_id="hotel", action="book")),
                  step_timeout_ms=10_000, now_ms=T0 + 3000),
    ]  # fmt: skip
    for index, entry in enumerate(entries, start=1):
        applied = state.apply(entry)
        assert applied.error is None, applied.error
        records += derive(index, entry, applied)
    return state, records


def test_rounds_in_doubt_first_then_newest_and_filters() -> None:
    state, _ = _cluster()
    now = T0 + 10_000
    rows, matched = rounds_of(state, RoundFilter(), now)
    assert [r.round_id for r in rows] == ["t-doubt", "g-1", "t-done"]
    assert matched == 3 and rows[0].in_doubt and rows[2].state == "COMMIT"
    only = rounds_of(state, RoundFilter(kind="SAGA"), now)[0]
    assert [r.round_id for r in only] == ["g-1"]
    assert [r.round_id for r in rounds_of(state, RoundFilter(state="COMMIT"), now)[0]] == ["t-done"]
    assert [r.round_id for r in rounds_of(state, RoundFilter(state="IN_DOUBT"), now)[0]] == [
        "t-doubt"
    ]
    recent = rounds_of(state, RoundFilter(age_s=8), now)[0]  # begun after T0 + 2000
    assert [r.round_id for r in recent] == ["t-doubt", "g-1"]
    html = render.rounds_page("c1", RoundFilter(kind="TXN"), rows, matched, now)
    assert html.index("t-doubt") < html.index("t-done")
    assert "in doubt" in html and 'data-live="/part/rounds?kind=TXN"' in html
    assert "<option selected>TXN</option>" in html


def test_round_page_timeline_votes_with_reasons_decision_and_acks() -> None:
    state, records = _cluster()
    mine = [r for r in records if r["round_id"] == "t-done"]
    detail = detail_of(state, "t-done", "c2", mine)
    html = render.round_page(detail, T0 + 5000)
    for text in ("txn_begun", "commit requested", "hotel voted YES: room 12 held",
                 "decided COMMIT", "seats acknowledged", "as node c2 applied it"):  # fmt: skip
        assert text in html, text
    assert [t.event for t in detail.timeline] == [
        "txn_begun", "commit_requested", "vote", "vote", "decision", "ack", "ack",
    ]  # fmt: skip


def test_saga_page_shows_its_steps() -> None:
    state, records = _cluster()
    detail = detail_of(state, "g-1", "c1", [r for r in records if r["round_id"] == "g-1"])
    html = render.round_part(detail, T0 + 5000)
    assert "Saga steps" in html and "hold" in html and "book" in html and "PENDING" in html
    assert "begun (saga) with seats, hotel" in html


def test_forgotten_round_says_so() -> None:
    state, _ = _cluster()
    html = render.round_page(detail_of(state, "nope", "c1", []), T0)
    assert "no longer holds this round" in html


def test_participants_registered_in_doubt_and_last_seen() -> None:
    state, _ = _cluster()
    rows = {p.participant_id: p for p in participants_of(state)}
    assert rows["seats"].endpoint == "127.0.0.1:9001"
    assert rows["seats"].in_doubt == ("t-doubt",) and rows["hotel"].in_doubt == ()
    assert rows["hotel"].last_seen_ms is not None
    html = render.participants_page("c1", list(rows.values()), T0 + 60_000)
    assert 'href="/round/t-doubt"' in html and "this dashboard only reads" in html
    assert rows["seats"].stream == ""  # a node that does not lead holds no streams


def test_participants_on_the_leader_show_its_streams() -> None:
    state, _ = _cluster()
    rows = {p.participant_id: p for p in participants_of(state, {"seats": True})}
    assert rows["seats"].stream == "open" and rows["hotel"].stream == "none"
    html = render.participants_part(list(rows.values()), T0)
    assert "<td>open</td>" in html and "<td>none</td>" in html


def test_cluster_page_names_leader_health_and_term_changes() -> None:
    view = ClusterView(
        node_id="c1", leader_id="c2", term=3, commit_index=40, applied_index=39,
        nodes=(
            NodeView(node_id="c1", grpc="127.0.0.1:1", reachable=True, answered=True, term=3,
                     commit_index=40, applied_index=39),
            NodeView(node_id="c2", grpc="127.0.0.1:2", reachable=True, answered=True, term=3),
            NodeView(node_id="c3", grpc="127.0.0.1:3", reachable=False, answered=False,
                     problem="NodeStatus: connection refused"),
        ),
        term_changes=(TermChange(at_ms=T0, leader="c2", term=3, previous="c1"),),
    )  # fmt: skip
    html = render.cluster_page(view)
    assert "<dd id=leader>c2</dd>" in html and "no answer" in html
    assert "connection refused" in html and "previous leader" in html


def test_everything_is_escaped() -> None:
    state = CoordinatorState()
    state.apply(BeginTxn(txn_id="<script>x</script>", session_id="s", participants=("a",),
                         timeout_ms=1000, now_ms=T0))  # fmt: skip
    rows, matched = rounds_of(state, RoundFilter(), T0)
    html = render.rounds_part(rows, matched, T0)
    assert "<script>x" not in html and "&lt;script&gt;x" in html


def test_throughput_intervals_from_metric_samples() -> None:
    samples = [
        Sample(at_ms=T0, decided=10, latency_sum_s=1.0, latency_count=10),
        Sample(at_ms=T0 + 5000, decided=20, latency_sum_s=1.5, latency_count=20),
        Sample(at_ms=T0 + 10_000, decided=20, latency_sum_s=1.5, latency_count=20),
    ]
    intervals = intervals_of(samples)
    assert [i.decided for i in intervals] == [0, 10]  # newest first
    assert intervals[1].per_s == 2.0 and intervals[1].mean_latency_ms == pytest.approx(50.0)
    assert intervals[0].mean_latency_ms is None
    html = render.throughput_page(ThroughputView(node_id="c1", intervals=intervals))
    assert "<svg" in html and "50.0" in html


def test_bad_filters_are_one_line_errors() -> None:
    assert parse_age("90") == 90 and parse_age("5m") == 300 and parse_age("") == 0
    with pytest.raises(FilterError, match="age 'soon'"):
        RoundFilter.parse({"age": "soon"})
    with pytest.raises(FilterError, match="kind 'NOPE'"):
        RoundFilter.parse({"kind": "nope"})
    with pytest.raises(FilterError, match="state 'MAYBE'"):
        RoundFilter.parse({"state": "maybe"})


def test_in_doubt_is_the_metrics_rule() -> None:
    from coordinator.runtime.metrics import in_doubt as metric_rule
    from coordinator.ui.views import in_doubt

    state, _ = _cluster()
    assert [in_doubt(r) for r in state.rounds.values()] == [
        metric_rule(r) for r in state.rounds.values()
    ]
    assert any(in_doubt(r) for r in state.rounds.values())


def test_actions_only_for_an_operator_and_behind_a_confirmation() -> None:
    state, _ = _cluster()
    doubt = detail_of(state, "t-doubt", "c1", [])
    assert "Abort…" not in render.round_page(doubt, T0)
    offered = render.round_page(doubt, T0, actions=True)
    assert 'href="/round/t-doubt/abort"' in offered and 'href="/round/t-doubt/retry"' in offered
    done = render.round_page(detail_of(state, "t-done", "c1", []), T0, actions=True)
    assert "/abort" not in done and "/retry" not in done  # nothing left to act on
    confirm = render.confirm_page("c1", "t-doubt", "abort", "FORM<TOKEN>")
    assert "method=post action='/round/t-doubt/abort'" in confirm
    assert "value='FORM&lt;TOKEN&gt;'" in confirm and "cancel" in confirm
    corner = render.who(offered, operator=False, can_log_in=True)
    assert "operator log in" in corner
    assert "<span class=ro>operator</span>" in render.who(offered, operator=True, can_log_in=True)


def test_an_escalated_step_offers_resolve_to_an_operator() -> None:
    from coordinator.ui.views import RoundDetail, StepView

    state, _ = _cluster()
    base = detail_of(state, "g-1", "c1", [])
    steps = (
        StepView(index=0, participant="seats", action="hold", status="ESCALATED", reason="x"),
        StepView(index=1, participant="hotel", action="book", status="FAILED", reason="y"),
    )
    detail = RoundDetail(round_id="g-1", node_id="c1", row=base.row, steps=steps)
    assert "Resolve…" not in render.round_part(detail, T0)
    offered = render.round_part(detail, T0, actions=True)
    assert offered.count("Resolve…") == 1 and 'href="/round/g-1/resolve?step=0"' in offered
    confirm = render.confirm_page("c1", "g-1", "resolve", "tok", step=0)
    assert "name=step value='0'" in confirm and "Resolve the step" in confirm


def test_only_a_round_not_done_is_refreshed() -> None:
    state, _ = _cluster()
    assert "data-live" in render.round_page(detail_of(state, "t-doubt", "c1", []), T0)
    assert "data-live" not in render.round_page(detail_of(state, "t-done", "c1", []), T0)
