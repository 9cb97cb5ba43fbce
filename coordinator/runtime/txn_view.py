"""How `concord txn` and `concord status` show rounds and replies, the same everywhere.

- One word for a round's outcome, by its kind (``decision_word``): COMMIT/ABORT for a
  transaction, COMPLETED/COMPENSATED for a saga, EXECUTE/REJECT for a rollback,
  KEEP/DISCARD for a checkpoint; ``-`` while undecided. The table and the JSON use the
  same words, and enums lose their prefix (``TXN``, never ``KIND_TXN``).
- JSON (``message_json``): protobuf field names (snake_case), every field present, and
  numbers as numbers (proto3 JSON writes 64-bit integers as strings).
- Newest first (``newest_first``): the cluster lists rounds in the order they began.
- Ids: a unique prefix of a round id the cluster holds stands for it
  (``resolve_prefix``); an ambiguous one is a one-line mistake.
- ``watch``: `txn list --watch` prints each change as the cluster applies it
  (``WatchTxns``), until Ctrl-C.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from concord.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from coordinator.runtime.cli import fail
from coordinator.runtime.cli_tls import cli_transport
from coordinator.security.identity import Role

CALL_TIMEOUT_S = 3.0
AMBIGUOUS_SHOWN_MAX = 5
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


# ---------------------------------------------------------------------- words


def kind_word(kind: int) -> str:
    return str(common_pb2.Kind.Name(kind)).removeprefix("KIND_")


def decision_word(kind: int, decision: int) -> str:
    """How the round's kind reads its decision: COMMIT/ABORT, COMPLETED/COMPENSATED,
    EXECUTE/REJECT, KEEP/DISCARD; ``-`` while undecided."""
    if decision == common_pb2.DECISION_UNSPECIFIED:
        return "-"
    if kind == common_pb2.KIND_UNSPECIFIED:
        return str(common_pb2.Decision.Name(decision)).removeprefix("DECISION_")
    from coordinator.core.types import decision_name
    from coordinator.protomap import DECISION, KIND

    return decision_name(KIND.from_wire(kind), DECISION.from_wire(decision))


def begun_ms(reply: Any) -> int:
    """When the round began (ms since the epoch), or 0 when the cluster does not say."""
    return int(getattr(reply, "begun_ms", 0) or 0)


def time_text(ms: int) -> str:
    if not ms:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


# ---------------------------------------------------------------------- JSON


def _enum_prefix(name: str) -> str:
    """``Kind`` -> ``KIND_``, ``StepOutcome`` -> ``STEP_OUTCOME_``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() + "_"


def _fix(descriptor: Descriptor, value: dict[str, Any]) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name not in value:
            continue
        repeated = field.is_repeated
        items: list[Any] = value[field.name] if repeated else [value[field.name]]
        fixed: list[Any]
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                continue
            fixed = [_fix(field.message_type, item) for item in items]
        elif field.type in _INT64:
            fixed = [int(item) for item in items]
        elif field.enum_type is not None:
            prefix = _enum_prefix(field.enum_type.name)
            fixed = [item.removeprefix(prefix) if isinstance(item, str) else item for item in items]
        else:
            continue
        value[field.name] = fixed if repeated else fixed[0]
    return value


def message_json(message: Any) -> dict[str, Any]:
    """A protobuf message as JSON for people and scripts: snake_case field names, every
    field present, 64-bit integers as numbers, enums without their prefix."""
    out = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _fix(message.DESCRIPTOR, out)


def round_json(reply: Any) -> dict[str, Any]:
    """A round (``GetTxnReply``) as JSON, its decision in the table's word."""
    out = message_json(reply)
    out["decision"] = decision_word(reply.kind, reply.decision)
    return out


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------- the table


def newest_first(rounds: Iterable[Any], limit: int) -> list[Any]:
    """The newest ``limit`` rounds (all with 0), newest first: by when each began where
    the cluster says, else by its listing, which is in the order they began."""
    listed = list(rounds)
    ordered = listed[::-1]
    if listed and all(begun_ms(r) for r in listed):
        ordered = sorted(listed, key=begun_ms, reverse=True)
    return ordered[:limit] if limit > 0 else ordered


HEADER = f"{'ID':<40} {'KIND':<10} {'PHASE':<9} {'DECISION':<11} BEGUN (UTC)"


def row(reply: Any) -> str:
    return (
        f"{reply.round_id:<40} {kind_word(reply.kind):<10} {reply.phase:<9} "
        f"{decision_word(reply.kind, reply.decision):<11} {time_text(begun_ms(reply))}"
    )


# ---------------------------------------------------------------------- id prefixes


class IdError(Exception):
    """The id names no round, or several: a user mistake (one line, exit 2)."""


def resolve_prefix(text: str, known: Sequence[str]) -> str:
    """``text`` itself when the cluster holds that id, else the one held id it begins;
    ``text`` unchanged when none begins with it (the cluster then says what it knows,
    e.g. of a round it has forgotten). Raises ``IdError`` when several do."""
    if not text:
        raise IdError("an empty id names no round")
    if text in known:
        return text
    matches = sorted(i for i in known if i.startswith(text))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        return text
    shown = ", ".join(matches[:AMBIGUOUS_SHOWN_MAX])
    if len(matches) > AMBIGUOUS_SHOWN_MAX:
        shown += f" and {len(matches) - AMBIGUOUS_SHOWN_MAX} more"
    raise IdError(f"id prefix {text!r} is ambiguous: it begins {shown}; give more of it")


def held_ids(coordinators: str) -> tuple[list[str] | None, str]:
    """The ids of the rounds the cluster holds (as many as it lists), or (None, why)."""
    reply, why = call_any(coordinators, "ListTxns", coordinator_pb2.ListTxnsRequest(limit=0))
    if reply is None:
        return None, why
    return [r.round_id for r in reply.rounds], ""


def resolve_id(coordinators: str, text: str) -> str:
    """The full id a command line's id or unique prefix stands for; ``IdError`` (with
    why) when it is ambiguous or the cluster cannot be asked."""
    known, why = held_ids(coordinators)
    if known is None:
        raise IdError(why)
    return resolve_prefix(text, known)


def call_any(coordinators: str, method: str, request: Any) -> tuple[Any, str]:
    """Ask each node in turn; the first answer wins. Returns (reply, "") or (None, why)."""
    problems = []
    for address in _addresses(coordinators):
        with cli_transport().channel(address, to=Role.NODE) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            try:
                return getattr(stub, method)(request, timeout=CALL_TIMEOUT_S), ""
            except grpc.RpcError as error:
                code = error.code()
                if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    return None, error.details() or code.name.lower()
                problems.append(f"{address}: {code.name.lower()}")
    why = "; ".join(problems) or "no address given"
    return None, f"no coordinator answered ({why}); check --coordinators"


# ---------------------------------------------------------------------- watch


def _addresses(coordinators: str) -> list[str]:
    return [a.strip() for a in coordinators.split(",") if a.strip()]


def watch(coordinators: str, *, as_json: bool, open_only: bool) -> int:
    """Print each round's change as a node applies it, until Ctrl-C. A node that goes
    away hands over to the next address; when none answers, one line and exit 2."""
    addresses = _addresses(coordinators)
    if not addresses:
        return fail("no address given; check --coordinators")
    failures, turn = 0, 0
    problems: list[str] = []
    try:
        while failures < len(addresses):
            address = addresses[turn % len(addresses)]
            turn += 1
            try:
                for event in _events(address):
                    failures, problems = 0, []
                    if open_only and event.round.phase == "DONE":
                        continue
                    if as_json:
                        line = {"applied_index": event.applied_index, **round_json(event.round)}
                        print(json.dumps(line, ensure_ascii=False), flush=True)
                    else:
                        print(row(event.round), flush=True)
            except grpc.RpcError as error:
                code = error.code()
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    return fail(f"{address}: {error.details() or code.name.lower()}")
                failures += 1
                problems.append(f"{address}: {code.name.lower()}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return fail(f"the watch ended: no coordinator answered ({'; '.join(problems)})")


def _events(address: str) -> Iterable[Any]:
    with cli_transport().channel(address, to=Role.NODE) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        yield from stub.WatchTxns(coordinator_pb2.WatchTxnsRequest())


def print_rounds(rounds: Sequence[Any], *, as_json: bool) -> None:
    if as_json:
        print(dumps([round_json(r) for r in rounds]))
        return
    print(HEADER)
    for reply in rounds:
        print(row(reply))
