"""A participant process for chaos runs: the real SDK on LMDB, its work given as
transaction actions (participant_sdk/actions.py) that the harness calls through the
cluster (``txn.call`` in an interactive transaction, or inside the commit with
``client.run``).

- action ``stage`` {"writes": {key: value}, "vote": "yes"|"no"}: stage writes in this
  participant's branch; its vote follows "vote" (and is NO when a key is already taken
  by another value, or reserved by another branch that voted YES and is not decided
  yet: the booking workload's seats, write-once keys).
- action ``ops`` {"ops": [...], "vote": "yes"|"no"}: run operations on the branch
  through the SDK's serializable ``Branch`` (the bank workload), in order: ["get",
  key], ["scan", prefix] (``items``, then ``get`` of each key found), ["put", key,
  value], ["add", key, delta, min, max], ["update", key, delta, min] (read the integer
  at key, raise if it is absent or would fall below min, put the sum: a transfer leg
  in one action), ["lock", key, ...] (a lease refused returns {"conflict": why}, the
  branch still open, so the caller can try again). Returns {"results": [...], "values": {key:
  value}, "reads": {key: [seq, txn]}, "scans": {prefix: seq}, "writes": {key: value |
  null | {"add", "min", "max"}}}: what the branch has read (the value and version of
  each key's first read, over all its calls so far), scanned and staged once this call
  is done (what its Prepare checks). Any other operation that refuses (a bad value, a
  failed "update") raises: the branch then votes NO and the caller gets
  ``ActionFailed``. A later call of a branch lost with a restart fails (the SDK).
- GET /: {"state", "in_doubt", "held", "term_seen", "violations", "pid"} ("held": the
  transactions whose keys the store holds for a YES until their decision) (read-only HTTP on
  127.0.0.1, the harness's view of the process).
- POST /records {"ids": [...]}: {id: {"state", "voted_yes", "installed"} | null} (a
  read-only query); "installed": {key: commit sequence} of a committed branch's
  writes, as seen by ``on_decided`` right after the commit was durable, and appended
  (flushed: a SIGKILL does not lose it) to DATA_DIR.installed.jsonl, read back at
  start. Absent when no process saw it (the branch's keys were staged by a process
  killed before the decision), or a later commit of the same batch overwrote the key
  first.

It listens for gRPC on --listen and registers --advertise (the harness's proxy in front
of it); with --connect=outbound it serves nothing and attaches to the leader through
--coordinators instead. It writes {"http": PORT} to --ready-file once registered (and
attached).

TLS: its certificate (identity ``participant/ID``) comes from the environment
(``CONCORD_TLS_CA``/``CERT``/``KEY``, set by the harness for this agent only); without
one it refuses to start, unless ``--insecure`` (plaintext, said explicitly).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from participant_sdk import (
    Add,
    Branch,
    Decision,
    LockConflict,
    Participant,
    ParticipantOptions,
    Role,
    StateView,
    Transport,
    TxnActions,
    write_ready_file,
)

RECORD_RETENTION_MS = 3_600_000  # longer than any run: the checkers read every record
LOCK_LEASE_MS = 3_000  # an audit's leases (Branch.lock) end this long after it gave up


class Agent:
    def __init__(self, installed_path: Path | None = None) -> None:
        self.no_votes: set[str] = set()
        # key -> txn id that voted YES writing it (released once that txn is decided)
        self.reserved: dict[str, str] = {}
        self.reserved_lock = threading.Lock()
        self.participant: Participant | None = None
        # Branches staged through /stage (write-once keys: the booking check applies).
        self.write_once: set[str] = set()
        # txn -> keys its branch staged (/branch), until its decision is durable here;
        # then, for a commit, txn -> {key: the commit sequence its write installed}.
        self.written: dict[str, set[str]] = {}
        self.installed: dict[str, dict[str, int]] = {}
        self._installed_file: TextIO | None = None
        if installed_path is not None:
            self._load_installed(installed_path)
            self._installed_file = installed_path.open("a")
            if self._installed_file.tell() and not installed_path.read_text().endswith("\n"):
                self._installed_file.write("\n")  # end a line cut by a SIGKILL
        # txn -> {key: the value its branch read first} (every /branch call so far)
        self.values: dict[str, dict[str, str | None]] = {}
        self.values_lock = threading.Lock()

    def validate(
        self, txn_id: str, writes: Mapping[str, object], state: StateView
    ) -> tuple[bool, str]:
        if txn_id in self.no_votes:
            return False, "told to vote no"
        if txn_id not in self.write_once:
            return True, ""  # the SDK's isolation check has passed: nothing more here
        with self.reserved_lock:
            for key, value in writes.items():
                current = state.get(key)
                if current is not None and current != value:
                    return False, f"{key} already taken"
                holder = self.reserved.get(key)
                if holder is not None and holder != txn_id:
                    return False, f"{key} reserved by {holder}"
            for key in writes:
                self.reserved[key] = txn_id
        return True, ""

    def on_decided(self, txn_id: str, decision: Decision) -> None:
        """Under the participant's lock, right after the decision is durable: no other
        commit has run since, so a written key's version is this commit's unless a
        later commit of the same batch overwrote it (then its sequence is unknown)."""
        keys = self.written.pop(txn_id, set())
        with self.values_lock:
            self.values.pop(txn_id, None)
        participant = self.participant
        if decision is not Decision.COMMIT or not keys or participant is None:
            return
        seqs = {}
        for key in keys:
            _, version = participant.store.get_versioned(key)
            if version.txn_id == txn_id:
                seqs[key] = version.seq
        self.installed[txn_id] = seqs
        if self._installed_file is not None:
            self._installed_file.write(json.dumps([txn_id, seqs]) + "\n")
            self._installed_file.flush()

    def _load_installed(self, path: Path) -> None:
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            try:
                txn_id, seqs = json.loads(line)
            except ValueError:
                continue  # a line cut by a SIGKILL
            self.installed[txn_id] = seqs

    def actions(self) -> TxnActions:
        actions = TxnActions()
        actions.add("ops", lambda branch, body: self.run_ops(branch, body["ops"], body["vote"]))
        actions.add("stage", lambda branch, body: self.stage(branch, body["writes"], body["vote"]))
        return actions

    def stage(self, branch: Branch, writes: dict[str, str], vote: str) -> None:
        self.write_once.add(branch.txn_id)
        if vote != "yes":
            self.no_votes.add(branch.txn_id)
        for key, value in writes.items():
            branch.put(key, value.encode())

    def run_ops(self, branch: Branch, ops: list[list[Any]], vote: str) -> dict[str, Any]:
        """The ``ops`` action: raises LockConflict, StoreLimitError or ValueError when
        an operation refuses."""
        txn_id = branch.txn_id
        with self.values_lock:
            values = self.values.setdefault(txn_id, {})
        if vote != "yes":
            self.no_votes.add(txn_id)
        results: list[Any] = []

        def get(key: str) -> str | None:
            raw = branch.get(key)
            value = None if raw is None else raw.decode()
            with self.values_lock:
                values.setdefault(key, value)
            return value

        try:
            for op in ops:
                name = op[0]
                if name == "get":
                    results.append(get(op[1]))
                elif name == "scan":
                    found = branch.items(op[1])
                    results.append({key: get(key) for key, _ in found})
                elif name == "put":
                    branch.put(op[1], op[2].encode())
                    results.append(None)
                elif name == "add":
                    branch.add(op[1], int(op[2]), min=op[3], max=op[4])
                    results.append(None)
                elif name == "update":
                    _, key, delta, low = op
                    value = get(key)
                    if value is None:
                        raise ValueError(f"{key} does not exist")
                    if low is not None and int(value) + delta < low:
                        raise ValueError(
                            f"insufficient funds: {key} holds {value}, the transfer takes {-delta}"
                        )
                    branch.put(key, str(int(value) + delta).encode())
                    results.append(int(value))
                elif name == "lock":
                    try:
                        branch.lock(*op[1:])
                    except LockConflict as error:
                        # No-wait leases: the caller tries again shortly, on the same
                        # branch, so this is an answer, not a failure of the branch.
                        return {"conflict": str(error)}
                    results.append(None)
                else:
                    raise ValueError(f"unknown operation {name!r}")
        finally:
            writes = branch.writes
            if writes:
                self.written.setdefault(txn_id, set()).update(writes)
        with self.values_lock:
            values = dict(values)
        return {
            "results": results,
            "values": values,
            "reads": {k: [v.seq, v.txn_id] for k, v in branch.reads.items()},
            "scans": branch.scans,
            "writes": {k: _write_json(w) for k, w in writes.items()},
        }

    def release_decided(self) -> None:
        """Free the reservations of decided (or unknown) branches."""
        participant = self.participant
        if participant is None or not participant.running:
            return
        with self.reserved_lock:
            holders = set(self.reserved.values())
        decided = set()
        for txn_id in holders:
            record = participant.record(txn_id)
            if record is None or record.state.value != "PREPARED":
                decided.add(txn_id)
        with self.reserved_lock:
            for key, holder in list(self.reserved.items()):
                if holder in decided:
                    del self.reserved[key]


def _write_json(write: object) -> object:
    if isinstance(write, Add):
        return {"add": write.delta, "min": write.min, "max": write.max}
    if isinstance(write, bytes):
        return write.decode()
    return None


def serve_http(agent: Agent) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            participant = agent.participant
            assert participant is not None
            self._reply(
                200,
                {
                    "state": {k: v.decode() for k, v in participant.state.items()},
                    "in_doubt": participant.in_doubt(),
                    # Branches whose keys the store holds for a YES (until the decision).
                    "held": sorted(participant.store.held_footprints()),
                    "term_seen": participant.term_seen,
                    "violations": participant.violations,
                    "pid": os.getpid(),
                },
            )

        def do_POST(self) -> None:
            participant = agent.participant
            assert participant is not None
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path == "/records":
                records = {}
                for txn_id in body["ids"]:
                    record = participant.record(txn_id)
                    records[txn_id] = (
                        None
                        if record is None
                        else {
                            "state": record.state.value,
                            "voted_yes": record.voted_yes,
                            "installed": agent.installed.get(txn_id, {}),
                        }
                    )
                self._reply(200, records)
                return
            self._reply(404, {"error": f"no {self.path} here"})

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def transport(participant_id: str, insecure: bool) -> Transport:
    """Plaintext only when asked for; otherwise the certificate in the environment."""
    if insecure:
        return Transport.insecure()
    found = Transport.from_env(Role.PARTICIPANT, participant_id)
    if found is None:
        raise SystemExit(
            f"participant {participant_id}: no certificate (CONCORD_TLS_CA/CERT/KEY or "
            "CONCORD_TLS_DIR); --insecure for plaintext"
        )
    return found


async def main_async(args: argparse.Namespace) -> None:
    tls = transport(args.id, args.insecure)
    agent = Agent(installed_path=Path(f"{args.data_dir}.installed.jsonl"))
    participant = Participant(
        args.id,
        args.data_dir,
        args.coordinators.split(","),
        validate=agent.validate,
        actions=agent.actions(),
        on_decided=agent.on_decided,
        tls=tls,
        options=ParticipantOptions(
            connect=args.connect,
            listen=args.listen,
            advertise=args.advertise if args.connect == "inbound" else None,
            record_retention_ms=RECORD_RETENTION_MS,
            tick_interval_s=0.2,
            in_doubt_ask_after_s=0.5,
            query_backoff_max_s=0.5,
            call_timeout_s=2.0,
            lock_lease_ms=LOCK_LEASE_MS,
        ),
    )
    agent.participant = participant
    await participant.start()
    await participant.wait_registered(timeout_s=60)
    if args.connect == "outbound":  # ready once the leader can reach it
        await participant.wait_attached(timeout_s=60)
    http = serve_http(agent)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    write_ready_file(args.ready_file, {"http": http.server_address[1]})
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    while not stop.is_set():
        await asyncio.to_thread(agent.release_decided)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await stop.wait()
    http.shutdown()
    await participant.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--coordinators", required=True)
    parser.add_argument("--connect", choices=("inbound", "outbound"), default="inbound")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--advertise")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC, no identity")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.id} %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
