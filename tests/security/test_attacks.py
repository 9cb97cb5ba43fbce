"""Every attack of issue 12 ("Why"), replayed against a real TLS cluster: each is
refused (PERMISSION_DENIED, UNAUTHENTICATED, a failed handshake, INVALID_ARGUMENT,
RESOURCE_EXHAUSTED) and nothing changed: the participants' state, records and terms,
the rounds' decisions and votes (GetTxn), the replicated audit chain, the members.

One cluster (with kv_agent processes p1 and p2 and an in-process participant
``victim``) serves the module; the flood of BeginTxn gets a cluster of its own, since
the rounds it leaves behind time out for a while after it. An attack that still works
fails its test: the test says what the secure behaviour is, never xfail.

Who may abort what (issue 12 item 2, as coordinator_service.may_abort decides): the
caller that began the round, a participant named in it, or an operator; nobody else.
A reason starting "operator:" is the audit's mark of an operator's abort, so only an
operator may give one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from concord.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
)
from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import CLIENT, CLUSTER_NAME, LocalCluster
from coordinator.security.identity import Identity, Role
from coordinator.security.secret import NONCE_BYTES
from participant_sdk import Participant, ParticipantOptions, SyncConcordClient, TransactionAborted
from tests.integration.conftest import AgentProcess
from tests.security.conftest import (
    CALL_TIMEOUT_S,
    Attacker,
    Attackers,
    OperatorView,
    status_of,
    wait_for,
)

pytestmark = pytest.mark.integration

DENIED = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})
HANDSHAKE_FAILED = frozenset({"UNAVAILABLE"})
U64_MAX = (1 << 64) - 1


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def expected_refusal(attacker: Attacker) -> frozenset[str]:
    """A certificate of this CA is authenticated and then denied; one of another CA,
    or none, never completes the handshake."""
    if attacker.plaintext or "another CA" in attacker.label:
        return HANDSHAKE_FAILED
    return DENIED


# Attacker kinds, resolved against the module's cluster by ``_attacker``.
ATTACKERS = {
    "client": lambda a: a.of_cluster(Role.CLIENT, "mallory"),
    "participant-p1": lambda a: a.of_cluster(Role.PARTICIPANT, "p1"),
    "operator-other-cluster": lambda a: a.other_cluster(Role.OPERATOR, "admin"),
    "node-other-cluster": lambda a: a.other_cluster(Role.NODE, "c1"),
    "node-other-ca": lambda a: a.other_ca(Role.NODE, "c1"),
    "operator-other-ca": lambda a: a.other_ca(Role.OPERATOR, "admin"),
    "participant-p2-other-cluster": lambda a: a.other_cluster(Role.PARTICIPANT, "p2"),
    "participant-p2-other-ca": lambda a: a.other_ca(Role.PARTICIPANT, "p2"),
    "plaintext": lambda a: a.plaintext(),
}


def _attacker(attackers: Attackers, kind: str) -> Attacker:
    return ATTACKERS[kind](attackers)


# ---------------------------------------------------------------------- fakes


class Listener:
    """A TCP port that only counts the connections made to it: where an attacker
    points a forged registration or membership change. Any dial there, TLS or not,
    means the cluster believed the forgery."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@contextlib.contextmanager
def listeners(count: int) -> Iterator[list[Listener]]:
    started = [Listener() for _ in range(count)]
    try:
        yield started
    finally:
        for listener in started:
            listener.close()


def _grpc_server(key: bytes, cert: bytes, ca: bytes) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    credentials = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    return server, f"127.0.0.1:{port}"


class LyingParticipant(participant_pb2_grpc.ParticipantServiceServicer):
    """A participant server that answers every Prepare with a YES vote, and every
    Decide with an acknowledgement, for each id in ``speaks_for``."""

    def __init__(self, speaks_for: tuple[str, ...]) -> None:
        self.speaks_for = speaks_for
        self.prepares: list[str] = []

    def Exchange(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        for batch in request_iterator:
            reply = participant_pb2.ParticipantBatch()
            for prepare in batch.prepares:
                self.prepares.append(prepare.round_id)
                for pid in self.speaks_for:
                    reply.votes.add(round_id=prepare.round_id, participant_id=pid, yes=True)
            for decide in batch.decides:
                for pid in self.speaks_for:
                    reply.acks.add(round_id=decide.round_id, participant_id=pid)
            yield reply

    def Ping(self, request: Any, context: Any) -> Any:
        return participant_pb2.PingReply(participant_id=self.speaks_for[0])


class FakeNode(
    membership_pb2_grpc.MembershipServiceServicer, coordinator_pb2_grpc.CoordinatorServiceServicer
):
    """A would-be member: it knows the members (``members`` plus itself) and claims to
    hold the cluster secret (``match=True`` with a made-up proof)."""

    def __init__(self, node_id: str, members: list[tuple[str, str, str]], raft: str) -> None:
        self.node_id = node_id
        self.members = [*members, (node_id, raft, "")]
        self.calls: list[str] = []

    def ListMembers(self, request: Any, context: Any) -> Any:
        self.calls.append("ListMembers")
        return membership_pb2.ListMembersReply(
            node_id=self.node_id,
            members=[membership_pb2.Member(node_id=n, raft=r, grpc=g) for n, r, g in self.members],
        )

    def CheckSecret(self, request: Any, context: Any) -> Any:
        self.calls.append("CheckSecret")
        return coordinator_pb2.CheckSecretReply(
            match=True, proof=os.urandom(32), node_id=self.node_id
        )


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def victim(
    shared_cluster: LocalCluster,
    shared_client: SyncConcordClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Participant]:
    """An in-process participant (its records, checkpoints and audit in plain view),
    registered with the cluster, with a committed key and a checkpoint taken through
    the cluster."""
    participant = Participant(
        "victim",
        tmp_path_factory.mktemp("victim") / "data",
        shared_cluster.grpc_addresses,
        tls=shared_cluster.transport(Role.PARTICIPANT, "victim"),
        options=ParticipantOptions(tick_interval_s=0.2),
    )
    participant.start_in_thread()
    try:
        participant.wait_registered_in_thread(30)
        with shared_client.transaction(["victim"], wait_applied=True) as txn:
            participant.begin(txn.id).put("balance", b"100")
        result = shared_client.global_checkpoint(
            session_id="s", participants=["victim"], checkpoint_id="cp-real", label="real"
        )
        assert result.decision is Decision.COMMIT
        wait_for(
            "the checkpoint round to be done",
            lambda: shared_client.get(result.round_id).phase == "DONE",
        )
        with shared_client.transaction(["victim"], wait_applied=True) as txn:
            participant.begin(txn.id).put("after-checkpoint", b"kept")
        yield participant
    finally:
        participant.stop_in_thread()


def participant_view(p: Participant) -> dict[str, Any]:
    """Everything a coordinator message could change at a participant (denials aside:
    they are audited, once per caller and method)."""
    records, term = p.store.load()
    return {
        "state": p.state.items(),
        "records": sorted(repr(r) for r in records),
        "term": term,
        "term_seen": p.term_seen,
        "in_doubt": p.in_doubt(),
        "checkpoints": p.checkpoints(),
        "audit": [
            (e.seq, e.event, e.round_id, e.detail)
            for e in p.store.audit()
            if not e.detail.startswith("denied ")
        ],
    }


def _new_records(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[Any]:
    return [(r["event"], r["round_id"], r["detail"]) for r in after[len(before) :]]


def _assert_chain_unchanged(operator: OperatorView, before: list[dict[str, Any]]) -> None:
    after = operator.quiet()
    assert after == before, f"the audit log chain changed: {_new_records(before, after)}"


def _commits(client: SyncConcordClient) -> None:
    """A normal transaction still commits (the cluster took no harm)."""
    txn = client.begin([])
    assert client.commit(txn.id) is Decision.COMMIT


# ====================================================================== the harness


def test_the_harness_reaches_its_targets_with_the_right_credentials(
    attackers: Attackers, victim: Participant, operator: OperatorView
) -> None:
    """A control: the channels the attackers use work for those entitled to them, so a
    refusal below is the server's doing, never the harness's (a failed handshake
    could otherwise be a wrong server name)."""
    node = attackers.of_cluster(Role.NODE, "c9")
    with node.channel(f"127.0.0.1:{victim.port}", Role.PARTICIPANT, "victim") as channel:
        ping = participant_pb2_grpc.ParticipantServiceStub(channel).Ping
        reply = ping(participant_pb2.PingRequest(term=0), timeout=CALL_TIMEOUT_S)
    assert reply.participant_id == "victim"
    admin = attackers.of_cluster(Role.OPERATOR, "admin")
    with admin.channel(operator.leader_address()) as channel:
        stub = operations_pb2_grpc.OperationsServiceStub(channel)
        assert stub.NodeStatus(operations_pb2.NodeStatusRequest(), timeout=5).node_id
    # ... and the batches the fake coordinators send below do act, from a node of this
    # cluster (at the term the participant has seen: nothing is fenced)
    txn_id = _id("control")
    victim.begin(txn_id).put("control", b"applied")
    term = victim.term_seen
    txn = {"round_id": txn_id, "kind": common_pb2.KIND_TXN}
    commit = {**txn, "decision": common_pb2.DECISION_COMMIT}
    assert _exchange(node, victim, [_batch(term, prepares=[txn])]) == "OK"
    assert _exchange(node, victim, [_batch(term, decides=[commit])]) == "OK"
    assert victim.state.get("control") == b"applied"


def test_a_denial_is_refused_with_one_line_and_audited_once(
    attackers: Attackers, victim: Participant, operator: OperatorView
) -> None:
    """Five denied calls from one new identity, to a node and to a participant: each
    PERMISSION_DENIED with one line; the node's local audit chain and the participant's
    audit log note it once, the replicated chain not at all."""
    name = _id("stranger")
    stranger = attackers.of_cluster(Role.CLIENT, name)
    uri = Identity(CLUSTER_NAME, Role.CLIENT, name).uri
    before = operator.quiet()
    request = coordinator_pb2.RegisterParticipantRequest(participant_id="p2", endpoint="x:1")
    with stranger.channel(operator.leader_address()) as channel:
        register = coordinator_pb2_grpc.CoordinatorServiceStub(channel).RegisterParticipant
        answers = [status_of(lambda: register(request, timeout=5)) for _ in range(5)]
    with stranger.channel(f"127.0.0.1:{victim.port}", Role.PARTICIPANT, "victim") as channel:
        ping = participant_pb2_grpc.ParticipantServiceStub(channel).Ping
        answers += [
            status_of(lambda: ping(participant_pb2.PingRequest(), timeout=5)) for _ in range(5)
        ]
    for code, details in answers:
        assert code == "PERMISSION_DENIED" and details and "\n" not in details, (code, details)
    local = operator.chain(local=True)
    mine = [r for r in local if r["event"] == "denied" and r["detail"].get("caller") == uri]
    assert len(mine) == 1, mine
    noted = [e.detail for e in victim.store.audit() if e.detail.startswith("denied ")]
    assert sum(1 for detail in noted if name in detail) == 1, noted
    _assert_chain_unchanged(operator, before)


# ====================================================================== forged votes


@pytest.mark.parametrize(
    "kind",
    [
        "participant-p1",
        "client",
        "participant-p2-other-cluster",
        "participant-p2-other-ca",
        "node-other-ca",
        "plaintext",
    ],
)
def test_register_cannot_repoint_another_participant(
    kind: str,
    attackers: Attackers,
    operator: OperatorView,
    shared_agents: dict[str, AgentProcess],
    shared_client: SyncConcordClient,
    shared_cluster: LocalCluster,
) -> None:
    """RegisterParticipant re-pointing p2 at an attacker's endpoint: refused, p2's
    endpoint is still its own, and a transaction p2 votes NO on aborts with p2's vote."""
    attacker = _attacker(attackers, kind)
    before = operator.quiet()
    with listeners(1) as [fake]:
        request = coordinator_pb2.RegisterParticipantRequest(
            participant_id="p2", endpoint=fake.address
        )
        codes = set()
        for address in shared_cluster.grpc_addresses:  # a follower would forward it
            with attacker.channel(address) as channel:
                stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
                codes.add(status_of(lambda s=stub: s.RegisterParticipant(request, timeout=5))[0])
        assert codes <= expected_refusal(attacker), f"{attacker.label}: {codes}"
        _assert_chain_unchanged(operator, before)

        txn = shared_client.begin(["p1", "p2"], timeout_s=30)
        shared_agents["p1"].stage(txn, f"k-{txn.id}", "v")
        shared_agents["p2"].stage(txn, f"k-{txn.id}", "v", vote="no")
        with pytest.raises(TransactionAborted):
            shared_client.commit(txn.id)
        status = operator.get(txn.id)
        votes = {p.participant_id: (p.voted, p.yes, p.reason) for p in status.participants}
        assert votes["p2"] == (True, False, "told to vote no")
        assert fake.connections == 0, "the cluster dialled the attacker's endpoint"
    assert f"k-{txn.id}" not in shared_agents["p2"].view()["state"]


def test_a_participant_cannot_vote_for_another_on_its_own_stream(
    attackers: Attackers,
    operator: OperatorView,
    shared_agents: dict[str, AgentProcess],
    shared_client: SyncConcordClient,
    shared_cluster: LocalCluster,
) -> None:
    """A server holding p1's real certificate, registered as p1 (which p1 may do),
    answers every Prepare with YES for p1 and for p2. p2 votes NO (a second late):
    the transaction aborts on p2's own vote; the forged YES is never recorded."""
    p1 = attackers.of_cluster(Role.PARTICIPANT, "p1")
    assert p1.key is not None and p1.cert is not None
    liar = LyingParticipant(("p1", "p2"))
    server, address = _grpc_server(p1.key, p1.cert, attackers.ca)
    participant_pb2_grpc.add_ParticipantServiceServicer_to_server(liar, server)
    server.start()
    try:
        with p1.channel(operator.leader_address()) as channel:
            coordinator_pb2_grpc.CoordinatorServiceStub(channel).RegisterParticipant(
                coordinator_pb2.RegisterParticipantRequest(participant_id="p1", endpoint=address),
                timeout=CALL_TIMEOUT_S,
            )
        txn = shared_client.begin(["p1", "p2"], timeout_s=30)
        shared_agents["p2"].stage(txn, f"k-{txn.id}", "v", vote="no", vote_delay_s=1.0)
        with pytest.raises(TransactionAborted):
            shared_client.commit(txn.id)
        assert txn.id in liar.prepares, "the attack never ran: the fake p1 got no Prepare"
        status = operator.get(txn.id)
        assert status.decision == common_pb2.DECISION_ABORT
        votes = {p.participant_id: (p.voted, p.yes, p.reason) for p in status.participants}
        assert votes["p2"] == (True, False, "told to vote no")
        chain = operator.quiet()
        p2_votes = [
            r["detail"]
            for r in chain
            if r["event"] == "vote"
            and r["round_id"] == txn.id
            and r["detail"]["participant"] == "p2"
        ]
        assert p2_votes and all(not v["yes"] for v in p2_votes), p2_votes
    finally:
        server.stop(0)
        # p1 registers its own endpoint again when it starts
        shared_agents["p1"].stop()
        shared_agents["p1"].start()
    assert f"k-{txn.id}" not in shared_agents["p2"].view()["state"]


# ====================================================================== a fake coordinator


COORDINATOR_IMPOSTORS = [
    "client",
    "participant-p1",
    "operator-other-cluster",
    "node-other-cluster",
    "node-other-ca",
    "plaintext",
]


def _exchange(attacker: Attacker, victim: Participant, batches: list[Any]) -> str:
    """Send ``batches`` on one Exchange stream to the victim; the stream's status."""
    with attacker.channel(f"127.0.0.1:{victim.port}", Role.PARTICIPANT, "victim") as channel:
        stub = participant_pb2_grpc.ParticipantServiceStub(channel)
        return status_of(lambda: stub.Exchange(iter(batches), timeout=CALL_TIMEOUT_S))[0]


def _batch(
    term: int, prepares: list[dict[str, Any]] = (), decides: list[dict[str, Any]] = ()
) -> Any:
    return participant_pb2.CoordinatorBatch(
        term=term,
        prepares=[
            participant_pb2.Prepare(term=term, participant_id="victim", **p) for p in prepares
        ],
        decides=[participant_pb2.Decide(term=term, participant_id="victim", **d) for d in decides],
    )


@pytest.mark.parametrize("kind", COORDINATOR_IMPOSTORS)
def test_a_fake_coordinator_cannot_commit_a_branch(
    kind: str, attackers: Attackers, victim: Participant, operator: OperatorView
) -> None:
    """Prepare + Decide COMMIT of a branch the cluster never knew: refused before any
    message is looked at; the branch is still open, unvoted, its write not applied."""
    attacker = _attacker(attackers, kind)
    txn_id = _id("forged")
    victim.begin(txn_id).put("balance", b"1000000")
    try:
        before = participant_view(victim)
        term = victim.term_seen + 1
        txn = {"round_id": txn_id, "kind": common_pb2.KIND_TXN}
        codes = {
            _exchange(attacker, victim, [_batch(term, prepares=[txn])]),
            _exchange(
                attacker,
                victim,
                [_batch(term, decides=[{**txn, "decision": common_pb2.DECISION_COMMIT}])],
            ),
        }
        assert codes <= expected_refusal(attacker), f"{attacker.label}: {codes}"
        assert participant_view(victim) == before
        assert victim.record(txn_id) is None
        assert victim.branch(txn_id).writes == {"balance": b"1000000"}  # still open, unvoted
        assert victim.state.get("balance") == b"100"
    finally:
        victim.abort_alone(txn_id)


@pytest.mark.parametrize("kind", COORDINATOR_IMPOSTORS)
def test_a_fake_coordinator_cannot_checkpoint_then_roll_back(
    kind: str,
    attackers: Attackers,
    victim: Participant,
    operator: OperatorView,
    shared_client: SyncConcordClient,
) -> None:
    """A fake checkpoint round, a real commit, then a fake rollback round (to the fake
    checkpoint and to the real one): refused; no checkpoint taken, no key erased."""
    attacker = _attacker(attackers, kind)
    before = participant_view(victim)
    term = victim.term_seen + 1
    checkpoint = {"kind": common_pb2.KIND_CHECKPOINT, "checkpoint_id": _id("cp-evil")}
    keep = {**checkpoint, "round_id": _id("ck"), "decision": common_pb2.DECISION_COMMIT}
    prepare_checkpoint = {k: v for k, v in keep.items() if k != "decision"}
    codes = {
        _exchange(attacker, victim, [_batch(term, prepares=[prepare_checkpoint])]),
        _exchange(attacker, victim, [_batch(term, decides=[keep])]),
    }
    assert participant_view(victim) == before
    key = _id("key")
    with shared_client.transaction(["victim"], wait_applied=True) as txn:
        victim.begin(txn.id).put(key, b"committed")
    before = participant_view(victim)
    for target in (checkpoint["checkpoint_id"], "cp-real"):
        rollback = {
            "round_id": _id("rb"),
            "kind": common_pb2.KIND_ROLLBACK,
            "checkpoint_id": target,
        }
        execute = {**rollback, "decision": common_pb2.DECISION_COMMIT}
        codes.add(_exchange(attacker, victim, [_batch(term, prepares=[rollback])]))
        codes.add(_exchange(attacker, victim, [_batch(term, decides=[execute])]))
    assert codes <= expected_refusal(attacker), f"{attacker.label}: {codes}"
    assert participant_view(victim) == before
    assert victim.state.get(key) == b"committed"
    assert victim.state.get("after-checkpoint") == b"kept"
    assert [c.checkpoint_id for c in victim.checkpoints()] == ["cp-real"]


@pytest.mark.parametrize("kind", COORDINATOR_IMPOSTORS)
def test_a_fake_coordinator_cannot_fence_with_the_largest_term(
    kind: str,
    attackers: Attackers,
    victim: Participant,
    operator: OperatorView,
    shared_client: SyncConcordClient,
) -> None:
    """One Decide (and one Prepare, and a batch) with term 2^64-1: refused; the term
    the participant has seen is unchanged and the real cluster still reaches it."""
    attacker = _attacker(attackers, kind)
    before = participant_view(victim)
    decide = {
        "round_id": _id("fence"),
        "kind": common_pb2.KIND_TXN,
        "decision": common_pb2.DECISION_ABORT,
    }
    prepare = {"round_id": _id("fence"), "kind": common_pb2.KIND_TXN}
    codes = {
        _exchange(attacker, victim, [_batch(U64_MAX, decides=[decide])]),
        _exchange(attacker, victim, [_batch(U64_MAX, prepares=[prepare])]),
    }
    with attacker.channel(f"127.0.0.1:{victim.port}", Role.PARTICIPANT, "victim") as channel:
        ping = participant_pb2_grpc.ParticipantServiceStub(channel).Ping
        codes.add(status_of(lambda: ping(participant_pb2.PingRequest(term=U64_MAX), timeout=5))[0])
    assert codes <= expected_refusal(attacker), f"{attacker.label}: {codes}"
    assert participant_view(victim) == before
    assert victim.term_seen < U64_MAX
    with shared_client.transaction(["victim"], wait_applied=True) as txn:
        victim.begin(txn.id).put(_id("after-fence"), b"ok")
    assert txn.decision is Decision.COMMIT


# ====================================================================== membership


NON_OPERATORS = [
    "plaintext",
    "client",
    "participant-p1",
    "operator-other-cluster",
    "operator-other-ca",
]


@pytest.mark.parametrize("kind", NON_OPERATORS)
def test_add_member_needs_an_operator(
    kind: str,
    attackers: Attackers,
    operator: OperatorView,
    shared_cluster: LocalCluster,
    shared_client: SyncConcordClient,
) -> None:
    """Three AddMember calls by someone who is not an operator: refused before the
    would-be node is even probed; members, leader and term unchanged."""
    attacker = _attacker(attackers, kind)
    before, members = operator.quiet(), operator.members()
    leader, term = operator.leader_id(), operator.status().term
    with listeners(6) as fakes:
        codes = set()
        for i in range(3):
            raft, grpc_ = fakes[2 * i], fakes[2 * i + 1]
            request = membership_pb2.AddMemberRequest(
                node_id=f"c{4 + i}", raft=raft.address, grpc=grpc_.address
            )
            with attacker.channel(operator.leader_address()) as channel:
                stub = membership_pb2_grpc.MembershipServiceStub(channel)
                codes.add(status_of(lambda s=stub, r=request: s.AddMember(r, timeout=15))[0])
        assert codes <= expected_refusal(attacker), f"{attacker.label}: {codes}"
        assert sum(f.connections for f in fakes) == 0, "the leader probed the would-be node"
    assert operator.members() == members
    _assert_chain_unchanged(operator, before)
    assert (operator.leader_id(), operator.status().term) == (leader, term)
    _commits(shared_client)


def test_an_operator_cannot_add_a_node_that_does_not_prove_the_secret(
    attackers: Attackers,
    operator: OperatorView,
    shared_cluster: LocalCluster,
    shared_client: SyncConcordClient,
) -> None:
    """Even an operator's AddMember is refused when the new node only says it holds
    the secret: a node certificate of this cluster and a 'match' answer are not a
    proof. Three tries; members and every node's view unchanged, commits go on."""
    before, members = operator.quiet(), operator.members()
    leader, term = operator.leader_id(), operator.status().term
    admin = attackers.of_cluster(Role.OPERATOR, "admin")
    for i, holder in enumerate(
        [
            attackers.of_cluster(Role.NODE, "c7"),
            attackers.of_cluster(Role.NODE, "c8"),
            attackers.other_ca(Role.NODE, "c9"),
        ]
    ):
        node_id = ["c7", "c8", "c9"][i]
        with listeners(1) as [raft]:
            fake = FakeNode(node_id, members, raft.address)
            assert holder.key is not None and holder.cert is not None
            server, address = _grpc_server(holder.key, holder.cert, attackers.ca)
            membership_pb2_grpc.add_MembershipServiceServicer_to_server(fake, server)
            coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(fake, server)
            server.start()
            fake.members[-1] = (node_id, raft.address, address)
            try:
                request = membership_pb2.AddMemberRequest(
                    node_id=node_id, raft=raft.address, grpc=address
                )
                with admin.channel(operator.leader_address()) as channel:
                    stub = membership_pb2_grpc.MembershipServiceStub(channel)
                    code, details = status_of(lambda s=stub, r=request: s.AddMember(r, timeout=15))
            finally:
                server.stop(0)
        assert code == "FAILED_PRECONDITION", f"{holder.label}: {code} {details}"
        assert raft.connections == 0, "the cluster dialled the would-be node's Raft port"
    for node in shared_cluster.nodes.values():
        view = operator.membership(node.address.grpc).ListMembers(
            membership_pb2.ListMembersRequest(), timeout=CALL_TIMEOUT_S
        )
        assert sorted((m.node_id, m.raft, m.grpc) for m in view.members) == members
    _assert_chain_unchanged(operator, before)
    assert (operator.leader_id(), operator.status().term) == (leader, term)
    _commits(shared_client)


@pytest.mark.parametrize("kind", [*NON_OPERATORS, "node-of-this-cluster"])
def test_remove_member_needs_an_operator(
    kind: str, attackers: Attackers, operator: OperatorView, shared_cluster: LocalCluster
) -> None:
    attacker = (
        attackers.of_cluster(Role.NODE, "c9")
        if kind == "node-of-this-cluster"
        else _attacker(attackers, kind)
    )
    before, members = operator.quiet(), operator.members()
    follower = next(n for n in shared_cluster.nodes if n != operator.leader_id())
    with attacker.channel(operator.leader_address()) as channel:
        stub = membership_pb2_grpc.MembershipServiceStub(channel)
        request = membership_pb2.RemoveMemberRequest(node_id=follower)
        code, details = status_of(lambda: stub.RemoveMember(request, timeout=15))
    assert code in expected_refusal(attacker), f"{attacker.label}: {code} {details}"
    assert operator.members() == members
    _assert_chain_unchanged(operator, before)


@pytest.mark.parametrize("kind", [*NON_OPERATORS, "node-of-this-cluster"])
def test_transfer_leader_needs_an_operator(
    kind: str, attackers: Attackers, operator: OperatorView, shared_cluster: LocalCluster
) -> None:
    """Twenty TransferLeader calls (once: term 2 -> 22 in 6 s): all refused, the
    leader and its term unchanged."""
    attacker = (
        attackers.of_cluster(Role.NODE, "c9")
        if kind == "node-of-this-cluster"
        else _attacker(attackers, kind)
    )
    operator.quiet()
    leader, term = operator.leader_id(), operator.status().term
    codes = set()
    with attacker.channel(operator.leader_address()) as channel:
        stub = operations_pb2_grpc.OperationsServiceStub(channel)
        request = operations_pb2.TransferLeaderRequest()
        for _ in range(20):
            codes.add(status_of(lambda: stub.TransferLeader(request, timeout=10))[0])
    assert codes <= expected_refusal(attacker), f"{attacker.label}: {codes}"
    for node in shared_cluster.nodes.values():
        status = operator.status(node.address.grpc)
        assert (status.leader_id, status.term) == (leader, term), node.address.node_id


# ====================================================================== operator actions


@pytest.fixture
def open_txn(shared_client: SyncConcordClient, operator: OperatorView) -> Iterator[str]:
    """A transaction of the client ``app`` over p1, still ACTIVE; aborted after."""
    txn = shared_client.begin(["p1"], timeout_s=60)
    try:
        yield txn.id
    finally:
        shared_client.abort(txn.id, "test over")
        operator.quiet()


def _unchanged_round(operator: OperatorView, round_id: str, before: Any) -> None:
    after = operator.get(round_id)
    assert (after.phase, after.decision, list(after.participants)) == (
        before.phase,
        before.decision,
        list(before.participants),
    )


@pytest.mark.parametrize("kind", NON_OPERATORS)
def test_retry_and_resolve_need_an_operator(
    kind: str, attackers: Attackers, operator: OperatorView, open_txn: str
) -> None:
    attacker = _attacker(attackers, kind)
    chain_before = operator.quiet(open_ok=[open_txn])
    round_before = operator.get(open_txn)
    local_before = [r for r in operator.chain(local=True) if r["event"].startswith("operator_")]
    with attacker.channel(operator.leader_address()) as channel:
        stub = operations_pb2_grpc.OperationsServiceStub(channel)
        retry = operations_pb2.RetryRoundRequest(round_id=open_txn)
        resolve = operations_pb2.ResolveEscalationRequest(
            round_id=open_txn, participant_id="p1", note="settled", step=0
        )
        codes = {
            status_of(lambda: stub.RetryRound(retry, timeout=5))[0],
            status_of(lambda: stub.ResolveEscalation(resolve, timeout=5))[0],
        }
    assert codes <= expected_refusal(attacker), f"{attacker.label}: {codes}"
    _unchanged_round(operator, open_txn, round_before)
    assert operator.quiet(open_ok=[open_txn]) == chain_before
    local_after = [r for r in operator.chain(local=True) if r["event"].startswith("operator_")]
    assert local_after == local_before, "an operator action was audited for a non-operator"


@pytest.mark.parametrize("kind", ["client", "participant-p2", "operator-other-cluster"])
def test_abort_of_another_clients_transaction_is_refused(
    kind: str, attackers: Attackers, operator: OperatorView, open_txn: str
) -> None:
    """Another client (or a participant that is not in it) aborting app's transaction
    with a reason that would be audited as an operator's: refused; the transaction is
    still open and undecided, and no abort is in the audit."""
    attacker = (
        attackers.of_cluster(Role.PARTICIPANT, "p2")
        if kind == "participant-p2"
        else _attacker(attackers, kind)
    )
    chain_before = operator.quiet(open_ok=[open_txn])
    round_before = operator.get(open_txn)
    with attacker.channel(operator.leader_address()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        request = coordinator_pb2.AbortRequest(txn_id=open_txn, reason="operator: cleanup")
        code, details = status_of(lambda: stub.Abort(request, timeout=5))
    assert code in expected_refusal(attacker), f"{attacker.label}: {code} {details}"
    _unchanged_round(operator, open_txn, round_before)
    assert round_before.decision == common_pb2.DECISION_UNSPECIFIED
    assert operator.quiet(open_ok=[open_txn]) == chain_before


def test_a_clients_own_abort_is_not_audited_as_an_operators(
    attackers: Attackers, operator: OperatorView, shared_client: SyncConcordClient
) -> None:
    """A client may abort its own transaction, but not pass it off as an operator's
    action: refused, or audited with operator false."""
    txn = shared_client.begin(["p1"], timeout_s=60)
    app = attackers.of_cluster(Role.CLIENT, CLIENT)
    with app.channel(operator.leader_address()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        request = coordinator_pb2.AbortRequest(txn_id=txn.id, reason="operator: said so")
        code, details = status_of(lambda: stub.Abort(request, timeout=5))
    if code != "OK":
        assert code in {"INVALID_ARGUMENT", *DENIED}, f"{code} {details}"
        shared_client.abort(txn.id, "test over")
    chain = operator.quiet()
    aborts = [
        r["detail"] for r in chain if r["event"] == "abort_requested" and r["round_id"] == txn.id
    ]
    assert aborts and not any(a["operator"] for a in aborts), aborts


def test_a_clients_abort_of_an_unknown_id_is_not_found_and_leaves_no_tombstone(
    attackers: Attackers, operator: OperatorView, shared_client: SyncConcordClient
) -> None:
    """Nothing to abort: NOT_FOUND (it said "may not abort", which misled a client
    cleaning up after a begin that never landed). And no presumed-abort tombstone: one
    would abort the id's transaction when its owner begins it."""
    txn_id = f"t-{uuid.uuid4().hex[:12]}"
    app = attackers.of_cluster(Role.CLIENT, CLIENT)
    with app.channel(operator.leader_address()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        request = coordinator_pb2.AbortRequest(txn_id=txn_id, reason="cleanup")
        code, details = status_of(lambda: stub.Abort(request, timeout=5))
    assert code == "NOT_FOUND" and "nothing to abort" in details, f"{code} {details}"
    txn = shared_client.begin(["p1"], txn_id=txn_id, timeout_s=60)
    assert shared_client.get(txn.id).phase == "ACTIVE"
    shared_client.abort(txn.id, "test over")


def test_report_escalations_only_for_itself(
    attackers: Attackers, operator: OperatorView, shared_cluster: LocalCluster
) -> None:
    """p1, a client or an outsider reporting an empty set for participant 'esc' (which
    would wipe its escalations): refused; its escalation is still there."""
    esc = attackers.of_cluster(Role.PARTICIPANT, "esc")
    round_id = _id("r-esc")
    with esc.channel(operator.leader_address()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        stub.RegisterParticipant(
            coordinator_pb2.RegisterParticipantRequest(
                participant_id="esc", endpoint="127.0.0.1:9"
            ),
            timeout=CALL_TIMEOUT_S,
        )
        stub.ReportEscalations(
            coordinator_pb2.ReportEscalationsRequest(
                participant_id="esc",
                escalations=[
                    coordinator_pb2.Escalation(
                        round_id=round_id, key="refund-1", detail="bank down"
                    )
                ],
            ),
            timeout=CALL_TIMEOUT_S,
        )
    try:
        before = operator.quiet()
        escalation = list(operator.get(round_id).escalations)
        assert [e.key for e in escalation] == ["refund-1"]
        wipe = coordinator_pb2.ReportEscalationsRequest(participant_id="esc")
        for kind in ("participant-p1", "client", "operator-other-cluster", "plaintext"):
            attacker = _attacker(attackers, kind)
            with attacker.channel(operator.leader_address()) as channel:
                stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
                code, details = status_of(lambda s=stub: s.ReportEscalations(wipe, timeout=5))
            assert code in expected_refusal(attacker), f"{attacker.label}: {code} {details}"
        assert list(operator.get(round_id).escalations) == escalation
        _assert_chain_unchanged(operator, before)
    finally:
        operator.operations().UnregisterParticipant(
            operations_pb2.UnregisterParticipantRequest(
                participant_id="esc", drop_escalations=True
            ),
            timeout=CALL_TIMEOUT_S,
        )


# ====================================================================== bad input


def test_a_nul_in_an_id_never_reaches_a_participant(
    operator: OperatorView,
    shared_agents: dict[str, AgentProcess],
    shared_client: SyncConcordClient,
    attackers: Attackers,
) -> None:
    """A NUL (or another control character) in a txn id naming p1: refused at the
    edge with INVALID_ARGUMENT, never in the log, and p1 (which could not store such
    an id) is still well: a normal transaction with it commits."""
    before = operator.quiet()
    app = attackers.of_cluster(Role.CLIENT, CLIENT)
    codes = set()
    with app.channel(operator.leader_address()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        for txn_id in ("t\x00nul", "t\x1b[2Jclear", "t\u202eevil", "t\nline"):
            begin = coordinator_pb2.BeginTxnRequest(txn_id=txn_id, participants=["p1"])
            commit = coordinator_pb2.CommitRequest(txn_id=txn_id, begin=begin)
            codes.add(status_of(lambda b=begin: stub.BeginTxn(b, timeout=5))[0])
            codes.add(status_of(lambda c=commit: stub.Commit(c, timeout=5))[0])
    assert codes == {"INVALID_ARGUMENT"}, codes
    _assert_chain_unchanged(operator, before)
    txn = shared_client.begin(["p1"], timeout_s=30)
    shared_agents["p1"].stage(txn, f"k-{txn.id}", "v")
    assert shared_client.commit(txn.id) is Decision.COMMIT


def test_oversized_requests_never_reach_the_log(
    operator: OperatorView, attackers: Attackers, shared_client: SyncConcordClient
) -> None:
    """Twenty BeginTxn of 3.9 MB each (once: 275 of them filled the journal): refused
    before they are proposed; nothing in the log, the cluster commits on."""
    before = operator.quiet()
    leader_status = operator.status()
    app = attackers.of_cluster(Role.CLIENT, CLIENT)
    codes = set()
    with app.channel(operator.leader_address()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        for i in range(20):
            request = coordinator_pb2.BeginTxnRequest(
                txn_id=f"big-{i}-" + "x" * (3_900_000 - 8), session_id="s"
            )
            codes.add(status_of(lambda r=request: stub.BeginTxn(r, timeout=10))[0])
    assert codes <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, codes
    _assert_chain_unchanged(operator, before)
    assert operator.status().commit_index == leader_status.commit_index
    _commits(shared_client)


def _refused_writes(ops: Any, coordinator: Any, open_txn: str) -> dict[str, tuple[Any, Any]]:
    """case -> (the stub's method, its request)."""
    c, o = coordinator_pb2, operations_pb2
    unknown = _id("unknown")
    return {
        "commit-unknown-txn": (coordinator.Commit, c.CommitRequest(txn_id=unknown)),
        "enlist-into-unknown-txn": (
            coordinator.Enlist,
            c.EnlistRequest(txn_id=unknown, participant_id="p1"),
        ),
        "begin-an-id-in-use": (
            coordinator.BeginTxn,
            c.BeginTxnRequest(txn_id=open_txn, participants=["p2"], timeout_ms=60_000),
        ),
        "begin-17-participants": (
            coordinator.BeginTxn,
            c.BeginTxnRequest(txn_id=unknown, participants=[f"q{i}" for i in range(17)]),
        ),
        "saga-without-steps": (coordinator.BeginSaga, c.BeginSagaRequest(saga_id=unknown)),
        "operator-abort-of-unknown-round": (
            coordinator.Abort,
            c.AbortRequest(txn_id=unknown, reason="operator: gone"),
        ),
        "operator-resolve-of-unknown-round": (
            ops.ResolveEscalation,
            o.ResolveEscalationRequest(round_id=unknown),
        ),
        "operator-unregister-of-unknown-participant": (
            ops.UnregisterParticipant,
            o.UnregisterParticipantRequest(participant_id=unknown),
        ),
    }


REFUSED_WRITES = [
    "commit-unknown-txn",
    "enlist-into-unknown-txn",
    "begin-an-id-in-use",
    "begin-17-participants",
    "saga-without-steps",
    "operator-abort-of-unknown-round",
    "operator-resolve-of-unknown-round",
    "operator-unregister-of-unknown-participant",
]


@pytest.mark.parametrize("case", REFUSED_WRITES)
def test_a_refused_write_costs_no_log_entry(
    case: str, operator: OperatorView, attackers: Attackers, open_txn: str
) -> None:
    """A write the leader can tell is refused (unknown round or participant, an id in
    use, a count over its limit) is refused before it is proposed: no Raft entry, no
    audit record (each would cost a journal write, and anyone may send them by the
    thousand)."""
    before = operator.quiet(open_ok=[open_txn])
    index = operator.status().commit_index
    app = attackers.of_cluster(Role.CLIENT, CLIENT)
    with app.channel(operator.leader_address()) as channel:
        coordinator = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        if case.startswith("operator-"):
            coordinator = operator.coordinator()
        method, request = _refused_writes(operator.operations(), coordinator, open_txn)[case]
        code, details = status_of(lambda: method(request, timeout=CALL_TIMEOUT_S))
    assert code not in ("OK", "UNKNOWN", "INTERNAL"), (code, details)
    after = operator.quiet(open_ok=[open_txn])
    assert after == before, f"{code}: {details}; yet in the log: {_new_records(before, after)}"
    assert operator.status().commit_index == index


# ====================================================================== CheckSecret


@pytest.mark.parametrize(
    "kind",
    ["plaintext", "client", "participant-p1", "operator", "node-other-cluster", "node-other-ca"],
)
def test_check_secret_answers_nodes_only(
    kind: str, attackers: Attackers, operator: OperatorView, shared_cluster: LocalCluster
) -> None:
    attacker = (
        attackers.of_cluster(Role.OPERATOR, "admin")
        if kind == "operator"
        else _attacker(attackers, kind)
    )
    request = coordinator_pb2.CheckSecretRequest(nonce=os.urandom(NONCE_BYTES), mac=os.urandom(32))
    for address in shared_cluster.grpc_addresses:
        with attacker.channel(address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            code, details = status_of(lambda s=stub: s.CheckSecret(request, timeout=5))
        assert code in expected_refusal(attacker), (
            f"{attacker.label} at {address}: {code} {details}"
        )


def test_check_secret_is_rate_limited_for_a_node(
    attackers: Attackers, operator: OperatorView
) -> None:
    """A node certificate (one that is no member: a stolen or spare one) guessing the
    secret: a burst of 60 guesses gets a handful of answers (all "no"), the rest
    RESOURCE_EXHAUSTED."""
    node = attackers.of_cluster(Role.NODE, "c9")
    answers: list[Any] = []
    codes: dict[str, int] = {}
    started = time.monotonic()
    with node.channel(operator.leader_address()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        for _ in range(60):
            request = coordinator_pb2.CheckSecretRequest(
                nonce=os.urandom(NONCE_BYTES), mac=os.urandom(32)
            )
            try:
                answers.append(stub.CheckSecret(request, timeout=5))
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as error:
                name = error.code().name  # type: ignore[attr-defined]
                codes[name] = codes.get(name, 0) + 1
    elapsed = time.monotonic() - started
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    # SECRET_CHECKS_BURST (10) at once, SECRET_CHECKS_PER_S (2) after
    assert codes.get("OK", 0) <= 10 + 2 * elapsed + 1, (codes, elapsed)
    assert codes.get("RESOURCE_EXHAUSTED", 0) >= 60 - (10 + 2 * elapsed + 1), (codes, elapsed)
    assert not any(a.match or a.proof for a in answers)


# ====================================================================== the Raft port


def _closed_by_peer(sock: socket.socket, payload: bytes) -> bool:
    """Send ``payload`` in pieces; True once the node has closed the connection."""
    try:
        for start in range(0, len(payload), 1 << 16):
            sock.sendall(payload[start : start + (1 << 16)])
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_junk_on_the_raft_port_costs_no_leadership(
    operator: OperatorView, shared_cluster: LocalCluster, shared_client: SyncConcordClient
) -> None:
    """A 64 MB frame header and garbage frames, to every node's Raft port: each
    connection is dropped; the leader keeps its leadership and term, commits go on."""
    operator.quiet()
    leader, term = operator.leader_id(), operator.status().term
    started = time.monotonic()
    for node in shared_cluster.nodes.values():
        host, port = node.address.raft.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            assert _closed_by_peer(sock, struct.pack("i", 64 << 20) + b"\0" * (1 << 20))
        for size in (1, 100, 4096, 1 << 16):
            junk = os.urandom(size)
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                assert _closed_by_peer(sock, struct.pack("i", len(junk)) + junk)
            # no header at all: random bytes whose first four read as a negative length
            # (a random positive one under the frame limit would be waited for, rightly)
            garbage = bytearray(os.urandom(size + 4))
            garbage[3] |= 0x80
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                assert _closed_by_peer(sock, bytes(garbage))
    assert time.monotonic() - started < 20
    for _ in range(5):
        _commits(shared_client)
    for node in shared_cluster.nodes.values():
        status = operator.status(node.address.grpc)
        assert (status.leader_id, status.term) == (leader, term), node.address.node_id


# ====================================================================== floods


@pytest.mark.parametrize(
    "kind", ["plaintext", "client", "operator", "node-other-cluster", "node-other-ca"]
)
def test_registrations_need_a_participant_certificate(
    kind: str, attackers: Attackers, operator: OperatorView
) -> None:
    """Junk registrations from anything but a participant certificate (and from p1 for
    ids that are not its own): refused, none reaches the audit chain."""
    attacker = (
        attackers.of_cluster(Role.OPERATOR, "admin")
        if kind == "operator"
        else _attacker(attackers, kind)
    )
    before = operator.quiet()
    p1 = attackers.of_cluster(Role.PARTICIPANT, "p1")
    codes: dict[str, set[str]] = {attacker.label: set(), p1.label: set()}
    for who in (attacker, p1):
        with who.channel(operator.leader_address()) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            for i in range(50):
                request = coordinator_pb2.RegisterParticipantRequest(
                    participant_id=f"junk-{uuid.uuid4().hex[:8]}-{i}", endpoint="127.0.0.1:9"
                )
                codes[who.label].add(
                    status_of(lambda s=stub, r=request: s.RegisterParticipant(r, timeout=5))[0]
                )
    assert codes[attacker.label] <= expected_refusal(attacker), codes
    assert codes[p1.label] <= DENIED, codes
    _assert_chain_unchanged(operator, before)


def test_an_operator_can_unregister_a_participant(
    attackers: Attackers, operator: OperatorView
) -> None:
    """Only an operator: a client, another participant or the participant itself are
    refused; the operator's call removes it (a second one finds nothing)."""
    temp = attackers.of_cluster(Role.PARTICIPANT, "temp")
    with temp.channel(operator.leader_address()) as channel:
        coordinator_pb2_grpc.CoordinatorServiceStub(channel).RegisterParticipant(
            coordinator_pb2.RegisterParticipantRequest(
                participant_id="temp", endpoint="127.0.0.1:9"
            ),
            timeout=CALL_TIMEOUT_S,
        )
    before = operator.quiet()
    request = operations_pb2.UnregisterParticipantRequest(participant_id="temp")
    for who in (
        attackers.of_cluster(Role.CLIENT, "mallory"),
        attackers.of_cluster(Role.PARTICIPANT, "p1"),
        temp,
        attackers.other_cluster(Role.OPERATOR, "admin"),
    ):
        with who.channel(operator.leader_address()) as channel:
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            code, details = status_of(lambda s=stub: s.UnregisterParticipant(request, timeout=5))
        assert code in DENIED, f"{who.label}: {code} {details}"
    _assert_chain_unchanged(operator, before)
    ops = operator.operations()
    assert status_of(lambda: ops.UnregisterParticipant(request, timeout=5)) == ("OK", "")
    assert status_of(lambda: ops.UnregisterParticipant(request, timeout=5))[0] == "NOT_FOUND"
    with temp.channel(operator.leader_address()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        report = coordinator_pb2.ReportEscalationsRequest(participant_id="temp")
        code, details = status_of(lambda: stub.ReportEscalations(report, timeout=5))
    assert code == "FAILED_PRECONDITION" and "not registered" in details, (code, details)


FLOOD = 10_000
FLOOD_CONCURRENCY = 64
PER_CALLER_MAX = 5_000  # Limits.rounds_inflight_per_caller_max
# A flood of this size on a small, busy machine may see a leader election: calls in
# that window answer UNAVAILABLE "no leader" (retry), never anything unclear.
NO_LEADER = ("UNAVAILABLE: no leader", "UNAVAILABLE: leadership moved")


async def _flood(
    flooder: Callable[[], grpc.aio.Channel], other: Callable[[], grpc.aio.Channel], count: int
) -> tuple[dict[str, int], str]:
    """``count`` BeginTxn from ``flooder``, 64 at a time; once its quota is full, one
    BeginTxn from ``other``. (codes of the flood, status of the other's call)."""
    codes: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    prefix = uuid.uuid4().hex[:8]
    quota_full = asyncio.Event()

    async def begin(stub: Any, txn_id: str) -> str:
        request = coordinator_pb2.BeginTxnRequest(txn_id=txn_id, timeout_ms=120_000)
        try:
            await stub.BeginTxn(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            name = error.code().name
            return name if name == "RESOURCE_EXHAUSTED" else f"{name}: {error.details()}"
        return "OK"

    async def worker() -> None:
        async with flooder() as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                name = await begin(stub, f"flood-{prefix}-{i}")
                if name == "RESOURCE_EXHAUSTED":
                    quota_full.set()
                codes[name] = codes.get(name, 0) + 1

    async def meanwhile() -> str:
        await asyncio.wait_for(quota_full.wait(), 120)
        async with other() as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            return await begin(stub, f"other-{prefix}")

    *_, other_status = await asyncio.gather(
        *(worker() for _ in range(FLOOD_CONCURRENCY)), meanwhile()
    )
    return codes, other_status


def test_a_begin_flood_from_one_identity_leaves_room_for_others(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """10,000 BeginTxn from one client identity fill its own quota
    (rounds_inflight_per_caller_max), not the cluster's: another client begins while
    the flood is refused, and commits after it."""
    attackers = Attackers(cluster, tmp_path / "attackers")
    flooder = attackers.of_cluster(Role.CLIENT, "flooder")
    app = attackers.of_cluster(Role.CLIENT, CLIENT)
    leader = cluster.nodes[cluster.leader()].address.grpc
    started = time.monotonic()
    codes, other = asyncio.run(
        _flood(lambda: flooder.aio_channel(leader), lambda: app.aio_channel(leader), FLOOD)
    )
    elapsed = time.monotonic() - started
    unclear = {c: n for c, n in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED")}
    assert all(c.startswith(NO_LEADER) for c in unclear), codes
    no_leader = sum(unclear.values())
    assert no_leader <= FLOOD // 50, codes
    assert codes.get("OK", 0) <= PER_CALLER_MAX, codes
    assert codes.get("RESOURCE_EXHAUSTED", 0) >= FLOOD - PER_CALLER_MAX - no_leader, codes
    assert other == "OK" or other.startswith(NO_LEADER), other
    tls = cluster.transport(Role.CLIENT, CLIENT)
    with SyncConcordClient(cluster.grpc_addresses, tls=tls, call_timeout_s=10) as client:
        txn = client.begin([])
        assert client.commit(txn.id) is Decision.COMMIT
    assert elapsed < 120, f"the flood took {elapsed:.0f}s"
