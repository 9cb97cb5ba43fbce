"""Render the coordinator's round lifecycle (``TRANSITIONS``) for docs/protocol.md.

    python scripts/gen_state_diagram.py                 # print the Mermaid diagram
    python scripts/gen_state_diagram.py --table         # print the markdown table
    python scripts/gen_state_diagram.py --update docs/protocol.md
                                                        # rewrite both generated blocks

The diagram and the table in docs/protocol.md are generated from the table the code
runs, so the doc cannot drift from it: tests/core/test_protocol_doc.py fails when
they differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from coordinator.core.state import TRANSITIONS, Event, Phase  # noqa: E402

DIAGRAM_MARKERS = ("<!-- BEGIN GENERATED DIAGRAM -->", "<!-- END GENERATED DIAGRAM -->")
TABLE_MARKERS = ("<!-- BEGIN GENERATED TABLE -->", "<!-- END GENERATED TABLE -->")

# Which applied entry raises each event: the one thing the table itself cannot say.
EVENT_CAUSES: dict[Event, str] = {
    Event.BEGIN_TXN: "`BeginTxn`, or `PresumeAbort` of an unknown id (a tombstone)",
    Event.BEGIN_ROUND: "`BeginRound` (rollback or checkpoint)",
    Event.BEGIN_SAGA: "`BeginSaga`",
    Event.ENLIST: "`Enlist`",
    Event.REQUEST_COMMIT: "`RequestCommit` while no rollback/checkpoint round shares a participant",
    Event.PARTICIPANTS_FREE: "no transaction holds a participant any more (at `BeginRound`, "
    "or when the last one holding it is done)",
    Event.VOTE_YES: "`RecordVotes`: a YES, other votes still missing (saga: "
    "`RecordStepReports`, a step done, more to run)",
    Event.LAST_VOTE_YES: "`RecordVotes`: the last YES (or `RequestCommit` with no "
    "participants; saga: its last step done)",
    Event.VOTE_NO: "`RecordVotes`: the first NO (saga: a step failed)",
    Event.ABORT: "`Abort`, or `PresumeAbort` for its tombstone",
    Event.TIMEOUT: "`Timeout` applied at or after the deadline",
    Event.ACK: "`RecordAcks`: an ack, others still missing (aborted saga: a step "
    "compensated or resolved, more to undo)",
    Event.LAST_ACK: "`RecordAcks`: the last ack (at once for a round with no participants; "
    "aborted saga: nothing left to undo)",
    Event.ESCALATE: "`RecordStepReports`: a saga step's compensation escalated to an operator",
    Event.FORGET: "any entry that moves the replicated clock `retention_ms` past DONE",
}

DECIDING_EVENTS = {
    Event.LAST_VOTE_YES: "COMMIT",
    Event.VOTE_NO: "ABORT",
    Event.ABORT: "ABORT",
    Event.TIMEOUT: "ABORT",
}


def _state(phase: Phase | None) -> str:
    return phase.value if phase is not None else "[*]"


def render_mermaid() -> str:
    lines = ["stateDiagram-v2"]
    for (before, event), after in TRANSITIONS.items():
        label = event.value
        if event in DECIDING_EVENTS:
            label += f" / {DECIDING_EVENTS[event]}"
        lines.append(f"    {_state(before)} --> {_state(after)}: {label}")
    return "\n".join(lines) + "\n"


def render_table() -> str:
    missing = [event.name for event in Event if event not in EVENT_CAUSES]
    if missing:
        raise SystemExit(f"EVENT_CAUSES says nothing about {missing}: describe them")
    lines = [
        "| phase before | event | phase after | decides | raised by |",
        "|---|---|---|---|---|",
    ]
    for (before, event), after in TRANSITIONS.items():
        lines.append(
            f"| {before.value if before else '(none)'} | `{event.value}` "
            f"| {after.value if after else '(forgotten)'} "
            f"| {DECIDING_EVENTS.get(event, '')} | {EVENT_CAUSES[event]} |"
        )
    return "\n".join(lines) + "\n"


def diagram_block() -> str:
    return f"```mermaid\n{render_mermaid()}```\n"


def replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    begin, end = markers
    head, found_begin, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not (found_begin and found_end):
        raise ValueError(f"markers {begin!r} / {end!r} not found")
    return f"{head}{begin}\n{body}{end}{tail}"


def extract_between(text: str, markers: tuple[str, str]) -> str:
    begin, end = markers
    _, found_begin, rest = text.partition(begin)
    body, found_end, _ = rest.partition(end)
    if not (found_begin and found_end):
        raise ValueError(f"markers {begin!r} / {end!r} not found")
    return body.removeprefix("\n")


def update(doc: Path) -> None:
    text = doc.read_text()
    text = replace_between(text, DIAGRAM_MARKERS, diagram_block())
    text = replace_between(text, TABLE_MARKERS, render_table())
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--table", action="store_true", help="print the markdown table")
    group.add_argument("--update", type=Path, metavar="DOC", help="rewrite DOC's generated blocks")
    args = parser.parse_args(argv)
    if args.update:
        update(args.update)
    elif args.table:
        sys.stdout.write(render_table())
    else:
        sys.stdout.write(render_mermaid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
