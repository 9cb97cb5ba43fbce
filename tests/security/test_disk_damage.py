"""Disk damage, for each kind of file Concord keeps: the coordinator's audit log
(LMDB), an agent's checkpoint store (LMDB), its effect log (LMDB), the Raft snapshot
(gzip), and a participant's data dir as a whole, started through
``Participant.start()``. (Damaged participant values, an empty or truncated participant
store or Raft journal, and a damaged checkpoint write-ahead log record are tested in
tests/participant/test_store_contract.py, tests/replication/test_data_dir.py and
tests/rollback/test_wal.py.)

Each file is written through its own code, closed, then damaged on disk:

- ``flip``: one bit of a known value, in every copy of it the file holds (so the live
  one is hit): bit rot that leaves the bytes plausible (a letter for a letter);
- ``empty``: truncated to 0 bytes (a file created but never written, a lost volume);
- ``truncated``: its last page gone (a copy or a disk that stopped short).

It is then opened the way the product opens it, in a child process (a damaged mapped
file can end a process with SIGBUS: only the child may die of it), which reports one
of: ``refused`` (the open raised the kind's own error), ``detected`` (it opened, and
reading the value or verifying the file named the damage), ``silent`` (it opened and
served the data: changed, or empty), ``crashed`` (another exception). What must hold:
an empty or truncated file is refused at open, with one line naming the file; a
flipped bit is refused or detected, with one line; never silent, never a crash, never
a signal.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator.audit.log import AUDIT_DIR
from coordinator.core.types import Decision, Kind

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60.0
PAGE = 4096
DAMAGES = ("flip", "empty", "truncated")

MARK_AUDIT = "MARKER-audit-round-0001"
MARK_CHECKPOINT = "MARKER-checkpoint-value-0001"
MARK_EFFECT = "MARKER-effect-argument-0001"
MARK_STATE = b"MARKER-participant-value-0001"
MARK_TXN = "MARKER-participant-txn-0001"


# ---------------------------------------------------------------------- damage


def flip_gzip_plausibly(path: Path) -> None:
    """Flip the first bit, from the middle of the compressed data on, after which the
    data still inflates and unpickles, only to something else: damage that only the
    gzip CRC can tell (the flips a reader must not miss)."""
    import gzip
    import pickle
    import zlib

    data = bytearray(path.read_bytes())
    original = gzip.decompress(bytes(data))
    for offset in range(len(data) // 2, len(data) - 8):
        for bit in range(8):
            data[offset] ^= 1 << bit
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                header = 10 + (data.index(0, 10) + 1 - 10 if data[3] & 0x08 else 0)
                changed = inflater.decompress(bytes(data[header:]))
                pickle.loads(changed)
            except Exception:
                changed = original
            if changed != original and inflater.eof:
                path.write_bytes(bytes(data))
                return
            data[offset] ^= 1 << bit
    raise AssertionError(f"no plausible flip found in {path}")


def damage(path: Path, how: str, marker: bytes = b"") -> None:
    """Damage ``path`` on disk (see the module doc)."""
    data = bytearray(path.read_bytes())
    if how == "flip":
        if marker:
            offsets = []
            start = data.find(marker)
            while start != -1:
                offsets.append(start)
                start = data.find(marker, start + 1)
            assert offsets, f"{marker!r} is not in {path}: the test cannot aim its flip"
        else:
            offsets = [len(data) // 2 - len(marker) // 2]
        for offset in offsets:
            data[offset + len(marker) // 2] ^= 0x01  # "M" -> "L", "4" -> "5": still plausible
        path.write_bytes(bytes(data))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        keep = (len(data) - 1) // PAGE * PAGE if len(data) > PAGE else len(data) // 2
        path.write_bytes(bytes(data[:keep]))
    else:
        raise ValueError(how)


def run_child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Open the damaged file in a child process; its report."""
    code = (
        "import json, sys\n"
        "from tests.security.test_disk_damage import CHILDREN\n"
        "report = CHILDREN[sys.argv[1]](json.loads(sys.argv[2]))\n"
        "print('REPORT ' + json.dumps(report))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, kind, json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise AssertionError(f"{kind}: the process died of {name}: {done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, f"{kind}: exit {done.returncode}: {done.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(lines[-1][len("REPORT ") :])
    return report


def _outcome(outcome: str, error: BaseException | None = None, **more: Any) -> dict[str, Any]:
    text = "" if error is None else str(error)
    return {
        "outcome": outcome,
        "type": type(error).__name__ if error else "",
        "message": text,
        **more,
    }


def check(report: dict[str, Any], how: str, names: Path) -> None:
    """The secure behaviour (module doc); ``names``: the file or directory an open-time
    refusal must name."""
    outcome, message = report["outcome"], report["message"]
    assert outcome not in ("silent", "crashed"), f"{how}: {outcome}: {report['type']} {message}"
    assert "\n" not in message.strip() and message, f"{how}: not one line: {report}"
    if how in ("empty", "truncated"):
        assert outcome == "refused", f"{how}: {outcome}, not refused at open: {message}"
    if outcome == "refused":
        assert str(names) in message, f"the refusal does not name {names}: {message}"


# ---------------------------------------------------------------------- audit log


def build_audit(directory: Path) -> Path:
    from coordinator.core.entries import Abort, BeginTxn
    from tests.audit.test_coordinator_audit import applied_log, feed, open_log

    entries = [
        BeginTxn(txn_id=MARK_AUDIT, session_id="s", participants=("a",), timeout_ms=5000, now_ms=1),
        Abort(round_id=MARK_AUDIT, reason="operator: test", now_ms=2),
    ]
    audit = open_log(directory / AUDIT_DIR)
    try:
        feed(audit, applied_log(entries))
        assert all(v.ok for v in audit.verify())
    finally:
        audit.close()
    return directory / AUDIT_DIR / "data.mdb"


def open_audit(args: dict[str, Any]) -> dict[str, Any]:
    from coordinator.audit.log import AuditError, AuditLog

    try:
        audit = AuditLog(Path(args["path"]), node_id="c1")  # as `concord serve` opens it
    except AuditError as error:
        return _outcome("refused", error)
    except Exception as error:
        return _outcome("crashed", error)
    try:
        chain, _local = audit.verify()
        if not chain.ok:
            why = f"{args['path']}: record {chain.first_bad}: {chain.problem}"
            return _outcome("detected", None, message=why)
        rounds = {r.get("round_id") for r in audit.records(local=False)}
        if MARK_AUDIT not in rounds:
            return _outcome("silent", None, message=f"served rounds {sorted(rounds)[:5]}")
        return _outcome("silent", None, message="verified as intact")
    except Exception as error:
        return _outcome("crashed", error)
    finally:
        audit.close()


@pytest.mark.parametrize("how", DAMAGES)
def test_the_coordinator_audit_log(tmp_path: Path, how: str) -> None:
    data = build_audit(tmp_path)
    damage(data, how, MARK_AUDIT.encode())
    check(run_child("audit", {"path": str(data.parent)}), how, data.parent)


# ---------------------------------------------------------------------- checkpoint store


def build_checkpoints(directory: Path) -> Path:
    from participant_sdk.checkpoints import LmdbCheckpointStore, checkpoints_dir

    path = checkpoints_dir(directory)
    store = LmdbCheckpointStore(path)
    try:
        store.save({"note": MARK_CHECKPOINT, "n": 1}, label="first", checkpoint_id="cp1")
        store.save({"note": MARK_CHECKPOINT, "n": 2}, label="second", checkpoint_id="cp2")
    finally:
        store.close()
    LmdbCheckpointStore(path).close()  # an open moves the write-ahead log into LMDB
    return path / "data.mdb"


def open_checkpoints(args: dict[str, Any]) -> dict[str, Any]:
    from participant_sdk.checkpoints import CheckpointError, LmdbCheckpointStore

    try:
        store = LmdbCheckpointStore(Path(args["path"]))
    except CheckpointError as error:
        return _outcome("refused", error)
    except Exception as error:
        return _outcome("crashed", error)
    try:
        problems = store.verify()
        if problems:
            return _outcome("detected", None, message=problems[0])
        notes = [store.load(cp).state.get("note") for cp in ("cp1", "cp2")]
        if notes != [MARK_CHECKPOINT] * 2:
            return _outcome("silent", None, message=f"served {notes}")
        return _outcome("silent", None, message="verified as intact")
    except CheckpointError as error:
        return _outcome("detected", error)
    except Exception as error:
        return _outcome("crashed", error)
    finally:
        store.close()


@pytest.mark.parametrize("how", DAMAGES)
def test_the_checkpoint_store(tmp_path: Path, how: str) -> None:
    data = build_checkpoints(tmp_path)
    damage(data, how, MARK_CHECKPOINT.encode())
    check(run_child("checkpoints", {"path": str(data.parent)}), how, data.parent)


# ---------------------------------------------------------------------- effect log


def build_effects(directory: Path) -> Path:
    from participant_sdk.effects import EffectLog, effects_dir

    log = EffectLog.open(directory)
    try:

        @log.compensable(compensate=lambda effect: None, name="charge")
        def charge(card: str, amount: int) -> str:
            return f"charged {amount}"

        with log.transaction("t1"):
            charge(MARK_EFFECT, 100, idempotency_key="charge-1")
    finally:
        log.close()
    return effects_dir(directory) / "data.mdb"


def open_effects(args: dict[str, Any]) -> dict[str, Any]:
    from participant_sdk.effects import EffectError, EffectLog

    try:
        log = EffectLog.open(Path(args["data_dir"]))
    except EffectError as error:
        return _outcome("refused", error)
    except Exception as error:
        return _outcome("crashed", error)
    try:
        effect = log.get("charge-1")
        if list(effect.args) != [MARK_EFFECT, 100]:
            return _outcome("silent", None, message=f"served args {list(effect.args)}")
        return _outcome("silent", None, message="served as intact")
    except EffectError as error:
        return _outcome("detected", error)
    except Exception as error:
        return _outcome("crashed", error)
    finally:
        log.close()


@pytest.mark.parametrize("how", DAMAGES)
def test_the_effect_log(tmp_path: Path, how: str) -> None:
    data = build_effects(tmp_path)
    damage(data, how, MARK_EFFECT.encode())
    check(run_child("effects", {"data_dir": str(tmp_path)}), how, data.parent)


# ---------------------------------------------------------------------- Raft snapshot


def build_snapshot(root: Path) -> tuple[Path, dict[str, Any]]:
    """A single node whose log was compacted into a snapshot; (the snapshot, what the
    child needs to start the node again and what it must find)."""
    from coordinator.replication.node import SNAPSHOT_FILE, ProposeStatus, ReplicatedCoordinator
    from tests.replication.helpers import addresses, begin, config, leader_of, propose_wait

    nodes = addresses(1)
    node = ReplicatedCoordinator(config(nodes, "n0", root, log_compaction_entries_min=8))
    try:
        leader = leader_of({"n0": node})
        for i in range(30):
            assert propose_wait(leader, begin(f"r{i}")).status is ProposeStatus.APPLIED
            if (root / "n0" / SNAPSHOT_FILE).exists() and i >= 12:
                break
        rounds = node.read(lambda s: sorted(s.rounds))
    finally:
        node.close()
    snapshot = root / "n0" / SNAPSHOT_FILE
    assert snapshot.exists(), "the log was never compacted"
    node_args = {"root": str(root), "raft": nodes[0].raft, "rounds": rounds}
    return snapshot, node_args


def open_snapshot(args: dict[str, Any]) -> dict[str, Any]:
    from coordinator.replication.node import NodeAddress, ReplicatedCoordinator, ReplicationError
    from tests.replication.helpers import config, leader_of

    nodes = (NodeAddress(node_id="n0", raft=args["raft"], grpc="127.0.0.1:0"),)
    try:
        node = ReplicatedCoordinator(config(nodes, "n0", Path(args["root"])))
    except ReplicationError as error:
        return _outcome("refused", error)
    except Exception as error:
        return _outcome("crashed", error)
    try:
        leader_of({"n0": node}, timeout_s=20)
        rounds = node.read(lambda s: sorted(s.rounds))
        if rounds != args["rounds"]:
            return _outcome("silent", None, message=f"started with rounds {rounds[:5]}...")
        return _outcome("silent", None, message="started from the damaged snapshot without a word")
    except Exception as error:
        return _outcome("crashed", error)
    finally:
        node.close()


@pytest.mark.parametrize("how", DAMAGES)
def test_the_raft_snapshot(tmp_path: Path, how: str) -> None:
    snapshot, node_args = build_snapshot(tmp_path)
    if how == "flip":
        flip_gzip_plausibly(snapshot)
    else:
        damage(snapshot, how)
    check(run_child("snapshot", node_args), how, snapshot)


# ---------------------------------------------------------------------- a participant


def build_participant(data_dir: Path) -> Path:
    """A participant that committed ``MARK_TXN`` (writing ``MARK_STATE``), driven by
    the messages a coordinator sends; stopped."""
    from coordinator.core.messages import Decide, Prepare
    from coordinator.security.transport import Transport
    from participant_sdk import Participant

    async def run() -> None:
        participant = Participant("p1", data_dir, [], tls=Transport.insecure())
        await participant.start()
        try:
            participant.begin(MARK_TXN).put("k", MARK_STATE)
            prepare = Prepare(
                round_id=MARK_TXN, kind=Kind.TXN, participant_id="p1", session_id="s", term=1
            )
            [vote] = await asyncio.to_thread(participant.handle_messages, [prepare])
            assert getattr(vote, "yes", False), vote
            decide = Decide(
                round_id=MARK_TXN,
                kind=Kind.TXN,
                participant_id="p1",
                decision=Decision.COMMIT,
                term=1,
            )
            await asyncio.to_thread(participant.handle_messages, [decide])
            assert participant.state.get("k") == MARK_STATE
        finally:
            await participant.stop()

    asyncio.run(run())
    return data_dir / "data.mdb"


def open_participant(args: dict[str, Any]) -> dict[str, Any]:
    from coordinator.security.transport import Transport
    from participant_sdk import Participant, StoreError

    async def run() -> dict[str, Any]:
        participant = Participant("p1", Path(args["data_dir"]), [], tls=Transport.insecure())
        try:
            await participant.start()
        except StoreError as error:
            return _outcome("refused", error)
        except Exception as error:
            return _outcome("crashed", error)
        try:
            value = participant.state.get("k")
            record = participant.record(MARK_TXN)
            participant.store.verify_audit()
            if value != MARK_STATE or record is None:
                return _outcome("silent", None, message=f"served k={value!r}, record {record}")
            return _outcome("silent", None, message="served as intact")
        except StoreError as error:
            return _outcome("detected", error)
        except Exception as error:
            return _outcome("crashed", error)
        finally:
            await participant.stop()

    return asyncio.run(run())


PARTICIPANT_DAMAGES = {
    "flip-state-value": ("flip", MARK_STATE),
    "flip-txn-id": ("flip", MARK_TXN.encode()),
    "empty": ("empty", b""),
    "truncated": ("truncated", b""),
}


@pytest.mark.parametrize("case", sorted(PARTICIPANT_DAMAGES))
def test_a_participant_data_dir_at_start(tmp_path: Path, case: str) -> None:
    how, marker = PARTICIPANT_DAMAGES[case]
    data = build_participant(tmp_path / "p1")
    damage(data, how, marker)
    check(run_child("participant", {"data_dir": str(data.parent)}), how, data.parent)


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "audit": open_audit,
    "checkpoints": open_checkpoints,
    "effects": open_effects,
    "snapshot": open_snapshot,
    "participant": open_participant,
}


# ---------------------------------------------------------------------- a lost data dir


@pytest.mark.integration
def test_a_node_whose_data_dir_is_gone_refuses_to_start(tmp_path: Path) -> None:
    """A follower of a 3-node cluster whose data dir is gone (a lost volume) is
    restarted: it must refuse, with one line naming the data dir, instead of coming
    back as a new, empty member (no term, no vote, no log). Only the first boot of a
    new cluster, or a join through a membership change, may start from nothing."""
    import shutil
    import time

    import grpc

    from coordinator.runtime.local_cluster import CLIENT, LocalCluster
    from coordinator.security.identity import Role
    from participant_sdk import SyncConcordClient

    cluster = LocalCluster(tmp_path / "cluster", 3)
    try:
        cluster.start()
        leader = cluster.wait_all_serving()  # every node has made its data dir
        tls = cluster.transport(Role.CLIENT, CLIENT)
        with SyncConcordClient(cluster.grpc_addresses, tls=tls, call_timeout_s=10) as client:
            txn = client.begin([])
            assert client.commit(txn.id) is Decision.COMMIT
        follower = next(n for n in cluster.nodes if n != leader)
        node = cluster.nodes[follower]
        cluster.stop_node(follower)
        shutil.rmtree(node.data_dir)
        log_size = node.log_path.stat().st_size
        cluster.start_node(follower)
        deadline = time.monotonic() + 30
        outcome = ""
        while time.monotonic() < deadline and not outcome:
            assert node.process is not None
            if node.process.poll() is not None:
                outcome = "exited"
                break
            try:
                cluster.status(follower)
                outcome = "serving"
            except grpc.RpcError:
                time.sleep(0.05)
        said = node.log_path.read_bytes()[log_size:].decode(errors="replace").strip()
        assert outcome == "exited", (
            f"{follower} started again from an empty data dir ({outcome or 'still starting'}); "
            f"it said: {said[-1000:]}"
        )
        assert node.process.returncode != 0
        last = said.splitlines()[-1] if said else ""
        assert str(node.data_dir) in last, said[-2000:]
    finally:
        cluster.stop()
