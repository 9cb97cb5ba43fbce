"""One chaos run: start the cluster and participants behind proxies, run a workload and a
seeded fault schedule for ``time_s``, heal, wait for liveness, collect the final state,
check the history and write the report.

History (DIR/history.jsonl), one JSON object a line, ``t`` in seconds since the start:

- client operations, Jepsen style: ``invoke`` then ``ok`` / ``fail`` (definitely not
  committed) / ``info`` (unknown), with process, node preferred, txn id, participants,
  error; ``resolved``: an ``info`` transaction's decision asked by id through the
  cluster (as soon as the cluster answers: it forgets a round 60 s after it finished);
- bank: ``bank_open`` (the accounts and the initial total), and ``branch``: what one
  agent's branch of a transaction read (versions and values), scanned and staged once
  the agent had done its part (bank.py);
- ``fault`` start/end with kind, shape and targets (restarts and resumes are ends);
- ``decision``: a coordinator node applied a decision (WatchTxns on every node) and the
  node's last known term; ``status``: a node's leader view and term;
- ``observe``: a participant's term_seen, violations, in-doubt count (every 0.5 s);
- ``recovery``: measured while running (leader SIGKILL -> in-doubt decided);
- ``liveness``, then ``record`` (every participant's record of every txn) and
  ``final_state`` (every participant's state) after the heal.

Every gRPC call the harness makes is mutual TLS unless ``insecure`` (cluster.py): each
client worker (which also resolves its own unknown outcomes), the audit worker, the
bank's opener, each node's decision watcher and the status poller dial with an identity
of their own (role ``client``: ``worker-N``, ``audit``, ``bank-open``, ``watch-cN``,
``status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import signal
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import grpc

from concord.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from coordinator.security.identity import Role
from coordinator.security.transport import Transport
from participant_sdk import (
    ConcordClient,
    ConcordError,
    FailedPrecondition,
    NotFound,
    OutcomeUnknown,
    Transaction,
    TransactionAborted,
)
from simulations.tier2 import bank
from simulations.tier2.bank import BankConfig, Refused
from simulations.tier2.cluster import CLIENT, ChaosCluster
from simulations.tier2.harness import History, OneShot, RunConfig, Work, http
from simulations.tier2.nemesis import Nemesis, schedule

TXN_TIMEOUT_S = 5.0
LIVENESS_BOUND_S = 20.0  # after the last heal, every txn decided and learned within this
OBSERVE_EVERY_S = 0.5
WORKLOADS = ("bank", "booking")
RESOLVE_BACKOFF_MAX_S = 1.0
RESULT_ATTEMPTS = 20  # a resolved one-shot commit: reads of its actions' results


def plan_txn(workload: str, rng: random.Random, participants: list[str], txn: str) -> dict:
    """Booking: {pid: {key: value}} and the pids told to vote NO (deterministic from
    rng). The bank's transfers are planned by ``bank.plan_transfer``."""
    if workload != "booking":
        raise ValueError(f"plan_txn plans bookings, not {workload!r}")
    flight, hotel, payment, *rest = participants
    writes = {
        flight: {f"seat/{rng.randrange(20_000)}": txn},
        hotel: {f"room/{rng.randrange(20_000)}": txn},
        payment: {f"charge/{txn}": str(rng.randint(50, 500))},
    }
    if rest and rng.random() < 0.5:
        writes[rest[0]] = {f"car/{rng.randrange(5_000)}": txn}
    no = [pid for pid in sorted(writes) if rng.random() < 0.02]
    return {"writes": writes, "no": no}


# The agents' part of a transaction, run between begin and commit: returns fields for
# the outcome event; raises Refused to give the transaction up (it is aborted).


def is_one_shot(txn: str) -> bool:
    """Half of the transactions (by id) whose work has a one-shot form run one-shot."""
    return zlib.crc32(txn.encode()) % 2 == 0


class _GaveUp(Exception):
    """The agents' work failed: the transaction is given up (aborted)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _given_up(error: Exception) -> str:
    if isinstance(error, Refused):
        return f"{'conflict' if error.conflict else 'refused'}: {error}"
    return f"stage: {type(error).__name__}: {error}"


def _commit_failed(error: Exception) -> tuple[str, str]:
    """(history type, error text) for a commit that raised: ``fail`` only when it is
    known not to have committed; anything else is unknown (``info``), resolved by id."""
    if isinstance(error, TransactionAborted):
        return "fail", f"aborted: {error}"
    if isinstance(error, FailedPrecondition | NotFound):
        return "fail", f"{type(error).__name__}: {error}"
    if isinstance(error, OutcomeUnknown):
        return "info", f"unknown: {error}"
    return "info", f"{type(error).__name__}: {error}"


@dataclass
class Runner:
    config: RunConfig
    cluster: ChaosCluster
    history: History
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    txns: list[str] = field(default_factory=list)
    terms: dict[str, int] = field(default_factory=dict)
    leader: str | None = None
    ok_times: list[float] = field(default_factory=list)
    resolving: dict[str, asyncio.Task[str | None]] = field(default_factory=dict)
    status_channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    worker_clients: list[ConcordClient] = field(default_factory=list)
    sent_by: dict[str, ConcordClient] = field(default_factory=dict)  # txn -> its client
    one_shots: dict[str, OneShot] = field(default_factory=dict)  # unknown one-shot txns
    decided: dict[str, str] = field(default_factory=dict)  # txn -> decision a node applied

    @property
    def bank(self) -> BankConfig:
        return BankConfig(accounts=self.config.accounts, hot_keys=self.config.hot_keys)

    def tls(self, name: str) -> Transport:
        """The identity the harness dials the cluster with as ``name`` (a client of its
        own), or plaintext for an insecure run."""
        return self.cluster.transport(Role.CLIENT, name)

    def client(self, name: str, addresses: list[str], **options: Any) -> ConcordClient:
        """A ConcordClient of identity ``name`` over ``addresses`` (the clients' proxies)."""
        options.setdefault("call_timeout_s", 3.0)
        return ConcordClient(addresses, tls=self.tls(name), **options)

    # ------------------------------------------------------------------ clients

    async def client_worker(self, worker: int) -> None:
        rng = random.Random(f"{self.config.seed}/client/{worker}")
        nodes = self.cluster.node_ids
        addresses = self.cluster.client_addresses
        first = worker % len(addresses)
        preferred = addresses[first:] + addresses[:first]
        # Open until the run ends: it resolves its own unknown outcomes (``resolve``).
        client = self.client(f"worker-{worker}", preferred, attempts_max=4)
        self.worker_clients.append(client)
        n = 0
        while not self.stopping.is_set():
            txn = f"s{self.config.seed}-w{worker}-{n}"
            n += 1
            if self.config.workload == "bank":
                transfer = bank.plan_transfer(rng, self.cluster.participant_ids, self.bank)
                pids = sorted(leg["participant"] for leg in transfer["legs"])
                await self.one_txn(
                    client,
                    worker,
                    nodes[first],
                    txn,
                    "transfer",
                    pids,
                    transfer,
                    functools.partial(bank.transfer, self, plan=transfer),
                    bank.transfer_one_shot(self, transfer),
                )
                continue
            plan = plan_txn(self.config.workload, rng, self.cluster.participant_ids, txn)

            def body(pid: str, plan: dict[str, Any] = plan) -> dict[str, Any]:
                return {"writes": plan["writes"][pid], "vote": "no" if pid in plan["no"] else "yes"}

            async def stage(
                txn: Transaction, plan: dict[str, Any] = plan, body: Any = body
            ) -> dict[str, Any]:
                await asyncio.gather(*(txn.call(pid, "stage", body(pid)) for pid in plan["writes"]))
                return {}

            stage_one_shot = OneShot(
                actions={pid: ("stage", body(pid)) for pid in plan["writes"]},
                on_results=lambda txn, results: None,
            )

            await self.one_txn(
                client,
                worker,
                nodes[first],
                txn,
                "booking",
                sorted(plan["writes"]),
                plan["writes"],
                stage,
                stage_one_shot,
                vote_no=plan["no"],
            )

    async def audit_worker(self) -> None:
        """Bank: read-only transactions over every account, one every AUDIT_EVERY_S;
        every other one leases the accounts first."""
        addresses = self.cluster.client_addresses
        client = self.client("audit", addresses, attempts_max=4)
        self.worker_clients.append(client)
        n = 0
        while not self.stopping.is_set():
            txn = f"s{self.config.seed}-audit-{n}"
            locked = n % 2 == 0
            n += 1
            await self.one_txn(
                client,
                "audit",
                self.cluster.node_ids[0],
                txn,
                "read",
                self.cluster.participant_ids,
                {"locked": locked},
                functools.partial(bank.audit, self, bank=self.bank, locked=locked),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(bank.AUDIT_EVERY_S):
                    await self.stopping.wait()

    async def one_txn(
        self,
        client: ConcordClient,
        process: int | str,
        node: str,
        txn: str,
        f: str,
        participants: list[str],
        value: Any,
        work: Work,
        one_shot: OneShot | None = None,
        **extra: Any,
    ) -> str:
        """One transaction, recorded as invoke and its outcome; returns the outcome's
        type (ok | fail | info). An ``info`` is resolved in the background.
        Interactive (``client.transaction``: the agents' work through action calls,
        then the commit), or, for half the ids when the work has a ``one_shot`` form,
        one-shot (``client.run``: the actions inside the commit)."""
        self.txns.append(txn)
        self.sent_by[txn] = client
        shot = one_shot if one_shot is not None and is_one_shot(txn) else None
        base = {"process": process, "f": f, "txn": txn, "node": node}
        self.history.add(
            {
                "type": "invoke",
                **base,
                "participants": participants,
                "value": value,
                "one_shot": shot is not None,
                **extra,
            }
        )
        started = time.monotonic()

        def done(kind: str, error: str = "", **fields: Any) -> str:
            latency = round(time.monotonic() - started, 4)
            self.history.add(
                {"type": kind, **base, "latency_s": latency, "error": error[:300], **fields}
            )
            if kind == "ok":
                self.ok_times.append(self.history.now())
            if kind == "info":
                self.resolving[txn] = asyncio.ensure_future(self.resolve(txn))
            return kind

        if shot is not None:
            try:
                results = await client.run(shot.actions, timeout_s=TXN_TIMEOUT_S, txn_id=txn)
            except Exception as error:
                self.one_shots[txn] = shot  # its results are recorded if it committed
                return done(*_commit_failed(error))
            shot.on_results(txn, results)
            return done("ok")
        fields: dict[str, Any] = {}
        try:
            async with client.transaction(
                participants, timeout_s=TXN_TIMEOUT_S, txn_id=txn
            ) as transaction:
                try:
                    fields = await work(transaction)
                except Exception as error:
                    raise _GaveUp(error) from error
        except _GaveUp as gave_up:  # the context manager aborted it; no commit was sent
            return done("fail", _given_up(gave_up.error))
        except Exception as error:
            return done(*_commit_failed(error), **fields)
        return done("ok", **fields)

    async def resolve(self, txn: str) -> str | None:
        """An unknown outcome, asked by id (``client.outcome``, by the client that sent
        the commit, as users do) until the cluster answers with a decision (never
        assumed); recorded as ``resolved``. None: the cluster does not know the id (it
        forgets a round 60 s after it finished). A one-shot transaction found committed
        has its actions' results recorded, as the cluster keeps them."""
        client = self.sent_by[txn]
        delay_s = 0.1
        errors = 0
        while True:
            try:
                decision = await client.outcome(txn)
            except NotFound as error:
                self.history.add(
                    {"type": "resolved", "txn": txn, "decision": None, "error": str(error)[:300]}
                )
                return None
            except (ConcordError, grpc.RpcError, OSError):
                decision = None
                errors += 1
            if decision is not None:
                self.history.add(
                    {"type": "resolved", "txn": txn, "decision": decision.value, "asked": errors}
                )
                shot = self.one_shots.pop(txn, None)
                if shot is not None and decision.value == "COMMIT":
                    await self._record_results(client, txn, shot)
                return str(decision.value)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RESOLVE_BACKOFF_MAX_S)

    async def _record_results(self, client: ConcordClient, txn: str, shot: OneShot) -> None:
        for _ in range(RESULT_ATTEMPTS):
            try:
                status = await client.get(txn)
            except (ConcordError, grpc.RpcError, OSError):
                await asyncio.sleep(0.2)
                continue
            results = {p.participant_id: p.result for p in status.participants if p.voted}
            shot.on_results(txn, results)
            return
        self.history.add({"type": "error", "what": f"{txn}: committed, results not read"})

    async def resolve_all(self, timeout_s: float) -> None:
        """Wait (bounded) for every unknown outcome to be resolved; the rest are
        recorded unresolved (the checkers then fail the run)."""
        pending = [task for task in self.resolving.values() if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        for txn, task in self.resolving.items():
            if not task.done():
                task.cancel()
                self.history.add(
                    {
                        "type": "resolved",
                        "txn": txn,
                        "decision": None,
                        "error": f"not resolved within {timeout_s:.0f} s after the run",
                    }
                )

    # ------------------------------------------------------------------ observers

    async def watch_decisions(self, node_id: str) -> None:
        """Every decision node_id applies (WatchTxns on its real, unproxied port)."""
        address = self.cluster.real_grpc(node_id)
        tls = self.tls(f"watch-{node_id}")
        last_error = ""
        while True:
            try:
                async with tls.aio_channel(address, to=Role.NODE) as channel:
                    stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
                    async for event in stub.WatchTxns(coordinator_pb2.WatchTxnsRequest()):
                        decision = event.round.decision
                        if decision:
                            self.decided[event.round.round_id] = common_pb2.Decision.Name(decision)
                            self.history.add(
                                {
                                    "type": "decision",
                                    "txn": event.round.round_id,
                                    "node": node_id,
                                    "decision": common_pb2.Decision.Name(decision),
                                    "applied_index": event.applied_index,
                                    "term": self.terms.get(node_id, 0),
                                }
                            )
            except (grpc.RpcError, OSError) as error:
                message = f"{node_id}: {type(error).__name__}: {error}"[:300]
                if message != last_error:
                    self.history.add({"type": "watch_error", "what": message})
                    last_error = message
            await asyncio.sleep(0.2)

    async def watch_status(self) -> None:
        """Every node's leader view and term, every OBSERVE_EVERY_S (one channel per
        node, replaced after a failed call: no reconnect backoff after a restart)."""
        tls = self.tls("status")
        while True:
            views = {}
            for node_id in self.cluster.node_ids:
                process = self.cluster.coordinators[node_id].process
                if not process.alive or process.paused:
                    continue
                channel = self.status_channels.get(node_id)
                if channel is None:
                    channel = tls.aio_channel(self.cluster.real_grpc(node_id), to=Role.NODE)
                    self.status_channels[node_id] = channel
                try:
                    stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
                    reply = await stub.ClusterStatus(
                        coordinator_pb2.ClusterStatusRequest(), timeout=0.5
                    )
                except (grpc.RpcError, OSError):
                    del self.status_channels[node_id]
                    with contextlib.suppress(Exception):
                        await channel.close()
                    continue
                self.terms[node_id] = reply.term
                views[node_id] = (reply.leader_id, reply.term)
            leaders = {leader for leader, _ in views.values() if leader}
            if views:
                best = max(views.values(), key=lambda v: v[1])
                self.leader = best[0] or (leaders.pop() if len(leaders) == 1 else None)
            self.history.add({"type": "status", "views": {k: list(v) for k, v in views.items()}})
            await asyncio.sleep(OBSERVE_EVERY_S)

    async def observe_participants(self) -> None:
        while True:
            for pid, agent in self.cluster.agents.items():
                if not agent.process.alive:
                    continue
                try:
                    view = await http(agent.http_port, "/", timeout_s=1.0)
                except Exception:
                    continue
                self.history.add(
                    {
                        "type": "observe",
                        "participant": pid,
                        "pid": view["pid"],
                        "term_seen": view["term_seen"],
                        "violations": view["violations"],
                        "in_doubt": len(view["in_doubt"]),
                    }
                )
            await asyncio.sleep(OBSERVE_EVERY_S)

    async def in_doubt_everywhere(self) -> set[str] | None:
        """Txn ids in doubt at any participant; None if a live participant did not answer."""
        found: set[str] = set()
        for agent in self.cluster.agents.values():
            if not agent.process.alive:
                return None
            try:
                view = await http(agent.http_port, "/", timeout_s=1.0)
            except Exception:
                return None
            found.update(view["in_doubt"])
        return found

    async def restart_agent(self, pid: str) -> None:
        self.cluster.restart_agent(pid)
        await self.cluster.wait_agent_ready(self.cluster.agents[pid], 60.0)

    # ------------------------------------------------------------------ progress

    async def progress(self, total_s: float) -> None:
        tty = sys.stderr.isatty()
        last_line = 0.0
        while True:
            now = self.history.now()
            c = self.history.counts
            line = (
                f"[{min(now, total_s):5.0f}/{total_s:.0f}s] ops {c['invoke']} "
                f"ok {c['ok']} fail {c['fail']} info {c['info']} | faults "
                f"{self.history.faults} {self.history.current_fault or '-'}"
            )
            if tty:
                width = 20
                filled = int(width * min(now / total_s, 1.0))
                sys.stderr.write(f"\r{'#' * filled}{'.' * (width - filled)} {line}\033[K")
                sys.stderr.flush()
            elif now - last_line >= 10:
                print(line, file=sys.stderr, flush=True)
                last_line = now
            await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ ending

    async def settle(self, healed_at: float) -> None:
        """Liveness: after the heal, wait (bounded) until nothing is in doubt anywhere and
        every participant answers."""
        deadline = time.monotonic() + LIVENESS_BOUND_S
        remaining: set[str] | None = None
        while time.monotonic() < deadline:
            remaining = await self.in_doubt_everywhere()
            if remaining == set():
                break
            await asyncio.sleep(0.1)
        settled = remaining == set()
        self.history.add(
            {
                "type": "liveness",
                "healed_at": healed_at,
                "bound_s": LIVENESS_BOUND_S,
                "settled_s": round(self.history.now() - healed_at, 3) if settled else None,
                "in_doubt": sorted(remaining or [])[:20],
            }
        )

    async def collect(self) -> None:
        for pid, agent in self.cluster.agents.items():
            try:
                for start in range(0, len(self.txns), 500):
                    ids = self.txns[start : start + 500]
                    records = await http(agent.http_port, "/records", {"ids": ids}, 10.0)
                    for txn, record in records.items():
                        if record is not None:
                            self.history.add(
                                {"type": "record", "participant": pid, "txn": txn, **record}
                            )
                view = await http(agent.http_port, "/", timeout_s=10.0)
                self.history.add(
                    {
                        "type": "final_state",
                        "participant": pid,
                        "state": view["state"],
                        "in_doubt": view["in_doubt"],
                        "held": view["held"],
                        "term_seen": view["term_seen"],
                        "violations": view["violations"],
                    }
                )
            except Exception as error:
                self.history.add(
                    {"type": "collect_failed", "participant": pid, "error": str(error)}
                )


async def run_async(config: RunConfig) -> dict[str, Any]:
    from simulations.tier2 import checkers, report

    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "config.json").write_text(
        json.dumps({**config.__dict__, "out": str(config.out)}, indent=1)
    )
    cluster = ChaosCluster(
        config.out / "cluster",
        nodes=config.nodes,
        participants=config.participants,
        insecure=config.insecure,
        lazy_disks="power" in config.nemeses,
    )
    history = History(config.out / "history.jsonl")
    runner = Runner(config, cluster, history)
    background: list[asyncio.Task[None]] = []
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, main_task.cancel)

    def crashed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            history.add({"type": "error", "what": f"observer crashed: {task.exception()!r}"})

    try:
        history.add(
            {
                "type": "setup",
                "nodes": cluster.node_ids,
                "tls": not cluster.insecure,
                "config": str(config),
            }
        )
        await cluster.start()
        background.append(asyncio.ensure_future(runner.watch_status()))
        for node_id in cluster.node_ids:
            background.append(asyncio.ensure_future(runner.watch_decisions(node_id)))
        background.append(asyncio.ensure_future(runner.observe_participants()))
        background.append(asyncio.ensure_future(runner.progress(config.time_s)))
        for task in background:
            task.add_done_callback(crashed)
        deadline = time.monotonic() + 30
        while runner.leader is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        history.start = time.monotonic()  # t = 0: the workload starts
        history.add({"type": "start", "leader": runner.leader, "workload": config.workload})
        if config.workload == "bank":
            async with runner.client("bank-open", cluster.client_addresses) as client:
                await bank.open_accounts(runner, client, runner.bank)
        workers = [asyncio.ensure_future(runner.client_worker(w)) for w in range(config.clients)]
        if config.workload == "bank":
            workers.append(asyncio.ensure_future(runner.audit_worker()))
        nemesis = Nemesis(runner, schedule(config.seed, config.nemeses, config.time_s))
        await nemesis.run(config.time_s)
        runner.stopping.set()
        await nemesis.heal_all()
        healed_at = history.now()
        history.add({"type": "healed"})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.gather(*workers, return_exceptions=True)
        for worker in workers:
            worker.cancel()
        await runner.settle(healed_at)
        await runner.resolve_all(LIVENESS_BOUND_S)
        await runner.collect()
    finally:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(BaseException):
                await task
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        for task in runner.resolving.values():
            task.cancel()
        for client in runner.worker_clients:
            with contextlib.suppress(Exception):
                await client.close()
        for channel in runner.status_channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        await cluster.stop()
        history.close()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
    results = checkers.check_file(config.out / "history.jsonl")
    report.write(config.out, results)
    return results


def run(config: RunConfig) -> dict[str, Any]:
    return asyncio.run(run_async(config))


__all__ = ["CLIENT", "WORKLOADS", "RunConfig", "run"]
