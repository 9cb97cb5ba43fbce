"""LangGraph's own conformance suite for checkpoint savers
(``langgraph-checkpoint-conformance``) against ``ConcordSaver``: every base capability
and every extended one (delete_for_runs, copy_thread, prune), on the durable LMDB
store (with its decoded-value cache and without) and on the in-memory one."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.conformance.initializer import RegisteredCheckpointer

from participant_sdk.integrations.langgraph import ConcordSaver

EVERY_CAPABILITY = {c.value for c in ALL_CAPABILITIES}


@checkpointer_test(name="ConcordSaver-lmdb")
async def lmdb_saver() -> AsyncIterator[ConcordSaver]:
    with tempfile.TemporaryDirectory() as data_dir:
        saver = ConcordSaver.open(data_dir)
        try:
            yield saver
        finally:
            saver.close()


@checkpointer_test(name="ConcordSaver-lmdb-uncached")
async def uncached_saver() -> AsyncIterator[ConcordSaver]:
    """Every read decoded by the serde (no entry fits the cache)."""
    with tempfile.TemporaryDirectory() as data_dir:
        saver = ConcordSaver.open(data_dir, cache_bytes_max=1)
        try:
            yield saver
        finally:
            saver.close()


@checkpointer_test(name="ConcordSaver-memory")
async def memory_saver() -> AsyncIterator[ConcordSaver]:
    yield ConcordSaver.memory()


def _run(registered: RegisteredCheckpointer) -> None:
    report = asyncio.run(validate(registered))
    failures = {
        name: result.failures for name, result in report.results.items() if not result.passed
    }
    # Every capability ran (none skipped as "not detected") and passed.
    assert set(report.results) == EVERY_CAPABILITY
    assert failures == {}, failures
    assert all(r.detected and r.tests_passed > 0 for r in report.results.values())
    assert report.passed_all_base()


@pytest.mark.parametrize(
    "registered", [lmdb_saver, uncached_saver, memory_saver], ids=lambda r: r.name
)
def test_every_capability_passes(registered: RegisteredCheckpointer) -> None:
    _run(registered)
