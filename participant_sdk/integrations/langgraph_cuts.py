"""Graph cuts: LangGraph threads tied to Concord's global checkpoints.

``cut`` names the checkpoint each namespace of each thread is at (and the writes
pending on it); ``rewind`` makes those checkpoints the threads' latest again,
exactly (same ids, the writes of the cut), and moves what the threads did since to
an "undone" thread of its own, where it stays listed. ``graph_rollback`` binds both
to a participant's ``AgentRollback``. ``ConcordSaver.cut`` and ``.rewind`` call
these on the saver's store; the layout is langgraph_format.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from langgraph.checkpoint.serde.base import SerializerProtocol

from participant_sdk.integrations.langgraph_format import (
    PendingWrites,
    delete_checkpoints,
    make_key,
    split_key,
    stored_checkpoint,
    stored_metadata,
    version_part,
)
from participant_sdk.reversion import AgentRollback, RestoreResult, Reverter
from participant_sdk.storage.checkpoint_format import CheckpointError, seal, unseal
from participant_sdk.storage.kv import KvStore, Tx

# A graph cut, as saved in the agent's checkpoint store: thread -> ns -> entry.
GraphCut = dict[str, dict[str, dict[str, Any]]]


def undone_thread(thread_id: str, cut_checkpoint_id: str) -> str:
    """The thread that keeps what ``rewind`` took out of ``thread_id`` (its root
    namespace's cut checkpoint was ``cut_checkpoint_id``)."""
    return f"{thread_id}~undone~{cut_checkpoint_id}"


def cut(kv: KvStore, thread_ids: Sequence[str]) -> GraphCut:
    """Where each thread is now: for each namespace, its latest checkpoint id and
    the (task id, index) of the writes pending on it. JSON, so a global checkpoint
    can keep it in the agent's checkpoint store."""
    out: GraphCut = {}
    with kv.read() as tx:
        for thread_id in thread_ids:
            out[thread_id] = {}
            for key, raw in tx.scan("latest", make_key(str(thread_id))):
                (_, ns), _ = split_key(key, 2)
                checkpoint_id = bytes(unseal(raw, "latest checkpoint id")).decode()
                writes = PendingWrites.decode(
                    tx.get("writes", key + checkpoint_id.encode()), "writes"
                )
                out[thread_id][ns] = {
                    "checkpoint_id": checkpoint_id,
                    "writes": sorted([task, idx] for task, idx in writes),
                }
    return out


def rewind(kv: KvStore, serde: SerializerProtocol, graph_cut: GraphCut) -> dict[str, str]:
    """Return each thread of ``graph_cut`` to the checkpoints it names, exactly (see
    ``ConcordSaver.rewind``). One atomic write. Returns thread -> its undone thread."""
    moved: dict[str, str] = {}
    with kv.write() as tx:
        for thread_id, spaces in graph_cut.items():
            thread = str(thread_id)
            root = spaces.get("", {}).get("checkpoint_id") or next(
                (str(e["checkpoint_id"]) for e in spaces.values()), ""
            )
            archive = undone_thread(thread, root)
            for key, _ in list(tx.scan("latest", make_key(thread))):
                (_, ns), _ = split_key(key, 2)
                if ns not in spaces:  # begun since the cut
                    where = make_key(thread, ns)
                    ids = {k[len(where) :].decode() for k, _ in tx.scan("checkpoints", where)}
                    _archive(tx, serde, thread, ns, ids, archive)
                    delete_checkpoints(tx, serde, thread, ns, ids)
            for ns, entry in spaces.items():
                _rewind_namespace(tx, serde, thread, ns, entry, archive)
            moved[thread] = archive
    return moved


def _rewind_namespace(
    tx: Tx, serde: SerializerProtocol, thread: str, ns: str, entry: Mapping[str, Any], archive: str
) -> None:
    where = make_key(thread, ns)
    cut_id = str(entry["checkpoint_id"])
    if tx.get("checkpoints", where + cut_id.encode()) is None:
        raise CheckpointError(
            f"thread {thread!r} has no checkpoint {cut_id} (namespace {ns!r}) to "
            "rewind to: deleted or pruned since the cut"
        )
    newer = {
        k[len(where) :].decode()
        for k, _ in tx.scan("checkpoints", where)
        if k[len(where) :].decode() > cut_id
    }
    kept = {(str(task), int(idx)) for task, idx in entry.get("writes", [])}
    writes = PendingWrites.decode(tx.get("writes", where + cut_id.encode()), "writes")
    later = {k for k in writes if k not in kept}
    if not newer and not later:
        return  # the thread is still where the cut found it
    # The cut checkpoint goes to the archive too, with every write it has now: the
    # undone checkpoints' parent, and the writes added to it since the cut.
    _archive(tx, serde, thread, ns, newer | {cut_id}, archive)
    delete_checkpoints(tx, serde, thread, ns, newer)
    remaining = {k: v for k, v in writes.items() if k in kept}
    if remaining:
        tx.put("writes", where + cut_id.encode(), PendingWrites.encode(remaining))
    else:
        tx.delete("writes", where + cut_id.encode())
    tx.put("latest", where, seal(cut_id.encode()))


def _archive(
    tx: Tx, serde: SerializerProtocol, thread: str, ns: str, ids: set[str], archive: str
) -> None:
    """Copy checkpoints ``ids`` of (thread, ns), with their writes and the channel
    values they refer to, to (archive, ns)."""
    where, there = make_key(thread, ns), make_key(archive, ns)
    for checkpoint_id in sorted(ids):
        raw = tx.get("checkpoints", where + checkpoint_id.encode())
        if raw is None:
            continue
        tx.put("checkpoints", there + checkpoint_id.encode(), raw)
        written = tx.get("writes", where + checkpoint_id.encode())
        if written is not None:
            tx.put("writes", there + checkpoint_id.encode(), written)
        versions = stored_checkpoint(serde, raw, checkpoint_id)["channel_versions"]
        for channel, version in versions.items():
            suffix = make_key(channel) + version_part(version).encode()
            blob = tx.get("blobs", where + suffix)
            if blob is not None:
                tx.put("blobs", there + suffix, blob)
        metadata = stored_metadata(serde, raw, checkpoint_id)
        if metadata.get("run_id"):
            tx.put("runs", make_key(str(metadata["run_id"])) + there + checkpoint_id.encode(), b"")
        latest = tx.get("latest", there)
        if latest is None or bytes(unseal(latest, "latest")).decode() < checkpoint_id:
            tx.put("latest", there, seal(checkpoint_id.encode()))


class CutsGraphs(Protocol):
    """What ``graph_rollback`` needs of a saver (``ConcordSaver`` has both)."""

    def cut(self, thread_ids: Sequence[str]) -> GraphCut: ...

    def rewind(self, cut: GraphCut) -> dict[str, str]: ...


def graph_rollback(
    saver: CutsGraphs,
    reverter: Reverter,
    thread_ids: Callable[[], Sequence[str]] | Sequence[str],
    *,
    restored: Callable[[RestoreResult, dict[str, str]], Any] | None = None,
    verify: Callable[[RestoreResult], tuple[bool, str]] | None = None,
) -> AgentRollback:
    """The ``AgentRollback`` that ties the graph threads ``thread_ids`` to the
    participant's global checkpoints and rollback rounds:

    - a global checkpoint round saves ``saver.cut(threads)`` in the agent's checkpoint
      store under the round's id (and the effect log's generation moves with it);
    - on EXECUTE of a rollback round, the reverter restores that checkpoint (every
      compensable tool call made since is undone, newest first, once each), then
      ``saver.rewind`` returns each thread to the cut checkpoint; ``restored(result,
      undone)`` is told after (``undone``: thread -> the thread that keeps what was
      rewound away).
    """

    def threads() -> list[str]:
        return list(thread_ids() if callable(thread_ids) else thread_ids)

    def capture() -> dict[str, Any]:
        return {"graphs": saver.cut(threads())}

    def rewound(result: RestoreResult) -> None:
        undone = saver.rewind(result.checkpoint.state.get("graphs", {}))
        if restored is not None:
            restored(result, undone)

    return AgentRollback(reverter=reverter, capture=capture, restored=rewound, verify=verify)
