"""A fuzzer of every RPC Concord serves: CoordinatorService, OperationsService and
MembershipService on a coordinator node, ParticipantService on a participant.

The methods are enumerated from the generated descriptors, so a new RPC is fuzzed
(and must be answered clearly) without anyone editing this file. Requests are
built by hypothesis from the message descriptors (``message_strategy``): strings with
control characters, NUL, bidirectional overrides and huge lengths within the 8 MiB
message limit, integers at and beyond their edges, repeated fields with thousands of
items, enum numbers nobody defined; and raw random bytes instead of a message.

Each request goes in as an identity that the authorization table lets through to the
handler (the operator, or for participant-only and node-only methods a participant
speaking as itself and a node certificate of the cluster), and as a client, which is
refused most of it. What must hold:

- a clear status: never UNKNOWN, INTERNAL, UNIMPLEMENTED or DATA_LOSS (a streaming
  method may also run out of its deadline), and no "Traceback" in the node's log or
  the participant's;
- no crash: the node and the participant stay up and a normal transaction commits
  after it all (``test_after_the_fuzzing_a_transaction_commits``);
- no state change for refused requests: a refused Exchange leaves the participant as
  it was, and no id that only refused requests carried shows up in the audit chain;
- bounded memory: the node's peak RSS (VmHWM in /proc/PID/status) stays under
  ``NODE_RSS_BYTES_MAX`` (320 MiB). Measured here (single node, TLS, 2 cores): about
  64 MiB idle after start-up, 145-175 MiB at the end of this module (requests of up
  to 6 MB are parsed, checked and refused); the bound is twice that: room for another
  allocator or Python build, not for a request held many times over or a leak that
  grows with the number of requests.

Calls that wait for a decision (``wait_for_decision``, a saga's ``wait``) are sent
with those flags cleared: waiting is bounded by the call's deadline and would only
slow the fuzzer down. A single-node cluster is used: a membership change or a leader
transfer that slipped through could not take it apart, and nothing is forwarded.

The hypothesis profile is fixed (``FUZZ``: derandomized, bounded examples, no
deadline, no example database), so a run is the same run every time.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from concord.v1 import (
    coordinator_pb2,
    membership_pb2,
    operations_pb2,
    participant_pb2,
)
from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import CLIENT, OPERATOR, LocalCluster
from coordinator.security.authz import POLICY
from coordinator.security.identity import Role
from participant_sdk import Participant, ParticipantOptions, SyncConcordClient
from tests.security.conftest import Attacker, Attackers, OperatorView

pytestmark = pytest.mark.integration

FUZZ = settings(
    derandomize=True,
    max_examples=25,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=list(HealthCheck),
)
FUZZ_RAW = settings(FUZZ, max_examples=12)
NODE_RSS_BYTES_MAX = 320 << 20
CALL_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 0.3  # a server stream (WatchTxns) is read this long
CLEAR = frozenset(
    {
        "OK",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "OUT_OF_RANGE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)
WAIT_FIELDS = frozenset({"wait", "wait_for_decision"})
PARTICIPANT_ID = "fuzz-p"  # the participant identity that speaks as itself
TARGET = "target"  # the participant whose ParticipantService is fuzzed
BYSTANDER = "bystander"  # a participant nobody fuzzes: the transaction after it all

SERVICES = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (coordinator_pb2, "CoordinatorService"),
        (operations_pb2, "OperationsService"),
        (membership_pb2, "MembershipService"),
        (participant_pb2, "ParticipantService"),
    )
]
METHODS: dict[str, MethodDescriptor] = {
    f"/{service.full_name}/{method.name}": method
    for service in SERVICES
    for method in service.methods
}


def _on_participant(path: str) -> bool:
    return path.startswith("/concord.v1.ParticipantService/")


# ---------------------------------------------------------------------- strategies

_TEXT_SPECIAL = [
    "",
    "\x00",
    "a\x00b",
    "p1",
    "c1",
    "\x1b[2J\x1b[31mred",
    "\u202eevil\u202c",
    "\ufeff",
    "line\nbreak",
    "tab\there",
    "x" * 129,
    "é" * 100,
    "../../etc/passwd",
    "127.0.0.1:1",
    "%00",
    "\U0001f600",
]
_HUGE = st.builds(
    lambda char, count: char * count,
    st.sampled_from(["a", "\x00", "é", "\n"]),
    st.sampled_from([1_000, 65_536, 1 << 20, 3 << 20]),
)
SMALL_TEXT = st.one_of(
    st.sampled_from(_TEXT_SPECIAL),
    st.text(max_size=16),
    st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Co"]), max_size=8),
)
TEXT = st.one_of(SMALL_TEXT, _HUGE)
SMALL_BYTES = st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\x00" * 16, b"\xff" * 32]))
BYTES = st.one_of(SMALL_BYTES, _HUGE.map(lambda s: s.encode()))
_INT_RANGES = {
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_ENUM: (-(1 << 31), (1 << 31) - 1),
}


def _integers(field: FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[field.type]
    edges = sorted({low, high, 0, 1, low + 1, high - 1, min(high, 10), max(low, -1)})
    options = [st.sampled_from(edges), st.integers(low, high), st.integers(0, 100)]
    if field.type == FieldDescriptor.TYPE_ENUM:
        options.insert(0, st.sampled_from([v.number for v in field.enum_type.values]))
    return st.one_of(options)


def _scalar(field: FieldDescriptor, depth: int, small: bool) -> st.SearchStrategy[Any]:
    """``small``: no huge strings (an element that may be repeated thousands of times
    must stay small, or one message would be gigabytes)."""
    if field.type == FieldDescriptor.TYPE_STRING:
        return SMALL_TEXT if small else TEXT
    if field.type == FieldDescriptor.TYPE_BYTES:
        return SMALL_BYTES if small else BYTES
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(field.message_type, depth + 1, small)
    return _integers(field)


def _repeated(field: FieldDescriptor, depth: int, small: bool) -> st.SearchStrategy[list[Any]]:
    """A few small items, one that may be huge, or (unless ``small``) many small ones:
    100 or 10,000 (so no message grows beyond a few tens of MB)."""
    element = _scalar(field, depth, small=True)
    few = st.lists(element, max_size=4)
    if small:
        return few
    one = st.lists(_scalar(field, depth, small=False), min_size=1, max_size=1)
    many = st.builds(lambda value, count: [value] * count, element, st.sampled_from([100, 10_000]))
    return st.one_of(few, one, many)


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and field.is_repeated
    )


_STRATEGIES: dict[tuple[str, int, bool], st.SearchStrategy[Any]] = {}


def message_strategy(
    descriptor: Descriptor, depth: int = 0, small: bool = False
) -> st.SearchStrategy[Any]:
    """Messages of ``descriptor``'s type, any subset of fields set."""
    key = (descriptor.full_name, depth, small)
    if key in _STRATEGIES:
        return _STRATEGIES[key]
    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if depth >= 2 and field.type == FieldDescriptor.TYPE_MESSAGE:
            continue  # deep enough: Concord's messages nest two levels at most
        if _is_map(field):
            entry = field.message_type
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            fields[field.name] = st.dictionaries(
                _scalar(key_field, depth, small), _scalar(value_field, depth, small), max_size=4
            )
        elif field.is_repeated:
            fields[field.name] = _repeated(field, depth, small)
        else:
            fields[field.name] = _scalar(field, depth, small)

    def build(values: dict[str, Any]) -> Any:
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            if _is_map(field):
                getattr(message, name).update(value)
            elif field.is_repeated:
                getattr(message, name).extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    strategy = st.fixed_dictionaries({}, optional=fields).map(build)
    _STRATEGIES[key] = strategy
    return strategy


# ---------------------------------------------------------------------- the target


class LogWatch(logging.Handler):
    """Records of this process (the in-process participants, grpc's server code)
    that carry a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.tracebacks.append(self.format(record)[:2000])


class Fuzzed:
    """The module's cluster (one node), its participants, and the identities."""

    def __init__(self, root: Path) -> None:
        self.cluster = LocalCluster(root / "cluster", 1)
        self.attackers = Attackers(self.cluster, root / "attackers")
        self.participants: dict[str, Participant] = {}
        self.operator: OperatorView | None = None
        self.accepted_text: set[str] = set()  # every string of an accepted request
        self.refused_ids: set[str] = set()  # the ids of refused requests
        self.log_watch = LogWatch()
        self.peak_rss = 0
        self._log_checked = 0  # how much of the node's log was looked at already

    @property
    def node(self) -> Any:
        return next(iter(self.cluster.nodes.values()))

    @property
    def address(self) -> str:
        return str(self.node.address.grpc)

    def start(self, root: Path) -> None:
        self.cluster.start()
        self.cluster.leader()
        self.operator = OperatorView(self.cluster)
        for pid in (TARGET, BYSTANDER):
            participant = Participant(
                pid,
                root / pid,
                self.cluster.grpc_addresses,
                tls=self.cluster.transport(Role.PARTICIPANT, pid),
                options=ParticipantOptions(tick_interval_s=0.2),
            )
            participant.start_in_thread()
            self.participants[pid] = participant
            participant.wait_registered_in_thread(30)
        # the participant identity that speaks as itself is registered too
        who = self.attackers.of_cluster(Role.PARTICIPANT, PARTICIPANT_ID)
        with who.channel(self.address) as channel:
            channel.unary_unary(
                "/concord.v1.CoordinatorService/RegisterParticipant",
                request_serializer=coordinator_pb2.RegisterParticipantRequest.SerializeToString,
                response_deserializer=coordinator_pb2.RegisterParticipantReply.FromString,
            )(
                coordinator_pb2.RegisterParticipantRequest(
                    participant_id=PARTICIPANT_ID, endpoint="127.0.0.1:9"
                ),
                timeout=CALL_TIMEOUT_S,
            )

    def stop(self) -> None:
        for participant in self.participants.values():
            participant.stop_in_thread()
        if self.operator is not None:
            self.operator.close()
        self.cluster.stop()

    def identity(self, path: str, who: str) -> Attacker:
        """``who``: "client", or "authorized" (whom the table lets through)."""
        if who == "client":
            return self.attackers.of_cluster(Role.CLIENT, CLIENT)
        roles = POLICY[path].roles
        if Role.OPERATOR in roles:
            return self.attackers.of_cluster(Role.OPERATOR, OPERATOR)
        if Role.NODE in roles:
            return self.attackers.of_cluster(Role.NODE, "c9")  # of the cluster, no member
        return self.attackers.of_cluster(Role.PARTICIPANT, PARTICIPANT_ID)

    def node_rss(self) -> int:
        """The node's peak resident set (VmHWM), in bytes."""
        process = self.node.process
        assert process is not None and process.poll() is None, "the node is not running"
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")

    def check_whole(self) -> None:
        """The node runs, wrote no traceback since the last check, stays under its
        memory bound; the participants run and logged no traceback since then."""
        rss = self.node_rss()
        self.peak_rss = max(self.peak_rss, rss)
        assert rss < NODE_RSS_BYTES_MAX, f"node RSS peaked at {rss >> 20} MiB"
        log = self.node.log_path.read_text(errors="replace")
        new, self._log_checked = log[self._log_checked :], len(log)
        assert "Traceback" not in new, new[max(0, new.index("Traceback") - 500) :][:3000]
        tracebacks, self.log_watch.tracebacks = self.log_watch.tracebacks, []
        assert not tracebacks, tracebacks[0]
        for pid, participant in self.participants.items():
            assert participant.running, f"participant {pid} stopped"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    root = tmp_path_factory.mktemp("fuzz")
    target = Fuzzed(root)
    logging.getLogger().addHandler(target.log_watch)
    try:
        target.start(root)
        yield target
    finally:
        logging.getLogger().removeHandler(target.log_watch)
        target.stop()


# ---------------------------------------------------------------------- calling


def _callable(channel: grpc.Channel, path: str, method: MethodDescriptor, raw: bool) -> Any:
    request_type = message_factory.GetMessageClass(method.input_type)
    reply_type = message_factory.GetMessageClass(method.output_type)
    serialize = (lambda b: b) if raw else request_type.SerializeToString
    kind = (method.client_streaming, method.server_streaming)
    make = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[kind]
    return make(path, request_serializer=serialize, response_deserializer=reply_type.FromString)


def call(
    fuzzed: Fuzzed, who: Attacker, path: str, request: Any, raw: bool = False
) -> tuple[str, int]:
    """(status, replies read) of one fuzzed call. A client stream carries ``request``
    (a list of messages, or one raw message)."""
    method = METHODS[path]
    if _on_participant(path):
        channel = who.channel(
            f"127.0.0.1:{fuzzed.participants[TARGET].port}", Role.PARTICIPANT, TARGET
        )
    else:
        channel = who.channel(fuzzed.address)
    replies = 0
    with channel:
        rpc = _callable(channel, path, method, raw)
        argument = (
            iter(request if isinstance(request, list) else [request])
            if method.client_streaming
            else request
        )
        timeout = (
            STREAM_TIMEOUT_S
            if method.server_streaming and not method.client_streaming
            else CALL_TIMEOUT_S
        )
        try:
            result = rpc(argument, timeout=timeout)
            if method.server_streaming:
                for _ in itertools.islice(result, 1000):
                    replies += 1
            else:
                replies = 1
        except grpc.RpcError as error:
            name = error.code().name  # type: ignore[attr-defined]
            if (
                name == "DEADLINE_EXCEEDED"
                and method.server_streaming
                and not method.client_streaming
            ):
                return "OK", replies  # a watch runs until its deadline
            return f"{name}: {error.details()}", replies  # type: ignore[attr-defined]
    return "OK", replies


def _unwaited(message: Any) -> Any:
    for field in message.DESCRIPTOR.fields:
        if field.name in WAIT_FIELDS:
            setattr(message, field.name, False)
    return message


def _as_itself(path: str, message: Any, who: str) -> Any:
    """A participant-only method, as the authorized identity: it names itself, so the
    handler is reached (the table refuses any other id before the handler runs)."""
    rule = POLICY[path]
    if who == "authorized" and rule.as_itself and Role.OPERATOR not in rule.roles:
        setattr(message, rule.as_itself, PARTICIPANT_ID)
    return message


_ID_FIELDS = ("txn_id", "round_id", "saga_id", "participant_id", "node_id")


def _strings(message: Any) -> Iterator[str]:
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if _is_map(field):
            values = [*value.keys(), *value.values()]
        for item in values:
            if isinstance(item, str):
                yield item
            elif hasattr(item, "ListFields"):
                yield from _strings(item)


def _note(fuzzed: Fuzzed, message: Any, status: str) -> None:
    if status == "OK":
        fuzzed.accepted_text.update(_strings(message))
    else:
        for name in _ID_FIELDS:
            value = getattr(message, name, "")
            if isinstance(value, str) and value:
                fuzzed.refused_ids.add(value)


def _participant_view(p: Participant) -> Any:
    records, term = p.store.load()
    return (
        p.state.items(),
        sorted(repr(r) for r in records),
        term,
        p.term_seen,
        p.checkpoints(),
        [
            (e.seq, e.event, e.round_id, e.detail)
            for e in p.store.audit()
            if not e.detail.startswith("denied ")
        ],
    )


def _assert_clear(status: str, path: str, who: str) -> None:
    code = status.split(":", 1)[0]
    assert code in CLEAR, f"{path} as {who}: {status[:500]}"


# ---------------------------------------------------------------------- the fuzzers


@pytest.mark.parametrize("who", ["authorized", "client"])
@pytest.mark.parametrize("path", sorted(METHODS))
def test_valid_shaped_requests_get_a_clear_answer(fuzzed: Fuzzed, path: str, who: str) -> None:
    method = METHODS[path]
    identity = fuzzed.identity(path, who)
    single = message_strategy(method.input_type)
    requests = (
        st.builds(
            lambda first, rest: [first, *rest],
            single,
            st.lists(message_strategy(method.input_type, small=True), max_size=2),
        )
        if method.client_streaming
        else single
    )
    target = fuzzed.participants[TARGET]

    @FUZZ
    @given(requests)
    def run(request: Any) -> None:
        messages = request if isinstance(request, list) else [request]
        for message in messages:
            _as_itself(path, _unwaited(message), who)
        before = _participant_view(target) if _on_participant(path) else None
        status, replies = call(fuzzed, identity, path, request)
        _assert_clear(status, path, who)
        for message in messages:
            _note(fuzzed, message, status)
        if before is not None and status != "OK" and replies == 0:
            assert _participant_view(target) == before, f"{path} refused ({status}) yet acted"

    run()
    fuzzed.check_whole()


@pytest.mark.parametrize("path", sorted(METHODS))
def test_random_bytes_get_a_clear_answer(fuzzed: Fuzzed, path: str) -> None:
    identity = fuzzed.identity(path, "authorized")

    @FUZZ_RAW
    @given(
        st.one_of(
            st.binary(min_size=1, max_size=256),
            st.sampled_from(
                [b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 10, b"\x12\x05ab"]
            ),
        )
    )
    def run(data: bytes) -> None:
        status, _ = call(fuzzed, identity, path, data, raw=True)
        _assert_clear(status, path, "authorized (raw bytes)")

    run()
    fuzzed.check_whole()


def test_refused_requests_left_no_trace_in_the_audit(fuzzed: Fuzzed) -> None:
    """No id that only refused requests carried names a round or a participant in
    the replicated audit chain: a refused request never became a log entry. (It reads
    what the fuzzers above recorded: it runs after them, in file order.)"""
    assert fuzzed.operator is not None
    chain = fuzzed.operator.chain()
    named = set()
    for record in chain:
        named.add(record["round_id"])
        detail = record["detail"]
        named.add(str(detail.get("participant", "")))
        named.update(str(p) for p in detail.get("participants", ()))
    only_refused = fuzzed.refused_ids - fuzzed.accepted_text
    indexes = {
        r["index"]
        for r in chain
        if r["round_id"] in only_refused
        or str(r["detail"].get("participant", "")) in only_refused
        or any(str(p) in only_refused for p in r["detail"].get("participants", ()))
    }
    traces = [
        (r["index"], r["event"], r["round_id"][:40], str(r["detail"])[:300])
        for r in chain
        if r["index"] in indexes
    ]
    assert not traces, "\n".join(map(str, traces[:12]))


def test_after_the_fuzzing_a_transaction_commits(fuzzed: Fuzzed) -> None:
    """The node and the participants are up, and a normal transaction commits."""
    fuzzed.check_whole()
    bystander = fuzzed.participants[BYSTANDER]
    tls = fuzzed.cluster.transport(Role.CLIENT, CLIENT)
    with SyncConcordClient(fuzzed.cluster.grpc_addresses, tls=tls, call_timeout_s=10) as client:
        with client.transaction([BYSTANDER], wait_applied=True) as txn:
            bystander.begin(txn.id).put(f"after-{uuid.uuid4().hex[:8]}", b"ok")
        assert txn.decision is Decision.COMMIT
    fuzzed.check_whole()
    print(f"node peak RSS {fuzzed.peak_rss >> 20} MiB")
