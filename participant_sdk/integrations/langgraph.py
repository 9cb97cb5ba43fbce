"""LangGraph on Concord: a durable checkpoint saver, compensable tools, graph cuts.

Theory of operation
-------------------
Only this package (participant_sdk.integrations) imports ``langgraph`` (the ``langgraph``
extra: ``pip install 'concord-txn[langgraph]'``); docs/langgraph.md is its manual.

``ConcordSaver`` is a LangGraph ``BaseCheckpointSaver`` (sync and async methods).
It keeps a graph's checkpoints, metadata and pending writes in a participant's data
dir, in an LMDB env of its own (``langgraph_dir(data_dir)``, beside the agent's
checkpoint store) behind the same write-ahead log as that store
(``LoggedLmdbKv``: every ``put``, ``put_writes`` and delete is one atomic write,
durable when the call returns, with one flush) and with the same crc32 on every
value (``seal``/``unseal``: a damaged value raises ``CheckpointCorrupt``, it is
never returned). Tables, keys being length-prefixed UTF-8 parts:

- ``checkpoints``: (thread, ns) + checkpoint id -> parent id, the checkpoint
  without its channel values, the metadata (each serialised by the saver's serde);
- ``blobs``: (thread, ns) + (channel) + version -> one channel value: a value is
  stored once per version, as LangGraph's in-memory and Postgres savers do;
- ``writes``: (thread, ns) + checkpoint id -> every pending write of that
  checkpoint, in one value (a read is one get, not a scan);
- ``latest``: (thread, ns) -> the newest checkpoint id (LangGraph's ids sort by time);
- ``runs``: (run id) + (thread, ns) + checkpoint id -> nothing: the index
  ``delete_for_runs`` reads;
- ``meta``: the format version and the log's epoch.

Compensable tools (``compensable``) run through an ``EffectLog``: each executed call
is one effect, keyed by the graph thread and the LLM's tool call id, so an abort or
a rollback undoes exactly the calls that ran, newest first, once each (effects.py).
A call retried after its effect was undone is a new effect under a new key
(``call-id#2``, ...): it is never mistaken for the undone one, nor compensated twice.

Graph cuts (``ConcordSaver.cut`` and ``rewind``) tie graphs to Concord's global
checkpoints: ``cut`` names the checkpoint each namespace of each thread is at (and
the writes pending on it); ``rewind`` makes those checkpoints the threads' latest
again, exactly (same ids, the writes of the cut), and moves what the threads did
since to an "undone" thread of its own, where it stays listed. ``graph_rollback``
binds both to a participant's ``AgentRollback``.

Three modules: this one (the saver), langgraph_format.py (the tables, keys and values
above), langgraph_cuts.py (cuts, rewinds, ``graph_rollback``); langgraph_tools.py has
``compensable``. This one is the public import path of all of them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import pickle
import random
import struct
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from participant_sdk.integrations.langgraph_cuts import (
    GraphCut,
    cut,
    graph_rollback,
    rewind,
    undone_thread,
)
from participant_sdk.integrations.langgraph_format import (
    EMPTY_BLOB,
    FORMAT_VERSION,
    TABLES,
    PendingWrites,
    channel_key,
    delete_checkpoints,
    make_key,
    sealed,
    split_key,
    unpack,
    version_part,
)
from participant_sdk.integrations.langgraph_tools import EffectName, compensable
from participant_sdk.storage.checkpoint_format import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointLimitError,
    seal,
    unseal,
)
from participant_sdk.storage.kv import KvStore, Names, Tx
from participant_sdk.storage.logged import LoggedLmdbKv
from participant_sdk.storage.memory import MemoryKv

__all__ = [
    "ConcordSaver",
    "EffectName",
    "GraphCut",
    "compensable",
    "graph_rollback",
    "langgraph_dir",
    "undone_thread",
]

_STAMP = struct.Struct(">Q")  # kv.commits, as a tuple cache entry's validity


def langgraph_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Where a participant's LangGraph checkpoints live: an LMDB env of their own,
    beside the agent's checkpoint store (``checkpoints_dir``)."""
    return Path(data_dir) / "rollback" / "langgraph"


# ---------------------------------------------------------------------- the saver


class ConcordSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpoint saver on Concord's durable store (module docstring).

    ``ConcordSaver.open(data_dir)`` keeps it in a participant's data dir;
    ``ConcordSaver(path)`` in any directory; ``ConcordSaver.memory()`` in this
    process only (the same semantics without durability: tests, demos). One process
    writes a store (an exclusive lock). Thread-safe; the async methods run the sync
    ones on a worker thread, so a flush never blocks the event loop."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        serde: SerializerProtocol | None = None,
        kv: KvStore | None = None,
        map_size_bytes: int = 1 << 30,
        wal_size_bytes: int = 8 << 20,
        cache_bytes_max: int = 32 << 20,
    ) -> None:
        super().__init__(serde=serde)
        self.cache_bytes_max = cache_bytes_max
        self._cache: collections.OrderedDict[tuple[str, bytes], tuple[bytes, bytes]] = (
            collections.OrderedDict()
        )
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()
        if kv is None:
            if path is None:
                raise ValueError("ConcordSaver needs a path (or ConcordSaver.memory())")
            self.path: Path | None = Path(path)
            names = Names(
                what=f"LangGraph checkpoint store {self.path}",
                error=CheckpointError,
                full_error=CheckpointLimitError,
                full_hint="prune threads or raise map_size_bytes",
            )
            kv = LoggedLmdbKv(
                self.path,
                TABLES,
                names,
                map_size_bytes=map_size_bytes,
                log_size_bytes=wal_size_bytes,
                on_open=self._check_format,
                damaged=CheckpointCorrupt,
            )
        else:
            self.path = None
        self.kv = kv

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], **options: Any) -> ConcordSaver:
        """The saver of a participant data dir (``langgraph_dir(data_dir)``)."""
        return cls(langgraph_dir(data_dir), **options)

    @classmethod
    def memory(cls, *, serde: SerializerProtocol | None = None) -> ConcordSaver:
        names = Names(what="memory LangGraph checkpoint store", error=CheckpointError)
        return cls(serde=serde, kv=MemoryKv(TABLES, names))

    def _check_format(self, tx: Tx) -> None:
        version = tx.get("meta", b"format_version")
        if version is not None and int(version) != FORMAT_VERSION:
            raise CheckpointError(
                f"LangGraph checkpoint store {self.path} has format {version!r}, this SDK "
                f"reads {FORMAT_VERSION}"
            )
        if version is None:
            tx.put("meta", b"format_version", str(FORMAT_VERSION).encode())

    def close(self) -> None:
        """Release the store. Idempotent."""
        self.kv.close()

    def __enter__(self) -> ConcordSaver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    async def __aenter__(self) -> ConcordSaver:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def verify(self) -> list[str]:
        """Check every stored value's checksum (and the log); the problems found."""
        problems = []
        with self.kv.read() as tx:
            for table in ("checkpoints", "blobs", "writes", "latest"):
                for key, raw in tx.scan(table):
                    try:
                        unseal(raw, f"{table} entry")
                    except CheckpointCorrupt as error:
                        problems.append(f"{error} (key {key!r})")
        return problems + self.kv.check()

    # ------------------------------------------------------------ reading

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """A checkpoint tuple read a second time while nothing was written to the
        store (``kv.commits`` unchanged) comes from a cache of whole tuples (pickled,
        within ``cache_bytes_max``): a fresh copy, one ``pickle.loads``. The first read
        after a write decodes it (each value from the value cache when it can), so a
        graph that writes between reads pays nothing to fill a cache it cannot use."""
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        where = make_key(thread_id, ns)
        slot = ("tuple", where + checkpoint_id.encode()) if checkpoint_id else ("latest", where)
        stamp = _STAMP.pack(self.kv.commits)  # before the reads: a write after changes it
        with self._cache_lock:
            cached = self._cache.get(slot)
        if cached is not None and cached[0] == stamp and cached[1] and not self.kv.closed:
            found: CheckpointTuple = pickle.loads(cached[1])
            return found
        with self.kv.read() as tx:
            if not checkpoint_id:
                latest = tx.get("latest", where)
                if latest is None:
                    return None
                checkpoint_id = bytes(unseal(latest, "latest checkpoint id")).decode()
            result = self._tuple(tx, thread_id, ns, checkpoint_id)
        if result is None:
            return None
        if cached is None or cached[0] != stamp:
            self._remember(slot, stamp, b"")  # read once: cached on the next read
        else:
            with contextlib.suppress(Exception):  # not picklable: decoded every time
                self._remember(slot, stamp, pickle.dumps(result, pickle.HIGHEST_PROTOCOL))
        return result

    def _remember(self, slot: tuple[str, bytes], raw: bytes, pickled: bytes) -> None:
        """Keep ``pickled`` for ``slot`` (valid while the stored bytes, or the stamp,
        are ``raw``); the least recently used go beyond ``cache_bytes_max``."""
        size = len(raw) + len(pickled)
        if size > self.cache_bytes_max:
            return
        with self._cache_lock:
            old = self._cache.pop(slot, None)
            if old is not None:
                self._cache_bytes -= len(old[0]) + len(old[1])
            self._cache[slot] = (raw, pickled)
            self._cache_bytes += size
            while self._cache_bytes > self.cache_bytes_max:
                _, (r, p) = self._cache.popitem(last=False)
                self._cache_bytes -= len(r) + len(p)

    def _tuple(self, tx: Tx, thread_id: str, ns: str, checkpoint_id: str) -> CheckpointTuple | None:
        where = make_key(thread_id, ns)
        found = self._decoded(tx, "checkpoints", where + checkpoint_id.encode(), self._record)
        if found is None:
            return None
        parent, checkpoint, metadata = found
        values: dict[str, Any] = {}
        for channel, version in checkpoint["channel_versions"].items():
            key = where + make_key(channel) + version_part(version).encode()
            value = self._decoded(tx, "blobs", key, self._blob)
            if value:  # None: no blob; (): stored empty at that version
                values[channel] = value[0]
        writes = self._decoded(tx, "writes", where + checkpoint_id.encode(), self._writes)
        checkpoint["channel_values"] = values
        return CheckpointTuple(
            config=_config(thread_id, ns, checkpoint_id),
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=_config(thread_id, ns, parent) if parent else None,
            pending_writes=writes or [],
        )

    def _decoded(self, tx: Tx, table: str, key: bytes, decode: Callable[[bytes], Any]) -> Any:
        """The value at ``key``, decoded (checksum verified): a fresh copy each call.
        A stored value never read before is decoded by the serde, and kept pickled
        (``cache_bytes_max``): unpickling is several times cheaper than the serde's
        decoding (LangChain messages are rebuilt and validated one by one). An entry
        serves only the exact bytes it was decoded from."""
        raw = tx.get(table, key)
        if raw is None:
            return None
        slot = (table, key)
        with self._cache_lock:
            cached = self._cache.get(slot)
            if cached is not None:
                self._cache.move_to_end(slot)
        if cached is not None and cached[0] == raw:
            return pickle.loads(cached[1])
        value = decode(raw)
        try:
            pickled = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # not picklable: decoded every time
            return value
        self._remember(slot, raw, pickled)
        return pickle.loads(pickled)

    def _record(self, raw: bytes) -> tuple[str, dict[str, Any], CheckpointMetadata]:
        parent, c_type, c_data, m_type, m_data = unpack(unseal(raw, "checkpoint record"))
        checkpoint: dict[str, Any] = self.serde.loads_typed((c_type.decode(), c_data))
        metadata: CheckpointMetadata = self.serde.loads_typed((m_type.decode(), m_data))
        return parent.decode(), checkpoint, metadata

    def _blob(self, raw: bytes) -> Any:
        """A channel value as a 1-tuple, or () when it was stored empty."""
        b_type, b_data = unpack(unseal(raw, "channel value"))
        if b_type == b"empty":
            return ()
        return (self.serde.loads_typed((b_type.decode(), b_data)),)

    def _writes(self, raw: bytes) -> list[tuple[str, str, Any]]:
        writes = PendingWrites.decode(raw, "pending writes")
        ordered = sorted(writes.items(), key=lambda kv: writes_sort_key(kv[1][3], *kv[0]))
        return [
            (task_id, channel, self.serde.loads_typed((type_, data)))
            for (task_id, _), (channel, type_, data, _) in ordered
        ]

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        configurable = config["configurable"] if config else {}
        thread = configurable.get("thread_id")
        ns = configurable.get("checkpoint_ns")
        only_id = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        prefix = b""
        if thread is not None:
            prefix = make_key(str(thread)) if ns is None else make_key(str(thread), ns)
        out: list[CheckpointTuple] = []
        with self.kv.read() as tx:
            groups: dict[tuple[str, str], list[str]] = {}
            for key, _ in tx.scan("checkpoints", prefix):
                (t, n), cp = split_key(key, 2)
                groups.setdefault((t, n), []).append(cp.decode())
            for (t, n), ids in groups.items():
                for checkpoint_id in sorted(ids, reverse=True):
                    if only_id and checkpoint_id != only_id:
                        continue
                    if before_id and checkpoint_id >= before_id:
                        continue
                    if limit is not None and len(out) >= limit:
                        return iter(out)
                    found = self._tuple(tx, t, n, checkpoint_id)
                    if found is None:
                        continue
                    if filter and not all(found.metadata.get(k) == v for k, v in filter.items()):
                        continue
                    out.append(found)
        return iter(out)

    # ------------------------------------------------------------ writing

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        parent = configurable.get("checkpoint_id") or ""
        checkpoint_id = checkpoint["id"]
        values = checkpoint["channel_values"]
        body = {name: value for name, value in checkpoint.items() if name != "channel_values"}
        where = make_key(thread_id, ns)
        dumps = self.serde.dumps_typed
        writes: list[tuple[str, bytes, bytes]] = []
        for channel, version in new_versions.items():
            if channel in values:
                b_type, b_data = dumps(values[channel])
                blob = sealed(b_type.encode(), b_data)
            else:
                blob = EMPTY_BLOB
            key = where + channel_key(channel) + version_part(version).encode()
            writes.append(("blobs", key, blob))
        full_metadata = get_checkpoint_metadata(config, metadata)
        c_type, c_data = dumps(body)
        m_type, m_data = dumps(full_metadata)
        stored_id = checkpoint_id.encode()
        record = sealed(parent.encode(), c_type.encode(), c_data, m_type.encode(), m_data)
        writes.append(("checkpoints", where + stored_id, record))
        run_id = full_metadata.get("run_id")
        if run_id:
            writes.append(("runs", make_key(str(run_id)) + where + stored_id, b""))
        with self.kv.write() as tx:
            for table, key, value in writes:
                tx.put(table, key, value)
            latest = tx.get("latest", where)
            if latest is None or bytes(unseal(latest, "latest")) < stored_id:  # UTF-8 sorts
                tx.put("latest", where, seal(stored_id))  # as its code points do
        return _config(thread_id, ns, checkpoint_id)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        configurable = config["configurable"]
        where = make_key(str(configurable["thread_id"]), configurable.get("checkpoint_ns", ""))
        key = where + str(configurable["checkpoint_id"]).encode()
        encoded = []
        for idx, (channel, value) in enumerate(writes):
            type_, data = self.serde.dumps_typed(value)
            encoded.append(((task_id, WRITES_IDX_MAP.get(channel, idx)), (channel, type_, data)))
        with self.kv.write() as tx:
            stored = PendingWrites.decode(tx.get("writes", key), "writes")
            changed = False
            for inner, (channel, type_, data) in encoded:
                # A regular write (idx >= 0) once stored is kept: a task re-run after
                # a crash writes the same again. Special ones (errors...) are replaced.
                if inner[1] >= 0 and inner in stored:
                    continue
                stored[inner] = (channel, type_, data, task_path)
                changed = True
            if changed:
                tx.put("writes", key, PendingWrites.encode(stored))

    def delete_thread(self, thread_id: str) -> None:
        prefix = make_key(str(thread_id))
        with self.kv.write() as tx:
            for table in ("checkpoints", "blobs", "writes", "latest"):
                for key in [k for k, _ in tx.scan(table, prefix)]:
                    tx.delete(table, key)
            for key in [k for k, _ in tx.scan("runs")]:
                _, rest = split_key(key, 1)
                if rest.startswith(prefix):
                    tx.delete("runs", key)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        with self.kv.write() as tx:
            doomed: dict[tuple[str, str], set[str]] = {}
            for run_id in run_ids:
                for key, _ in list(tx.scan("runs", make_key(str(run_id)))):
                    _, rest = split_key(key, 1)
                    (thread, ns), checkpoint_id = split_key(rest, 2)
                    doomed.setdefault((thread, ns), set()).add(checkpoint_id.decode())
                    tx.delete("runs", key)
            for (thread, ns), ids in doomed.items():
                delete_checkpoints(tx, self.serde, thread, ns, ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        source = make_key(str(source_thread_id))
        target = make_key(str(target_thread_id))
        with self.kv.write() as tx:
            for table in ("checkpoints", "blobs", "writes", "latest"):
                for key, value in list(tx.scan(table, source)):
                    tx.put(table, target + key[len(source) :], value)
            for key, value in list(tx.scan("runs")):
                run, rest = split_key(key, 1)
                if rest.startswith(source):
                    tx.put("runs", make_key(*run) + target + rest[len(source) :], value)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: each namespace of each thread keeps its newest checkpoint
        (with its pending writes); ``delete``: the threads are deleted."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"prune strategy {strategy!r}: 'keep_latest' or 'delete'")
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            with self.kv.write() as tx:
                groups: dict[str, set[str]] = {}
                for key, _ in list(tx.scan("checkpoints", make_key(str(thread_id)))):
                    (_, ns), checkpoint_id = split_key(key, 2)
                    groups.setdefault(ns, set()).add(checkpoint_id.decode())
                for ns, ids in groups.items():
                    delete_checkpoints(tx, self.serde, str(thread_id), ns, ids - {max(ids)})

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> ConcordSaver:
        """LangGraph's clone with another deserialisation allowlist gets a cache of its
        own: each serves only values decoded under its own allowlist."""
        clone = super().with_allowlist(extra_allowlist)
        assert isinstance(clone, ConcordSaver)
        if clone is not self:
            clone._cache = collections.OrderedDict()
            clone._cache_bytes = 0
            clone._cache_lock = threading.Lock()
        return clone

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions as LangGraph's own savers make them: a zero-padded counter and a
        random tail, so they sort as strings."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # ------------------------------------------------------------ async

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        found = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in found:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(functools.partial(self.prune, thread_ids, strategy=strategy))

    # ------------------------------------------------------------ cuts

    def cut(self, thread_ids: Sequence[str]) -> GraphCut:
        """Where each thread is now: for each namespace, its latest checkpoint id and
        the (task id, index) of the writes pending on it. JSON, so a global
        checkpoint can keep it in the agent's checkpoint store."""
        return cut(self.kv, thread_ids)

    def rewind(self, cut: GraphCut) -> dict[str, str]:
        """Return each thread of ``cut`` to the checkpoints it names, exactly: in each
        namespace the cut checkpoint becomes the latest again, with only the writes
        that were pending on it at the cut, so the graph resumes from it as it would
        have then (LangGraph derives task ids, and so pending writes and subgraph
        namespaces, from the checkpoint id: a copy under a new id would not resume
        the same tasks). What the thread did since is not lost: the checkpoints made
        after the cut, the writes added to the cut checkpoint since, and namespaces
        begun since (subgraphs) move to the thread ``undone_thread(thread, cut id)``,
        where ``list`` shows them. One atomic write. Returns thread -> that thread."""
        return rewind(self.kv, self.serde, cut)


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }
