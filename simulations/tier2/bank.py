"""The bank workload: accounts on every participant, read-modify-write transfers and
read-only audits, all through the SDK's serializable branches.

Every participant holds ``accounts`` accounts ``acct/0`` .. ``acct/<accounts-1>``, each
opened with INITIAL_BALANCE by one transaction before the workload starts (so the
initial total is known and is in the history: ``bank_open``). Then:

- a **transfer** moves an amount from one account to one account on another participant
  (or, 30 % of the time, splits it between accounts on two others). Interactive (half
  of them, by id): the initiator asks each participant's agent, through a transaction
  action, to read the leg's balance through its branch (``Branch.get``), refuses the
  transfer (aborts it) when the source holds less than the amount, and otherwise has
  each agent write the new absolute balance (``Branch.put``): the read-modify-write
  users write. One-shot (the other half): each leg is one action inside the commit
  that reads the balance and writes the new one on the branch (an "update"), and a
  source that holds too little votes NO. 20 % of transfers use ``Branch.add`` instead
  (``-amount`` with ``min=0`` at the source, ``+`` at the destinations): nothing is
  read, the bound is checked at Prepare. Accounts are drawn
  among the first ``hot_keys`` of each participant 80 % of the time, so transfers
  contend. 2 % of branches are told to vote NO.
- an **audit** (one worker, one every AUDIT_EVERY_S) reads every account on every
  participant (``Branch.items("acct/")``, then ``Branch.get`` of each: the scan and every
  version are checked at Prepare) and commits; every other audit first leases every
  account (``Branch.lock``, no-wait, retried a few times), so audits also commit while
  transfers are busy.

Each agent answers a call with what its branch read (versions), scanned and staged once
the call is done; the last call of each branch (for a one-shot transaction, its
action's result, once committed) is recorded as a ``branch`` event, and
that is what the checkers (``checkers.py``: serializable, bank_conserved, bank_ledger,
bank_snapshot) judge, with every transaction's decision.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from participant_sdk import ActionFailed, Transaction
from simulations.tier2.harness import Harness, OneShot

PREFIX = "acct/"
INITIAL_BALANCE = 100
AMOUNT_MAX = 50
HOT_SHARE = 0.8  # transfers pick a hot account this often
ADD_SHARE = 0.2  # transfers made of Branch.add instead of read-modify-write
SPLIT_SHARE = 0.3  # transfers to two destinations (three participants)
NO_VOTE_SHARE = 0.02
AUDIT_EVERY_S = 0.5
LOCK_ATTEMPTS = 5
LOCK_RETRY_S = 0.02
OPEN_ATTEMPTS = 5
ACTION_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class BankConfig:
    accounts: int = 10
    hot_keys: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.hot_keys <= self.accounts:
            raise ValueError(f"--hot-keys is 1..{self.accounts} (--accounts), not {self.hot_keys}")

    @property
    def names(self) -> list[str]:
        return [account(i) for i in range(self.accounts)]


def account(index: int) -> str:
    return f"{PREFIX}{index}"


class Refused(Exception):
    """The initiator gives the transaction up before Commit: it never commits.
    ``conflict``: refused because another transaction holds a key (a lease)."""

    def __init__(self, reason: str, *, conflict: bool = False) -> None:
        super().__init__(reason)
        self.conflict = conflict


def plan_transfer(rng: random.Random, participants: list[str], bank: BankConfig) -> dict[str, Any]:
    """{"kind": "rmw" | "add", "legs": [{participant, account, delta}], "no": [pids]}:
    the first leg is the source; the deltas sum to zero. Deterministic from ``rng``."""
    ways = 3 if len(participants) >= 3 and rng.random() < SPLIT_SHARE else 2
    pids = rng.sample(participants, ways)
    amount = rng.randint(ways - 1, AMOUNT_MAX)
    shares = [amount] if ways == 2 else [rng.randint(1, amount - 1)]
    if ways == 3:
        shares.append(amount - shares[0])

    def pick() -> str:
        hot = rng.random() < HOT_SHARE
        return account(rng.randrange(bank.hot_keys if hot else bank.accounts))

    legs = [{"participant": pids[0], "account": pick(), "delta": -amount}]
    legs += [
        {"participant": pid, "account": pick(), "delta": share}
        for pid, share in zip(pids[1:], shares, strict=True)
    ]
    kind = "add" if rng.random() < ADD_SHARE else "rmw"
    no = [pid for pid in sorted(pids) if rng.random() < NO_VOTE_SHARE]
    return {"kind": kind, "legs": legs, "no": no}


async def call(
    runner: Harness,
    txn: Transaction,
    pid: str,
    ops: list[list[Any]],
    *,
    vote: str = "yes",
    last: bool,
) -> dict[str, Any]:
    """Run ``ops`` on ``pid``'s branch of ``txn`` (the agent's ``ops`` action); the
    last call of a branch is recorded (what it read and staged is then what its
    Prepare checks). A later call of a branch the agent lost with a restart fails (the
    SDK's call count), so a transfer never writes from a read nobody checks. A refusal
    by the agent raises ``Refused`` (``conflict``: a lease refused, worth trying again)."""
    try:
        reply: dict[str, Any] = await txn.call(
            pid, "ops", {"ops": ops, "vote": vote}, timeout_s=ACTION_TIMEOUT_S
        )
    except ActionFailed as failed:
        raise Refused(f"{pid}: {failed.reason}") from None
    if "conflict" in reply:  # a lease refused: the branch is still open
        raise Refused(f"{pid}: {reply['conflict']}", conflict=True)
    if last:
        record_branch(runner, txn.id, pid, reply)
    return reply


def record_branch(runner: Harness, txn: str, pid: str, reply: dict[str, Any]) -> None:
    runner.history.add(
        {
            "type": "branch",
            "txn": txn,
            "participant": pid,
            "reads": reply["reads"],
            "scans": reply["scans"],
            "writes": reply["writes"],
            "values": reply["values"],
        }
    )


def transfer_one_shot(runner: Harness, plan: dict[str, Any]) -> OneShot:
    """The transfer as one action per leg inside the commit: an add, or an update that
    reads the balance and writes the new one (at the source, refusing to go below 0)."""

    def leg_ops(leg: dict[str, Any]) -> list[list[Any]]:
        low = 0 if leg["delta"] < 0 else None
        if plan["kind"] == "add":
            return [["add", leg["account"], leg["delta"], low, None]]
        return [["update", leg["account"], leg["delta"], low]]

    def on_results(txn: str, results: dict[str, Any]) -> None:
        for pid, reply in sorted(results.items()):
            record_branch(runner, txn, pid, reply)

    vote = {
        leg["participant"]: "no" if leg["participant"] in plan["no"] else "yes"
        for leg in plan["legs"]
    }
    return OneShot(
        actions={
            leg["participant"]: ("ops", {"ops": leg_ops(leg), "vote": vote[leg["participant"]]})
            for leg in plan["legs"]
        },
        on_results=on_results,
    )


async def transfer(runner: Harness, txn: Transaction, plan: dict[str, Any]) -> dict[str, Any]:
    legs = plan["legs"]

    def vote(leg: dict[str, Any]) -> str:
        return "no" if leg["participant"] in plan["no"] else "yes"

    if plan["kind"] == "add":
        await asyncio.gather(
            *(
                call(
                    runner,
                    txn,
                    leg["participant"],
                    [["add", leg["account"], leg["delta"], 0 if leg["delta"] < 0 else None, None]],
                    vote=vote(leg),
                    last=True,
                )
                for leg in legs
            )
        )
        return {}
    replies = await asyncio.gather(
        *(
            call(runner, txn, leg["participant"], [["get", leg["account"]]], last=False)
            for leg in legs
        )
    )
    balances = []
    for leg, reply in zip(legs, replies, strict=True):
        value = reply["results"][0]
        if value is None:
            raise Refused(f"{leg['participant']}:{leg['account']} does not exist")
        balances.append(int(value))
    source = legs[0]
    if balances[0] + source["delta"] < 0:
        raise Refused(
            f"insufficient funds: {source['participant']}:{source['account']} holds "
            f"{balances[0]}, the transfer takes {-source['delta']}"
        )
    await asyncio.gather(
        *(
            call(
                runner,
                txn,
                leg["participant"],
                [["put", leg["account"], str(balance + leg["delta"])]],
                vote=vote(leg),
                last=True,
            )
            for leg, balance in zip(legs, balances, strict=True)
        )
    )
    return {}


async def audit(
    runner: Harness, txn: Transaction, bank: BankConfig, locked: bool
) -> dict[str, Any]:
    """Read every account everywhere; returns the total seen (and per participant)."""

    async def one(pid: str) -> int:
        if locked:
            for attempt in range(LOCK_ATTEMPTS):
                try:
                    await call(runner, txn, pid, [["lock", *bank.names]], last=False)
                    break
                except Refused as refused:
                    if not refused.conflict or attempt == LOCK_ATTEMPTS - 1:
                        raise
                await asyncio.sleep(LOCK_RETRY_S)  # no-wait leases: try again shortly
        reply = await call(runner, txn, pid, [["scan", PREFIX]], last=True)
        return sum(int(v) for v in reply["results"][0].values())

    pids = runner.cluster.participant_ids
    totals = await asyncio.gather(*(one(pid) for pid in pids))
    return {"total": sum(totals), "totals": dict(zip(pids, totals, strict=True))}


async def open_accounts(runner: Harness, client: Any, bank: BankConfig) -> None:
    """One transaction opens every account everywhere (read, then write the initial
    balance); retried under a new id until one commits (no faults run yet)."""
    pids = runner.cluster.participant_ids
    ops = [["get", name] for name in bank.names]
    ops += [["put", name, str(INITIAL_BALANCE)] for name in bank.names]

    async def work(txn: Transaction) -> dict[str, Any]:
        await asyncio.gather(*(call(runner, txn, pid, ops, last=True) for pid in pids))
        return {}

    for attempt in range(OPEN_ATTEMPTS):
        txn = f"s{runner.config.seed}-open-{attempt}"
        kind = await runner.one_txn(
            client, "setup", runner.cluster.node_ids[0], txn, "open", pids, {"ops": ops}, work
        )
        if kind == "info":
            kind = "ok" if await runner.resolve(txn) == "COMMIT" else "fail"
        if kind == "ok":
            balances = {pid: dict.fromkeys(bank.names, INITIAL_BALANCE) for pid in pids}
            runner.history.add(
                {
                    "type": "bank_open",
                    "txn": txn,
                    "balances": balances,
                    "total": INITIAL_BALANCE * bank.accounts * len(pids),
                    "hot_keys": bank.hot_keys,
                }
            )
            return
    raise RuntimeError(f"could not open the bank's accounts in {OPEN_ATTEMPTS} transactions")
