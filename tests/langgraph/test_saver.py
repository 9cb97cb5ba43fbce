"""ConcordSaver beyond LangGraph's conformance suite: durable across a reopen, damage
reported and never returned, every read a fresh copy (its decoded-value cache shares
nothing with a caller), bad input a one-line error."""

from __future__ import annotations

import operator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph

from participant_sdk.integrations.langgraph import ConcordSaver
from participant_sdk.storage.checkpoint_format import CheckpointCorrupt, CheckpointError

THREAD = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}


class Count(TypedDict):
    seen: Annotated[list[int], operator.add]


def _put(saver: ConcordSaver, n: int = 1) -> Any:
    config: Any = THREAD
    versions: dict[str, str] = {}
    for step in range(n):
        values = {"messages": [HumanMessage("hi"), AIMessage(f"step {step}")], "step": step}
        new = {}
        for channel in values:
            versions[channel] = new[channel] = saver.get_next_version(versions.get(channel), None)
        checkpoint = {
            "v": 1,
            "id": f"1ef4f797-8335-6428-8001-{step:012d}",
            "ts": "2026-01-01T00:00:00+00:00",
            "channel_values": values,
            "channel_versions": dict(versions),
            "versions_seen": {},
            "pending_sends": [],
            "updated_channels": None,
        }
        config = saver.put(config, checkpoint, {"source": "loop", "step": step}, new)  # type: ignore[arg-type]
    return config


def test_what_a_put_acknowledged_survives_a_reopen(tmp_path: Path) -> None:
    saver = ConcordSaver.open(tmp_path)
    stored = _put(saver, 3)
    saver.put_writes(stored, [("messages", AIMessage("pending"))], "task-1")
    saver.close()
    again = ConcordSaver.open(tmp_path)
    try:
        found = again.get_tuple(THREAD)
        assert found is not None
        assert found.checkpoint["channel_values"]["messages"][1].content == "step 2"
        assert found.checkpoint["channel_values"]["step"] == 2
        assert [(t, c, v.content) for t, c, v in found.pending_writes or []] == [
            ("task-1", "messages", "pending")
        ]
        assert len(list(again.list(THREAD))) == 3
        assert again.verify() == []
    finally:
        again.close()


def test_every_read_is_a_fresh_copy() -> None:
    saver = ConcordSaver.memory()
    _put(saver)
    for _ in range(4):  # decoded, decoded (then cached whole), then from that cache
        found = saver.get_tuple(THREAD)
        assert found is not None
        assert found.checkpoint["channel_values"]["messages"][0].id is None
        assert len(found.checkpoint["channel_values"]["messages"]) == 2
        assert found.metadata["step"] == 0
        found.checkpoint["channel_values"]["messages"][0].id = "changed by the caller"
        found.checkpoint["channel_values"]["messages"].append(AIMessage("appended"))
        found.metadata["step"] = 99


@pytest.mark.parametrize("reads", [1, 3], ids=["read-once", "cached-whole"])
@pytest.mark.parametrize("cache_bytes_max", [1, 32 << 20], ids=["uncached", "cached"])
def test_a_damaged_value_is_reported_never_returned(
    tmp_path: Path, cache_bytes_max: int, reads: int
) -> None:
    saver = ConcordSaver.open(tmp_path, cache_bytes_max=cache_bytes_max)
    try:
        _put(saver)
        for _ in range(reads):
            assert saver.get_tuple(THREAD) is not None  # cached, when on
        with saver.kv.write() as tx:
            key, raw = next(iter(tx.scan("blobs")))
            tx.put("blobs", key, raw[:-1] + bytes([raw[-1] ^ 1]))  # one bit flipped
        with pytest.raises(CheckpointCorrupt, match="failed its crc32 checksum"):
            saver.get_tuple(THREAD)
        assert len(saver.verify()) == 1
    finally:
        saver.close()


def test_a_tuple_read_again_follows_every_write_and_the_close(tmp_path: Path) -> None:
    saver = ConcordSaver.open(tmp_path)
    first = _put(saver)
    by_id = {"configurable": dict(first["configurable"])}

    def read(config: Any = THREAD) -> tuple[str, list[str]]:
        for _ in range(3):  # the last from the cache of whole tuples, when nothing changed
            found = saver.get_tuple(config)
        assert found is not None
        return found.config["configurable"]["checkpoint_id"], [
            v.content for _, _, v in found.pending_writes or []
        ]

    assert read() == read(by_id) == (first["configurable"]["checkpoint_id"], [])
    saver.put_writes(first, [("messages", AIMessage("pending"))], "task-1")
    assert read() == read(by_id) == (first["configurable"]["checkpoint_id"], ["pending"])
    _put(saver, 2)
    assert read()[0] != first["configurable"]["checkpoint_id"]
    saver.delete_thread("t")
    assert saver.get_tuple(THREAD) is None and saver.get_tuple(by_id) is None
    _put(saver)
    read()
    saver.close()
    with pytest.raises(CheckpointError, match="is closed"):
        saver.get_tuple(THREAD)


def test_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a path"):
        ConcordSaver()
    saver = ConcordSaver.memory()
    with pytest.raises(ValueError, match="'keep_latest' or 'delete'"):
        saver.prune(["t"], strategy="keep_oldest")
    first = ConcordSaver.open(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="is in use by another process"):
            ConcordSaver.open(tmp_path)
    finally:
        first.close()


def test_an_allowlisted_clone_has_a_cache_of_its_own() -> None:
    strict = JsonPlusSerializer(allowed_msgpack_modules=[("collections", "OrderedDict")])
    saver = ConcordSaver.memory(serde=strict)
    _put(saver)
    assert saver.get_tuple(THREAD) is not None  # decoded and cached by the original
    clone = saver.with_allowlist([("langchain_core.messages.ai", "AIMessage")])
    assert clone is not saver
    assert clone._cache is not saver._cache and not clone._cache
    assert clone.get_tuple(THREAD) is not None


def test_graphs_on_many_threads_share_one_saver(tmp_path: Path) -> None:
    """Several Python threads run graphs on one saver at once (each its own graph
    thread): every run's checkpoints are there, whole, and the store checks clean."""
    builder = StateGraph(Count)
    builder.add_node("one", lambda state: {"seen": [1]})
    builder.add_node("two", lambda state: {"seen": [2]})
    builder.add_edge(START, "one")
    builder.add_edge("one", "two")
    builder.add_edge("two", END)
    saver = ConcordSaver.open(tmp_path)
    graph = builder.compile(checkpointer=saver)

    def run(worker: int) -> list[int]:
        config = {"configurable": {"thread_id": f"worker-{worker}"}}
        for _ in range(5):
            graph.invoke({"seen": []}, config, durability="sync")
        return list(graph.get_state(config).values["seen"])

    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, range(4)))
        assert results == [[1, 2] * 5] * 4
        assert saver.verify() == []
    finally:
        saver.close()
