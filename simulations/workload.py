"""Simulated clients: bank transactions (read-modify-write transfers, transfers by
commutative adds, read-only audits), aborts, global checkpoints, rollbacks and sagas;
and the operator, who settles escalated saga compensations.

A client is a generator that yields what it waits for (``Call``, ``Send``, ``Sleep``);
the world resumes it with the reply, or ``None`` when the call timed out. That keeps
each client's protocol readable top to bottom.

What a client does with an unknown outcome is the point (rule 8): it repeats the same
request under the same id (idempotent), or asks for the status by id; within the
coordinator's retention window an id that is still unknown is presumed aborted
*through the log*. It never starts the same work again under a new id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator.core.entries import (
    Abort,
    BeginRound,
    BeginSaga,
    BeginTxn,
    Entry,
    PresumeAbort,
    RequestCommit,
    ResolveStep,
    SagaStepSpec,
)
from coordinator.core.errors import ErrorCode
from coordinator.core.leader import ProposeResult, ProposeStatus
from coordinator.core.messages import TxnAction
from coordinator.core.types import Kind
from participant_sdk.isolation import Add, Write
from simulations import history as h
from simulations.cluster import (
    ClientReply,
    ClientRequest,
    EscalationsReply,
    EscalationsRequest,
    ListReply,
    ListRequest,
    StatusReply,
    StatusRequest,
)
from simulations.participant import (
    ACCOUNTS,
    TRANSFER_ACTION,
    Read,
    ReadReply,
    Stage,
    StageReply,
)
from simulations.sagas import StepPlan

if TYPE_CHECKING:
    from simulations.world import World

COMMITTED, ABORTED, OUTCOME_UNKNOWN = "COMMITTED", "ABORTED", "UNKNOWN"
SESSION = "bank"
SAGA_ACTIONS = ("book", "reserve", "charge", "ship")


@dataclass(frozen=True, slots=True)
class Call:
    dst: str
    make_request: Callable[[int], Any]


@dataclass(frozen=True, slots=True)
class Send:
    dst: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Sleep:
    ms: int


Process = Generator[Call | Send | Sleep, Any, Any]
Work = Generator[Call | Send | Sleep, Any, bool]  # a transaction's work: False to abort


def _by_participant(deltas: dict[tuple[str, str], int]) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = {}
    for pid, key in deltas:
        grouped.setdefault(pid, []).append(key)
    return {pid: tuple(keys) for pid, keys in grouped.items()}


class SimClient:
    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.rng = world.loop.rng
        self.config = world.config
        self.leader_guess: str | None = None
        self.count = 0
        self.busy = False

    def run(self) -> Process:
        config = self.config
        while self.world.loop.now_ms < config.workload_ms:
            self.busy = True
            roll = self.rng.random()
            if roll < config.checkpoint_p:
                yield from self.global_checkpoint()
            elif roll < config.checkpoint_p + config.rollback_p and self.world.kept_checkpoints:
                yield from self.rollback()
            elif roll < config.checkpoint_p + config.rollback_p + config.saga_p:
                yield from self.saga()
            else:
                yield from self.transfer()
            self.busy = False
            yield Sleep(self.rng.randint(0, config.think_ms_max))

    # ------------------------------------------------------------------ operations

    def transfer(self) -> Process:
        """A transaction on the bank: a read-only audit of every account, a transfer
        by commutative adds, or a read-modify-write transfer."""
        config, roll = self.config, self.rng.random()
        if roll < config.audit_p:
            participants = self.rng.sample(
                self.world.participant_ids, k=len(self.world.participant_ids)
            )
            yield from self._transaction(
                "audit", participants, lambda txn_id: self._audit(txn_id, participants)
            )
            return
        deltas = self._plan_transfer()
        participants = list(dict.fromkeys(pid for pid, _ in deltas))
        # Drawn only when enabled, so a run without one-shot transactions draws as before.
        if config.one_shot_p and self.rng.random() < config.one_shot_p:
            yield from self._one_shot_transfer(participants, deltas)
            return
        if roll < config.audit_p + config.add_transfer_p:
            yield from self._transaction(
                "add-transfer", participants, lambda txn_id: self._add_transfer(txn_id, deltas)
            )
        else:
            yield from self._transaction(
                "transfer", participants, lambda txn_id: self._rmw_transfer(txn_id, deltas)
            )

    def _plan_transfer(self) -> dict[tuple[str, str], int]:
        """Money from one account to one or two others, each at its own participant
        (two accounts at the only participant when there is one); account 0 is hot."""
        ids, keys = self.world.participant_ids, self.world.account_keys
        if len(ids) == 1:
            accounts = [(ids[0], key) for key in self.rng.sample(keys, k=min(2, len(keys)))]
        else:
            chosen = self.rng.sample(ids, k=min(len(ids), self.rng.choice((2, 2, 3))))
            accounts = [(pid, self._pick_account()) for pid in chosen]
        amount = self.rng.randint(1, 60)
        deltas = {accounts[0]: -amount}
        rest = accounts[1:]
        for i, account in enumerate(rest):
            deltas[account] = amount // len(rest) + (amount % len(rest) if i == 0 else 0)
        return deltas

    def _pick_account(self) -> str:
        keys = self.world.account_keys
        if len(keys) == 1 or self.rng.random() < self.config.hot_account_p:
            return keys[0]
        return self.rng.choice(keys[1:])

    def _transaction(
        self, op: str, participants: list[str], work: Callable[[str], Work]
    ) -> Process:
        """Begin (or carry the begin along with the commit), do the work at the
        participants, then commit; if the work cannot be done, abort."""
        self.count += 1
        txn_id = f"{self.name}.t{self.count}"
        begun_ms = self.world.loop.now_ms
        begin = BeginTxn(
            txn_id=txn_id,
            session_id=SESSION,
            participants=tuple(participants),
            timeout_ms=self.config.txn_timeout_ms,
            now_ms=0,
        )
        # Some begins travel with the commit request (as ConcordClient.transaction
        # sends them): the work starts before the log has the transaction.
        carried = self.rng.random() < self.config.commit_carries_begin_p
        if not carried:
            result = yield from self.submit(begin)
            applied = result.applied
            if (
                result.status is not ProposeStatus.APPLIED
                or applied is None
                or applied.error is not None
            ):
                self.report(txn_id, (yield from self.resolve(txn_id, begun_ms)), op)
                return
        if not (yield from work(txn_id)):
            if not carried:  # a carried begin was never proposed: resolving presumes abort
                yield from self.submit(Abort(round_id=txn_id, reason="the work failed", now_ms=0))
            self.report(txn_id, (yield from self.resolve(txn_id, begun_ms)), op)
            return
        yield Sleep(self.rng.randint(1, 20))
        commit = yield from self.finish(txn_id, begin if carried else None)
        outcome = yield from self.outcome_of(txn_id, begun_ms, commit)
        self.report(txn_id, outcome, op)

    def _one_shot_transfer(
        self, participants: list[str], deltas: dict[tuple[str, str], int]
    ) -> Process:
        """A transfer as one-shot (``client.run``): each participant's part is an action
        that travels inside the commit, runs inside its Prepare (read the balance,
        stage the new one, or fail on insufficient funds) and is voted on at once."""
        self.count += 1
        txn_id = f"{self.name}.t{self.count}"
        begun_ms = self.world.loop.now_ms
        actions = tuple(
            TxnAction(
                participant_id=pid,
                action=TRANSFER_ACTION,
                payload=json.dumps(
                    dict(zip(keys, (deltas[(pid, k)] for k in keys), strict=True))
                ).encode(),
            )
            for pid, keys in _by_participant(deltas).items()
        )
        begin = BeginTxn(
            txn_id=txn_id,
            session_id=SESSION,
            participants=tuple(participants),
            timeout_ms=self.config.txn_timeout_ms,
            now_ms=0,
            actions=actions,
        )
        commit = yield from self.finish(txn_id, begin)
        outcome = yield from self.outcome_of(txn_id, begun_ms, commit)
        self.report(txn_id, outcome, "one-shot-transfer")

    def _rmw_transfer(self, txn_id: str, deltas: dict[tuple[str, str], int]) -> Work:
        """Read the balances, then write new ones (the lost-update-prone pattern:
        only the isolation check at Prepare keeps it safe). Insufficient funds: the
        client aborts. Some lease the keys as they read them (get_for_update)."""
        lease = self.rng.random() < self.config.lease_p
        seen: dict[tuple[str, str], int] = {}
        for pid, keys in _by_participant(deltas).items():
            values = yield from self.read(pid, txn_id, keys=keys, lease=lease)
            if values is None:
                return False
            seen.update({(pid, key): value for key, value in values.items()})
        if any(seen[a] + delta < 0 for a, delta in deltas.items()):
            return False  # insufficient funds
        for pid, keys in _by_participant(deltas).items():
            writes = tuple(
                (key, str(seen[(pid, key)] + deltas[(pid, key)]).encode()) for key in keys
            )
            if not (yield from self.stage(pid, txn_id, writes, begin=False)):
                return False
        return True

    def _add_transfer(self, txn_id: str, deltas: dict[tuple[str, str], int]) -> Work:
        """Blind commutative adds; the source's bound (min=0) is checked at Prepare."""
        for pid, keys in _by_participant(deltas).items():
            writes = tuple(
                (key, Add(delta=deltas[(pid, key)], min=0 if deltas[(pid, key)] < 0 else None))
                for key in keys
            )
            if not (yield from self.stage(pid, txn_id, writes, begin=True)):
                return False
        return True

    def _audit(self, txn_id: str, participants: list[str]) -> Work:
        """Read every account (by key, or by scanning the prefix), one participant
        after another, and note the total seen: a committed audit must see the
        bank's whole total, as of one moment everywhere."""
        scan = self.rng.random() < self.config.audit_scan_p
        total = count = 0
        for pid in participants:
            if scan:
                values = yield from self.read(pid, txn_id, prefix=ACCOUNTS)
            else:
                values = yield from self.read(pid, txn_id, keys=tuple(self.world.account_keys))
            if values is None:
                return False
            total += sum(values.values())
            count += len(values)
        how = "scan" if scan else "keys"
        self.world.history.record(
            h.SNAPSHOT, self.name, txn_id, str(total), accounts=str(count), by=how
        )
        return True

    def read(
        self,
        pid: str,
        txn_id: str,
        keys: tuple[str, ...] = (),
        prefix: str | None = None,
        lease: bool = False,
    ) -> Generator[Any, Any, dict[str, int] | None]:
        """Read in the branch at ``pid``: the balances, or None (closed, leased)."""
        for _ in range(self.config.work_attempts_max):
            reply = yield Call(
                pid,
                lambda request_id: Read(
                    request_id, txn_id, keys, prefix, lease, sent_ms=self.world.loop.now_ms
                ),
            )
            if isinstance(reply, ReadReply):
                return dict(reply.values) if reply.ok else None
        return None

    def stage(
        self, pid: str, txn_id: str, writes: tuple[tuple[str, Write], ...], *, begin: bool
    ) -> Work:
        for _ in range(self.config.work_attempts_max):
            reply = yield Call(
                pid,
                lambda request_id: Stage(
                    request_id, txn_id, writes, begin=begin, sent_ms=self.world.loop.now_ms
                ),
            )
            if isinstance(reply, StageReply):
                return reply.ok
        return False

    def finish(
        self, txn_id: str, begin: BeginTxn | None = None
    ) -> Generator[Any, Any, ProposeResult | None]:
        """Ask to commit (or, sometimes, abort); returns the commit request's result."""
        if self.rng.random() < self.config.client_abort_p:
            yield from self.submit(
                Abort(round_id=txn_id, reason="the client changed its mind", now_ms=0)
            )
            return None
        for _ in range(self.config.busy_retries_max):
            result = yield from self.submit(RequestCommit(txn_id=txn_id, now_ms=0), begin)
            error = result.applied.error if result.applied is not None else None
            if error is None or error.code is not ErrorCode.BUSY:
                return result
            yield Sleep(self.rng.randint(50, 300))
        yield from self.submit(Abort(round_id=txn_id, reason="participants stayed busy", now_ms=0))
        return None

    def outcome_of(
        self, txn_id: str, begun_ms: int, commit: ProposeResult | None
    ) -> Generator[Any, Any, str]:
        """Whatever happened to the commit request, the outcome is learned by id."""
        return (yield from self.resolve(txn_id, begun_ms))

    def global_checkpoint(self) -> Process:
        self.count += 1
        round_id = f"{self.name}.c{self.count}"
        yield from self._round(round_id, Kind.CHECKPOINT, round_id, "periodic")

    def rollback(self) -> Process:
        self.count += 1
        round_id = f"{self.name}.r{self.count}"
        checkpoint_id = self.rng.choice(self.world.kept_checkpoints)
        yield from self._round(round_id, Kind.ROLLBACK, checkpoint_id, "the plan went wrong")

    def _round(self, round_id: str, kind: Kind, checkpoint_id: str, label: str) -> Process:
        begun_ms = self.world.loop.now_ms
        entry = BeginRound(
            round_id=round_id,
            kind=kind,
            session_id=SESSION,
            participants=tuple(self.world.participant_ids),
            checkpoint_id=checkpoint_id,
            label=label,
            timeout_ms=self.config.round_timeout_ms,
            now_ms=0,
        )
        yield from self.submit(entry)
        outcome = yield from self.resolve(round_id, begun_ms)
        if kind is Kind.CHECKPOINT and outcome == COMMITTED:
            self.world.kept_checkpoints.append(checkpoint_id)
        self.report(round_id, outcome, kind.value.lower())

    def saga(self) -> Process:
        """Steps across participants, some failing or slow; sometimes cancelled."""
        config, rng = self.config, self.rng
        self.count += 1
        saga_id = f"{self.name}.s{self.count}"
        steps = []
        for _ in range(rng.randint(*config.saga_steps)):
            undo_roll = rng.random()
            if undo_roll < config.undo_stuck_p:
                undo_failures = config.compensation_attempts_max + 2
            elif undo_roll < config.undo_stuck_p + config.undo_flaky_p:
                undo_failures = rng.randint(1, config.compensation_attempts_max - 1)
            else:
                undo_failures = 0
            slow = rng.random() < config.step_slow_p
            plan = StepPlan(
                fails=rng.random() < config.step_fail_p,
                slow_ms=rng.randint(config.step_timeout_ms, 2 * config.step_timeout_ms)
                if slow
                else 0,
                undo_failures=undo_failures,
            )
            steps.append(
                SagaStepSpec(
                    participant_id=rng.choice(self.world.participant_ids),
                    action=rng.choice(SAGA_ACTIONS),
                    payload=plan.encode(),
                )
            )
        plan_of_steps = ",".join(s.participant_id for s in steps)
        self.world.history.record(h.SAGA_PLAN, self.name, saga_id, plan_of_steps)
        begun_ms = self.world.loop.now_ms
        begin = BeginSaga(
            saga_id=saga_id,
            session_id=SESSION,
            steps=tuple(steps),
            step_timeout_ms=config.step_timeout_ms,
            now_ms=0,
        )
        result = yield from self.submit(begin)
        began = result.status is ProposeStatus.APPLIED and result.applied is not None
        if began and result.applied.error is None and rng.random() < config.saga_abort_p:  # type: ignore[union-attr]
            yield Sleep(rng.randint(*config.saga_abort_after_ms))
            yield from self.submit(
                Abort(round_id=saga_id, reason="the client cancelled the saga", now_ms=0)
            )
        outcome = yield from self.resolve(saga_id, begun_ms, patience_ms=config.saga_patience_ms)
        self.report(saga_id, outcome, "saga")

    def report(self, round_id: str, outcome: str, op: str) -> None:
        self.world.history.record(h.CLIENT, self.name, round_id, outcome, op=op)
        if outcome in (COMMITTED, ABORTED):
            self.world.told.append(round_id)

    # ------------------------------------------------------------------ plumbing

    def submit(
        self, entry: Entry, begin: BeginTxn | None = None
    ) -> Generator[Any, Any, ProposeResult]:
        """Propose through whichever node leads (a commit request may carry its
        begin). Every entry a client proposes is idempotent by its id, so repeating it
        after an unknown outcome is safe."""
        saw_unknown = False
        for _ in range(self.config.submit_attempts_max):
            node = self.leader_guess or self.rng.choice(self.world.coordinator_ids)
            reply = yield Call(node, lambda request_id: ClientRequest(request_id, entry, begin))
            if not isinstance(reply, ClientReply) or reply.result.status is ProposeStatus.UNKNOWN:
                saw_unknown = True
                self.leader_guess = None
                yield Sleep(self.rng.randint(20, 100))
                continue
            if reply.result.status is ProposeStatus.NOT_LEADER:
                self.leader_guess = reply.leader_hint
                yield Sleep(self.rng.randint(5, 50))
                continue
            self.leader_guess = node
            return reply.result
        return ProposeResult(ProposeStatus.UNKNOWN if saw_unknown else ProposeStatus.NOT_LEADER)

    def resolve(
        self, round_id: str, begun_ms: int, patience_ms: int = 0
    ) -> Generator[Any, Any, str]:
        """Learn the outcome by id. An id still unknown inside the retention window was
        never begun: presume it aborted (through the log), which also blocks a late
        begin. Past the window an unknown id could be forgotten: report unknown. A
        round that is found but undecided (a long saga) is waited for up to
        ``patience_ms``."""
        window_end_ms = begun_ms + self.config.resolve_window_ms
        deadline_ms = max(window_end_ms, begun_ms + patience_ms)
        while self.world.loop.now_ms < deadline_ms:
            node = self.leader_guess or self.rng.choice(self.world.coordinator_ids)
            reply = yield Call(node, lambda request_id: StatusRequest(request_id, round_id))
            if not isinstance(reply, StatusReply):
                self.leader_guess = None
            elif not reply.leader:
                self.leader_guess = reply.leader_hint
            elif reply.found and reply.decision:
                self.leader_guess = node
                return COMMITTED if reply.decision == "COMMIT" else ABORTED
            elif not reply.found:
                self.leader_guess = node
                if self.world.loop.now_ms >= window_end_ms:
                    return OUTCOME_UNKNOWN  # begun and forgotten, perhaps: never presume
                yield from self.submit(PresumeAbort(round_id=round_id, now_ms=0))
                continue
            yield Sleep(self.rng.randint(30, 120))
        return OUTCOME_UNKNOWN


class Operator(SimClient):
    """A person watching `concord txn list`: an escalated compensation is fixed by hand
    in the outside world after a while, then resolved through the log."""

    def run(self) -> Process:
        config = self.config
        end_ms = config.workload_ms + config.liveness_bound_ms
        first_seen: dict[tuple[str, int], int] = {}
        while self.world.loop.now_ms < end_ms:
            yield Sleep(config.operator_poll_ms)
            escalated = yield from self._escalations()
            for saga_id, step, participant_id in escalated:
                now = self.world.loop.now_ms
                if now - first_seen.setdefault((saga_id, step), now) < config.operator_delay_ms:
                    continue
                # By hand, once: a later poll that still sees the escalation finds
                # the fix under the same key.
                self.world.outside.undo(
                    participant_id,
                    saga_id,
                    step,
                    f"{self.name}/{participant_id}/{saga_id}#{step}",
                    outcome_known=False,
                    by=self.name,
                )
                yield from self.submit(
                    ResolveStep(saga_id=saga_id, step=step, note="undone by hand", now_ms=0)
                )

    def _escalations(self) -> Generator[Any, Any, tuple[tuple[str, int, str], ...]]:
        node = self.leader_guess or self.rng.choice(self.world.coordinator_ids)
        reply = yield Call(node, lambda request_id: EscalationsRequest(request_id))
        if not isinstance(reply, EscalationsReply):
            self.leader_guess = None
            return ()
        if not reply.leader:
            self.leader_guess = reply.leader_hint
            return ()
        self.leader_guess = node
        return reply.escalated


class Reader(SimClient):
    """Someone running `concord txn list` over the latest rounds whose outcome a
    client was already told (a dashboard, an auditor): each round the leader answers
    is a read, recorded where it is served; a read that contradicts what a client was
    told is a violation (checkers.reads_match_what_clients_were_told)."""

    def run(self) -> Process:
        config = self.config
        end_ms = config.workload_ms + config.liveness_bound_ms
        while self.world.loop.now_ms < end_ms:
            yield Sleep(config.reader_poll_ms)
            recent = self.world.told[-config.reader_recent_rounds :]
            if not recent:
                continue
            node = self.leader_guess or self.rng.choice(self.world.coordinator_ids)
            rounds = tuple(recent)
            reply = yield Call(node, lambda request_id, r=rounds: ListRequest(request_id, r))
            if not isinstance(reply, ListReply):
                self.leader_guess = None
            elif not reply.leader:
                self.leader_guess = reply.leader_hint
            else:
                self.leader_guess = node
