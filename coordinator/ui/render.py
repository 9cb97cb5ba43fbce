"""The dashboard's pages: pure functions from snapshots (coordinator/ui/views.py) to
HTML. Every value is escaped; pages link one stylesheet and one small script, both
served by the dashboard itself (no network, no build step).

A page's live part is a ``<div data-live="URL">``: the page's script (``LIVE_JS`` in
coordinator/ui/static.py) fetches URL (the same part, rendered alone) every few
seconds and swaps it in.
"""

from __future__ import annotations

import datetime
import html
import urllib.parse

from coordinator.ui.views import (
    STATES,
    AuditView,
    ClusterView,
    NodeView,
    ParticipantRow,
    RoundDetail,
    RoundFilter,
    RoundRow,
    StepView,
    ThroughputView,
)

PAGES = (
    ("/", "Cluster"),
    ("/rounds", "Rounds"),
    ("/participants", "Participants"),
    ("/audit", "Audit"),
    ("/throughput", "Throughput"),
)
KINDS = ("TXN", "SAGA", "ROLLBACK", "CHECKPOINT")
WHO = "<span class=ro>read-only</span>"  # the header's corner, until ``who`` says more
TABLE_INTERVALS = 12  # the throughput table's rows (the chart shows every interval)


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def when(ms: int | None) -> str:
    if not ms:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return f"<span class=t>{moment.strftime('%Y-%m-%d %H:%M:%S.')}{ms % 1000:03d}</span>"


def ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "-"
    seconds = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"<span class=t>{seconds // size}{unit} ago</span>"
    return f"<span class=t>{seconds}s ago</span>"


def page(title: str, node_id: str, here: str, body: str) -> str:
    links = " ".join(
        f'<a href="{path}"{" class=here" if path == here else ""}>{name}</a>'
        for path, name in PAGES
    )
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)} · Concord {e(node_id)}</title>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        '<link rel=stylesheet href="/static/style.css">'
        '<script src="/static/live.js" defer></script></head><body>'
        f"<header><b>Concord</b> <span class=node>node {e(node_id)}</span> <nav>{links}</nav>"
        f"{WHO}</header>"
        f"<main><h1>{e(title)}</h1>{body}</main></body></html>\n"
    )


def live(url: str, inner: str) -> str:
    return f'<div data-live="{e(url)}">{inner}</div>'


def table(head: tuple[str, ...], rows: list[str], empty: str) -> str:
    if not rows:
        return f"<p class=empty>{e(empty)}</p>"
    header = "".join(f"<th>{e(h)}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def badge(text: str, tone: str) -> str:
    return f"<span class='badge {tone}'>{e(text)}</span>"


def _tone(state: str) -> str:
    if state in ("COMMIT", "EXECUTE", "KEEP", "COMPLETED"):
        return "good"
    if state in ("ABORT", "REJECT", "DISCARD", "COMPENSATED"):
        return "bad"
    return "busy"


# ---------------------------------------------------------------------- cluster


def cluster_part(view: ClusterView) -> str:
    leader = view.leader_id or "none known"
    summary = (
        "<dl class=summary>"
        f"<dt>leader</dt><dd id=leader>{e(leader)}</dd>"
        f"<dt>term</dt><dd id=term>{view.term}</dd>"
        f"<dt>commit index</dt><dd>{view.commit_index}</dd>"
        f"<dt>applied index</dt><dd>{view.applied_index}</dd>"
        f"<dt>members</dt><dd>{len(view.nodes)}</dd>"
        f"<dt>term changes seen</dt><dd>{len(view.term_changes)}</dd></dl>"
    )
    rows = [_node_row(n, view.leader_id) for n in view.nodes]
    nodes = table(
        ("node", "gRPC", "health", "role", "term", "commit", "applied", "lag", "in flight",
         "in doubt", "escalated"),
        rows, "no members known",
    )  # fmt: skip
    changes = table(
        ("time (UTC)", "term", "leader", "previous leader"),
        [
            f"<tr><td>{when(c.at_ms)}</td><td>{c.term}</td><td>{e(c.leader)}</td>"
            f"<td>{e(c.previous or '-')}</td></tr>"
            for c in view.term_changes
        ],
        "no leader change recorded by this node",
    )
    return (
        f"{summary}<h2>Members</h2>{nodes}<h2>Leader changes (this node's local audit)</h2>"
        f"{changes}"
    )


def _node_row(node: NodeView, leader: str) -> str:
    if node.answered:
        health = badge("up", "good") if node.reachable else badge("up, no Raft link", "busy")
    else:
        health = badge("no answer", "bad")
    role = "leader" if node.node_id == leader else "follower"
    if not node.answered:
        cells = f"<td>{role}</td>" + "<td>-</td>" * 7
    else:
        lag = max(0, node.commit_index - node.applied_index)
        cells = (
            f"<td>{role}</td><td>{node.term}</td><td>{node.commit_index}</td>"
            f"<td>{node.applied_index}</td><td>{lag}</td><td>{node.rounds_inflight}</td>"
            f"<td>{node.rounds_in_doubt}</td><td>{node.rounds_escalated}</td>"
        )
    title = f' title="{e(node.problem)}"' if node.problem else ""
    return (
        f"<tr data-node={e(node.node_id)}><td>{e(node.node_id)}</td><td>{e(node.grpc)}</td>"
        f"<td{title}>{health}</td>{cells}</tr>"
    )


def cluster_page(view: ClusterView) -> str:
    return page("Cluster", view.node_id, "/", live("/part/cluster", cluster_part(view)))


# ---------------------------------------------------------------------- rounds


def rounds_part(rows: list[RoundRow], matched: int, now_ms: int) -> str:
    body = [_round_row(r, now_ms) for r in rows]
    shown = f"<p class=count>{matched} round(s) match"
    if matched > len(rows):
        shown += f"; the first {len(rows)} shown"
    shown += "</p>"
    head = ("", "round", "kind", "state", "participants", "begun (UTC)", "age", "decided (UTC)")
    return shown + table(head, body, "no round matches (the cluster keeps finished rounds a while)")


def _round_row(row: RoundRow, now_ms: int) -> str:
    flags = ""
    if row.in_doubt:
        flags += badge("in doubt", "warn")
    if row.escalated:
        flags += badge("escalated", "bad")
    link = f"/round/{urllib.parse.quote(row.round_id, safe='')}"
    cls = " class=attention" if row.attention else ""
    return (
        f"<tr{cls} data-round={e(row.round_id)}><td>{flags}</td>"
        f'<td><a href="{e(link)}">{e(row.round_id)}</a></td><td>{e(row.kind)}</td>'
        f"<td>{badge(row.state, _tone(row.state))}</td><td>{e(', '.join(row.participants))}</td>"
        f"<td>{when(row.begun_ms)}</td><td>{ago(row.begun_ms, now_ms)}</td>"
        f"<td>{when(row.decided_ms)}</td></tr>"
    )


def _select(name: str, options: tuple[str, ...], chosen: str) -> str:
    items = "".join(f"<option{' selected' if o == chosen else ''}>{e(o)}</option>" for o in options)
    return (
        f"<label>{name} <select name={name}><option value=''>any</option>{items}</select></label>"
    )


def rounds_page(
    node_id: str, flt: RoundFilter, rows: list[RoundRow], matched: int, now_ms: int
) -> str:
    age = f"{flt.age_s}s" if flt.age_s else ""
    form = (
        "<form class=filter method=get action=/rounds>"
        f"{_select('state', STATES, flt.state)}{_select('kind', KINDS, flt.kind)}"
        f"<label>participant <input name=participant value='{e(flt.participant)}' size=12>"
        f"</label><label>begun within <input name=age value='{e(age)}' size=5 "
        "placeholder='5m'></label><button>Filter</button> <a href=/rounds>clear</a></form>"
        "<p class=hint>In doubt and escalated rounds first, then newest first; "
        "refreshed every 2 s.</p>"
    )
    query = flt.query()
    url = "/part/rounds" + (f"?{query}" if query else "")
    return page("Rounds", node_id, "/rounds", form + live(url, rounds_part(rows, matched, now_ms)))


def round_part(detail: RoundDetail, now_ms: int, *, actions: bool = False) -> str:
    """``actions``: the viewer is an operator (links to the confirmations)."""
    row = detail.row
    if row is None:
        status = (
            "<p class=empty>The cluster no longer holds this round (finished and forgotten, "
            "or never begun); its audit records follow, if any.</p>"
        )
    else:
        flags = (badge("in doubt", "warn") if row.in_doubt else "") + (
            badge("escalated", "bad") if row.escalated else ""
        )
        status = (
            "<dl class=summary>"
            f"<dt>kind</dt><dd>{e(row.kind)}</dd>"
            f"<dt>state</dt><dd id=state>{badge(row.state, _tone(row.state))} {flags}</dd>"
            f"<dt>phase</dt><dd>{e(row.phase)}</dd>"
            f"<dt>session</dt><dd>{e(row.session_id or '-')}</dd>"
            f"<dt>begun</dt><dd>{when(row.begun_ms)} ({ago(row.begun_ms, now_ms)})</dd>"
            f"<dt>decided</dt><dd>{when(row.decided_ms)}</dd>"
            f"<dt>reason</dt><dd>{e(row.reason or '-')}</dd></dl>"
        )
    pending = "waiting" if row is not None and row.decided_ms is None else "no vote"
    saga = row is not None and row.kind == "SAGA"
    votes = table(
        ("participant", "vote", "reason", "acknowledged"),
        [
            f"<tr><td>{e(v.participant)}</td><td>"
            + (badge("YES", "good") if v.yes else badge("NO", "bad") if v.voted else pending)
            + f"</td><td>{e(v.reason or '-')}</td><td>{'yes' if v.acknowledged else 'no'}</td></tr>"
            for v in detail.votes
        ],
        "no participant",
    )
    if saga:  # a saga's participants run steps instead of voting
        votes = table(
            ("participant", "acknowledged"),
            [
                f"<tr><td>{e(v.participant)}</td><td>{'yes' if v.acknowledged else 'no'}</td></tr>"
                for v in detail.votes
            ],
            "no participant",
        )
    heading = "Acknowledgements" if saga else "Votes and acknowledgements"
    steps = ""
    if detail.steps:
        steps = "<h2>Saga steps</h2>" + table(
            ("step", "participant", "action", "status", "reason"),
            [
                f"<tr><td>{s.index}</td><td>{e(s.participant)}</td><td>{e(s.action)}</td>"
                f"<td>{badge(s.status, _tone_step(s.status))}{_resolve_link(detail, s, actions)}"
                f"</td><td>{e(s.reason or '-')}</td></tr>"
                for s in detail.steps
            ],
            "",
        )
    timeline = table(
        ("time (UTC)", "log index", "event", "what"),
        [
            f"<tr class=ev-{e(t.event)}><td>{when(t.at_ms)}</td>"
            f"<td>{t.index or 'local'}</td><td>{e(t.event)}</td><td>{e(t.text)}</td></tr>"
            for t in detail.timeline
        ],
        "no audit record names this round on this node",
    )
    offered = ""
    if actions and row is not None and row.phase != "DONE":
        quoted = e(urllib.parse.quote(detail.round_id, safe=""))
        links = [f'<a class=action href="/round/{quoted}/retry">Retry now…</a>']
        if row.decided_ms is None:
            links.insert(0, f'<a class=action href="/round/{quoted}/abort">Abort…</a>')
        offered = f"<p class=actions>Operator: {' '.join(links)}</p>"
    return (
        f"{status}{offered}<h2>{heading}</h2>{votes}{steps}"
        f"<h2>Timeline</h2><p class=hint>Each entry as node {e(detail.node_id)} applied it "
        "(times are the proposing leader's, from the entry).</p>"
        f"{timeline}"
    )


def _resolve_link(detail: RoundDetail, step: StepView, actions: bool) -> str:
    if not actions or step.status != "ESCALATED":
        return ""
    quoted = e(urllib.parse.quote(detail.round_id, safe=""))
    return f' <a class=action href="/round/{quoted}/resolve?step={step.index}">Resolve…</a>'


def _tone_step(status: str) -> str:
    return {"DONE": "good", "RESOLVED": "good", "FAILED": "bad", "ESCALATED": "bad"}.get(
        status, "busy"
    )


def round_page(detail: RoundDetail, now_ms: int, *, actions: bool = False) -> str:
    url = f"/part/round/{urllib.parse.quote(detail.round_id, safe='')}"
    inner = round_part(detail, now_ms, actions=actions)
    if detail.row is not None and detail.row.phase != "DONE":
        inner = live(url, inner)  # a finished round changes no more: not refreshed
    return page(f"Round {detail.round_id}", detail.node_id, "/rounds", inner)


# ---------------------------------------------------------------------- participants


def participants_part(rows: list[ParticipantRow], now_ms: int) -> str:
    body = [
        f"<tr data-participant={e(p.participant_id)}><td>{e(p.participant_id)}</td>"
        f"<td>{e(p.endpoint or 'not registered')}</td>"
        f"<td>{ago(p.last_seen_ms, now_ms)}</td><td>{p.rounds_open}</td>"
        f"<td>{_round_links(p.in_doubt)}</td><td>{e('; '.join(p.escalations) or '-')}</td>"
        f"<td>{e(p.stream or '-')}</td></tr>"
        for p in rows
    ]
    return table(
        (
            "participant",
            "endpoint",
            "last seen",
            "rounds open",
            "in doubt",
            "escalations",
            "leader's stream",
        ),
        body,
        "no participant registered",
    ) + (
        "<p class=hint>Endpoint 'attached': the participant only connects out, and the "
        "leader reaches it over the stream it opened. Leader's stream: whether the "
        "leader's stream to it is open now (shown on the leader only). "
        "Last seen: the newest retained round it voted or acknowledged in. "
        "Operator actions (abort, retry, resolve) are in the CLI: `concord txn abort|retry|"
        "resolve`; this dashboard only reads.</p>"
    )


def _round_links(ids: tuple[str, ...]) -> str:
    if not ids:
        return "-"
    return ", ".join(
        f'<a href="/round/{e(urllib.parse.quote(i, safe=""))}">{e(i)}</a>' for i in ids
    )


def participants_page(node_id: str, rows: list[ParticipantRow], now_ms: int) -> str:
    return page(
        "Participants",
        node_id,
        "/participants",
        live("/part/participants", participants_part(rows, now_ms)),
    )


# ---------------------------------------------------------------------- audit


def audit_page(view: AuditView) -> str:
    heads = table(
        ("node", "chain head (index.sub)", "head hash"),
        [
            f"<tr><td>{e(n.node_id)}</td><td>{e(n.audit_head or '-') if n.answered else '-'}</td>"
            f"<td><code>{e(n.audit_head_hash[:16]) if n.answered else e(n.problem)}</code>"
            "</td></tr>"
            for n in view.heads
        ],
        "no node",
    )
    v = view.verification
    if v is None:
        checked = "<p class=empty>not verified yet</p>"
    else:
        verdict = badge("intact", "good") if v.ok else badge("BROKEN", "bad")
        local = badge("intact", "good") if v.local_ok else badge("BROKEN", "bad")
        checked = (
            "<dl class=summary>"
            f"<dt>verified</dt><dd>{when(v.at_ms)}</dd>"
            f"<dt>log chain</dt><dd id=verdict>{verdict} {v.records} records, head "
            f"{e(v.head or '-')}</dd>"
            f"<dt>problem</dt><dd>{e(v.problem or '-')}</dd>"
            f"<dt>local chain</dt><dd>{local} {v.local_records} records</dd></dl>"
        )
    return page(
        "Audit chain",
        view.node_id,
        "/audit",
        f"<h2>Head per node</h2>{heads}<p class=hint>Nodes that applied the same entries "
        "hold the same head; one behind is still applying.</p>"
        f"<h2>Last verification on {e(view.node_id)}</h2>{checked}"
        "<p class=hint>This node re-reads and re-hashes its chain when this page is asked for "
        "(at most once a minute); `concord audit verify` checks every node.</p>",
    )


# ---------------------------------------------------------------------- throughput


def throughput_part(view: ThroughputView) -> str:
    if not view.intervals:
        return "<p class=empty>no samples yet: one every 5 s</p>"
    peak = max(i.per_s for i in view.intervals) or 1.0
    width = 600
    bar = width / max(1, len(view.intervals))
    bars = "".join(
        f"<rect x='{width - (n + 1) * bar:.1f}' y='{100 - 100 * i.per_s / peak:.1f}' "
        f"width='{max(1.0, bar - 1):.1f}' height='{100 * i.per_s / peak:.1f}'>"
        f"<title>{i.per_s:.2f}/s</title></rect>"
        for n, i in enumerate(view.intervals)
    )
    chart = (
        f"<svg class=chart viewBox='0 0 {width} 100' width='{width}' height='100' "
        f"role=img aria-label='decisions per second'>{bars}</svg>"
        f"<p class=hint>decisions per second, oldest left; peak {peak:.2f}/s</p>"
    )
    rows = [
        f"<tr><td>{when(i.end_ms)}</td><td>{i.seconds:.0f}</td><td>{i.decided}</td>"
        f"<td>{i.per_s:.2f}</td><td>"
        + ("-" if i.mean_latency_ms is None else f"{i.mean_latency_ms:.1f}")
        + "</td></tr>"
        for i in view.intervals[:TABLE_INTERVALS]
    ]
    return chart + table(
        ("until (UTC)", "seconds", "rounds decided", "per second", "mean latency (ms)"), rows, ""
    )


def throughput_page(view: ThroughputView) -> str:
    return page(
        "Throughput and latency",
        view.node_id,
        "/throughput",
        "<p class=hint>From this node's metrics (concord_rounds_decided_total, "
        "concord_decision_latency_seconds), sampled every 5 s over the last 10 minutes.</p>"
        + live("/part/throughput", throughput_part(view)),
    )


def error_page(node_id: str, status: int, message: str) -> str:
    return page(f"{status}", node_id, "", f"<p class=error>{e(message)}</p>")


# ---------------------------------------------------------------------- operators


def who(html_page: str, *, operator: bool, can_log_in: bool) -> str:
    """The header's corner: an operator's session, or how to get one."""
    if operator:
        corner = "<span class=ro>operator</span>"
    elif can_log_in:
        corner = "<span class=ro>read-only · <a href=/login>operator log in</a></span>"
    else:
        return html_page
    return html_page.replace(WHO, corner, 1)


def login_page(node_id: str, token_path: str) -> str:
    return page(
        "Operator log in",
        node_id,
        "",
        "<p>Operators may abort a round or have it retried now. The token is in "
        f"<code>{e(token_path)}</code> on the node's machine (readable by the node's "
        "user only); it changes at every start.</p>"
        "<form method=post action=/login><label>token <input name=token type=password "
        "size=48 autocomplete=off></label> <button>Log in</button></form>",
    )


def confirm_page(
    node_id: str, round_id: str, action: str, form_token: str, *, step: int = 0
) -> str:
    quoted = e(urllib.parse.quote(round_id, safe=""))
    if action == "resolve":
        what = (
            f"<p>Mark step {step} of saga <b>{e(round_id)}</b> resolved: you settled its "
            "effect by hand, and its compensation is not to be tried again? The saga then "
            "compensates the steps before it.</p>"
            f"<input type=hidden name=step value='{step}'>"
            "<label>note <input name=reason size=48 maxlength=200 "
            "placeholder='what was done, for the audit log'></label> "
        )
        button = "Resolve the step"
    elif action == "abort":
        what = (
            f"<p>Abort round <b>{e(round_id)}</b>? If it is still undecided it is decided "
            "ABORT for every participant; a decided round keeps its decision.</p>"
            "<label>reason <input name=reason size=48 maxlength=200 "
            "placeholder='recorded in the audit log'></label> "
        )
        button = "Abort the round"
    else:
        what = (
            f"<p>Resend now what round <b>{e(round_id)}</b> waits for (Prepare, decision or "
            "compensation), instead of after its backoff?</p>"
        )
        button = "Retry now"
    return page(
        f"Confirm: {action} {round_id}",
        node_id,
        "/rounds",
        f"<form method=post action='/round/{quoted}/{e(action)}' class=confirm>{what}"
        f"<input type=hidden name=form_token value='{e(form_token)}'>"
        f"<button id=confirm>{e(button)}</button> "
        f"<a href='/round/{quoted}'>cancel</a></form>",
    )


def result_page(node_id: str, round_id: str, message: str, *, ok: bool) -> str:
    quoted = e(urllib.parse.quote(round_id, safe=""))
    tone = "done" if ok else "error"
    return page(
        "Done" if ok else "Not done",
        node_id,
        "/rounds",
        f"<p class={tone} id=result>{e(message)}</p>"
        f"<p><a href='/round/{quoted}'>back to the round</a></p>",
    )
