"""One travel agent as its own process: flight, hotel or payment.

Each agent embeds a Concord ``Participant`` with its own LMDB data directory. The
initiator asks it for its part of a trip through the cluster, never directly: the
agent declares transaction actions (participant_sdk/actions.py) and the initiator
calls them with ``txn.call(role, action, payload)``:

- ``seed``, ``book``: its part of a booking, staged on the transaction's branch. Its
  state is a few counters (seats left, rooms left, account balances); it votes NO
  when one would go below zero. The payment agent also charges the card at the bank
  at once, as a compensable effect (participant_sdk/effects.py): if the trip aborts,
  the charge is refunded, exactly once.
- ``plan``: the agent's plan for a session (a fare, a room, a budget), kept in memory
  once its transaction commits. A global checkpoint round saves it
  (``AgentRollback.capture``); a rollback round puts it back and refunds the charges
  made since (participant_sdk/reversion.py).
- saga actions (participant_sdk/saga.py), run by the cluster for multi-leg trips:
  ``book_flight`` / ``book_room`` / ``charge``, undone by a cancellation or a refund.

The one thing it serves itself is a read-only view for the example to show and check:
``GET /`` on a local HTTP port answers counters, plans, rounds in doubt, and what each
rollback did here.

The outside world (a bank, an airline, a hotel chain) is a set of JSONL ledgers in
``--world`` (examples/travel/world.py); each agent talks to its own.

    python -m examples.travel.agent --role flight --data-dir DIR --world DIR \
        --coordinators A,B,C --ready-file FILE

The agent writes ``{"port": P, "http": H}`` to the ready file once it is registered
with the cluster, and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import logging
import signal
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from examples.travel import world
from participant_sdk import (
    AgentRollback,
    Branch,
    Decision,
    EffectLog,
    EffectStatus,
    LmdbCheckpointStore,
    LocalState,
    Participant,
    RestoreResult,
    Reverter,
    SagaActions,
    StateView,
    StepContext,
    TxnActions,
    checkpoints_dir,
    write_ready_file,
)

log = logging.getLogger("agent")

# What each role keeps, and the counter a booking request decrements.
INITIAL_STATE: dict[str, dict[str, int]] = {
    "flight": {"seats:FL100": 3, "seats:FL500": 9},
    "hotel": {"rooms:GRAND": 2, "rooms:RIVER": 4},
    "payment": {"balance:alice": 1_000, "balance:bob": 300, "balance:carol": 3_000},
}


def _counter_key(role: str, request: Mapping[str, Any]) -> str:
    if role == "flight":
        return f"seats:{request['flight']}"
    if role == "hotel":
        return f"rooms:{request['hotel']}"
    return f"balance:{request['customer']}"


def _amount(role: str, request: Mapping[str, Any]) -> int:
    return int(request["price"] if role == "payment" else request.get("count", 1))


def charge_key(txn_id: str) -> str:
    """The bank idempotency key of a trip's charge (the example and its test read it)."""
    return f"{txn_id}/charge"


class TravelAgent:
    def __init__(self, role: str, data_dir: Path, world_dir: Path) -> None:
        self.role = role
        self.participant: Participant | None = None  # set once built (it needs our hooks)
        self.slow_votes: set[str] = set()
        self._lock = threading.Lock()  # plans and rollbacks: action, HTTP, participant threads
        self.plans: dict[str, dict[str, Any]] = {}
        # Plans staged by a transaction not yet decided: txn id -> (session, plan).
        self._planned: dict[str, tuple[str, dict[str, Any]]] = {}
        self.rollbacks: list[dict[str, Any]] = []
        self.effects = EffectLog.open(data_dir)
        self.reverter = Reverter(
            LmdbCheckpointStore(checkpoints_dir(data_dir)), effects=self.effects
        )
        self.ledger = {
            "flight": world.airline,
            "hotel": world.hotels,
            "payment": world.bank,
        }[role](world_dir)
        # The one effectful tool of the 2PC trips (the payment agent's): a card charge,
        # refunded when its trip aborts or a rollback goes back to before it.
        self.charge = self.effects.compensable(
            compensate=lambda effect: self.ledger.undo(effect.key),
            probe=lambda effect: self.ledger.done(effect.key),  # after a crash mid-charge
            verify=lambda effect: self.ledger.undone(effect.key),
            name="bank.charge",
        )(self._charge)

    # ------------------------------------------------------------ transactions (2PC)

    def validate(
        self, txn_id: str, writes: Mapping[str, bytes | None], state: StateView
    ) -> tuple[bool, str]:
        """The vote: every counter this branch writes must stay at zero or above."""
        if txn_id in self.slow_votes:
            time.sleep(1.0)  # the example kills the leader while this vote is under way
        for key, value in writes.items():
            if key.startswith("seeded:") or value is None:
                continue
            left = int(value)
            if left < 0:
                what = {
                    "flight": "not enough seats",
                    "hotel": "no room",
                    "payment": "insufficient funds",
                }[self.role]
                return False, f"{what} ({key} would be {left})"
        return True, ""

    def txn_actions(self) -> TxnActions:
        """What the initiator may ask of this agent inside a transaction (txn.call)."""
        actions = TxnActions()
        actions.add("seed", self.seed)
        actions.add("book", self.book)
        actions.add("plan", self.plan)
        return actions

    def book(self, branch: Branch, request: Mapping[str, Any]) -> dict[str, int]:
        """This agent's part of a trip: take a seat, a room or the price off its counter.
        A counter below zero is not refused here but voted NO at Prepare (``validate``),
        so the trip aborts everywhere with the reason."""
        participant = self._participant()
        txn_id = branch.txn_id
        key = _counter_key(self.role, request)
        # Read through the branch: the read is checked at Prepare, so two trips that
        # read the same counter cannot both write it (no lost update).
        left = int(branch.get(key, b"0") or b"0") - _amount(self.role, request)
        branch.put(key, str(left).encode())
        if request.get("slow_vote"):
            self.slow_votes.add(txn_id)
        if self.role == "payment" and left >= 0:
            # Charged now, before the vote; the effect belongs to the transaction, so its
            # ABORT (on_decided -> EffectLog.on_decision) refunds it.
            with self.effects.transaction(txn_id):
                self.charge(
                    request["customer"], int(request["price"]), idempotency_key=charge_key(txn_id)
                )
            record = participant.record(txn_id)
            if record is not None and record.state is LocalState.ABORTED:
                # The abort landed while we were charging: it could not see the charge yet.
                self.effects.on_decision(txn_id, Decision.ABORT)
        return {"left": left}

    def _charge(self, customer: str, amount: int, *, idempotency_key: str) -> dict[str, int]:
        self.ledger.do(idempotency_key, customer=customer, amount=amount)
        return {"charged": amount}

    def seed(self, branch: Branch, _: object) -> None:
        """The counters this role starts with (once: a second seed changes nothing)."""
        if branch.get(f"seeded:{self.role}") is not None:
            return
        for key, value in INITIAL_STATE[self.role].items():
            branch.put(key, str(value).encode())
        branch.put(f"seeded:{self.role}", b"1")

    def snapshot(self) -> dict[str, int]:
        items = self._participant().state.items()
        return {k: int(v) for k, v in items if not k.startswith("seeded:")}

    def _participant(self) -> Participant:
        assert self.participant is not None, "the participant is built before serving"
        return self.participant

    # ------------------------------------------------------------ plans, checkpoint, rollback

    def plan(self, branch: Branch, request: Mapping[str, Any]) -> None:
        """The agent's plan for a session: it holds once the transaction commits."""
        with self._lock:
            self._planned[branch.txn_id] = (request["session"], dict(request["plan"]))

    def decided(self, txn_id: str, decision: Decision) -> None:
        """A transaction's decision is durable here: a plan it staged holds, or not."""
        with self._lock:
            planned = self._planned.pop(txn_id, None)
            if planned is not None and decision is Decision.COMMIT:
                session, plan = planned
                self.plans[session] = plan

    def capture(self) -> dict[str, Any]:
        """What a global checkpoint saves of this agent (on a participant thread)."""
        with self._lock:
            return {"plans": copy.deepcopy(self.plans)}

    def restored(self, result: RestoreResult) -> None:
        """A rollback round put the checkpoint back: reload the plans from it."""
        with self._lock:
            self.plans = copy.deepcopy(dict(result.checkpoint.state["plans"]))

    def verify(self, result: RestoreResult) -> tuple[bool, str]:
        """After the restore and its compensations: does the outside world agree? Every
        charge made since the checkpoint must show its refund at the bank."""
        since = [e for e in self.effects.effects() if e.generation >= result.restored_generation]
        refunded = [
            e for e in since if e.status is EffectStatus.COMPENSATED and self.ledger.undone(e.key)
        ]
        wrong = [
            e.key for e in since if e not in refunded and e.status is not EffectStatus.NOT_APPLIED
        ]
        with self._lock:
            plans_back = self.plans == result.checkpoint.state["plans"]
            ok = plans_back and not wrong
            what = f"plans {'back' if plans_back else 'NOT back'} at the checkpoint"
            if self.role == "payment":
                what += f"; {len(refunded)} charge(s) made since, each refunded at the bank"
            if wrong:
                what += f"; NOT refunded: {wrong}"
            self.rollbacks.append(
                {
                    "checkpoint": result.checkpoint.info.restored_from,
                    "plans": copy.deepcopy(self.plans),
                    "refunded": [{"key": e.key, "amount": e.args[1]} for e in refunded],
                    "verified": ok,
                    "detail": what,
                }
            )
        return ok, what

    # ------------------------------------------------------------ saga actions

    def saga_actions(self) -> SagaActions:
        """What this agent offers to multi-leg trips: each action is idempotent on the
        step's key (the ledger is), raises only when nothing happened (SoldOut), and is
        undone by a compensation that is idempotent too."""
        actions = SagaActions()
        undo = self._undo_step
        verify = self._step_undone
        if self.role == "flight":
            actions.add("book_flight", self._book_flight, undo, verify=verify)
        elif self.role == "hotel":
            actions.add("book_room", self._book_room, undo, verify=verify)
        else:
            actions.add("charge", self._charge_step, undo, verify=verify)
        return actions

    def _book_flight(self, step: StepContext) -> str:
        leg = step.json()
        check = world.seat_left(leg["flight"])
        self.ledger.do(step.idempotency_key, check, flight=leg["flight"], who=leg["who"])
        return f"{leg['flight']} booked for {leg['who']}"

    def _book_room(self, step: StepContext) -> str:
        stay = step.json()
        self.ledger.do(step.idempotency_key, hotel=stay["hotel"], who=stay["who"])
        return f"room at {stay['hotel']} booked for {stay['who']}"

    def _charge_step(self, step: StepContext) -> str:
        payment = step.json()
        self.ledger.do(step.idempotency_key, customer=payment["customer"], amount=payment["amount"])
        return f"{payment['customer']} charged {payment['amount']}"

    def _undo_step(self, step: StepContext) -> None:
        self.ledger.undo(step.idempotency_key)  # a no-op for a step that never happened

    def _step_undone(self, step: StepContext) -> bool:
        key = step.idempotency_key
        return not self.ledger.done(key) or self.ledger.undone(key)

    # ------------------------------------------------------------ reading

    def status(self) -> dict[str, Any]:
        participant = self._participant()
        with self._lock:
            plans, rollbacks = copy.deepcopy(self.plans), copy.deepcopy(self.rollbacks)
        return {
            "role": self.role,
            "state": self.snapshot(),
            "in_doubt": participant.in_doubt(),
            "plans": plans,
            "rollbacks": rollbacks,
            "attention": participant.attention(),
            "escalations": [e.key for e in self.effects.escalations()],
        }


def _http_server(agent: TravelAgent) -> ThreadingHTTPServer:
    """The read-only view the example shows and checks (``GET /``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = json.dumps(agent.status()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


async def run(
    role: str, data_dir: Path, world_dir: Path, coordinators: list[str], ready_file: Path
) -> None:
    agent = TravelAgent(role, data_dir, world_dir)
    participant = Participant(
        role,
        data_dir,
        coordinators,
        validate=agent.validate,
        actions=agent.txn_actions(),
        saga_actions=agent.saga_actions(),
        on_decided=agent.decided,
        # An ABORT refunds the trip's charge: the participant hands each decision to
        # the effect log (the reverter's), once it is durable here.
        rollback=AgentRollback(
            reverter=agent.reverter,
            capture=agent.capture,
            restored=agent.restored,
            verify=agent.verify,
        ),
    )
    agent.participant = participant
    # start() also recovers the reverter and the effect log after a restart.
    await participant.start()
    await participant.wait_registered(timeout_s=30)
    http = _http_server(agent)
    threading.Thread(target=http.serve_forever, name="http", daemon=True).start()
    write_ready_file(ready_file, {"port": participant.port, "http": http.server_address[1]})
    log.info(
        "%s agent ready: participant port %d, http %d",
        role,
        participant.port,
        http.server_address[1],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    http.shutdown()
    await participant.stop()
    agent.effects.close()
    agent.reverter.checkpoints.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=sorted(INITIAL_STATE), required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--coordinators", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.role} %(levelname)s %(message)s"
    )
    # Ctrl-C before the signal handlers are installed: stop quietly all the same.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run(args.role, args.data_dir, args.world, args.coordinators.split(","), args.ready_file)
        )


if __name__ == "__main__":
    main()
