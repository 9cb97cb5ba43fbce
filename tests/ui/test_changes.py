"""The dashboard's change feed (/changes): a page's request waits until this node
applies a change to a round (the feed WatchTxns serves), then its live parts refresh at
once. One real node in this process (tests/rpc/serving.py)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from coordinator.ui import server
from coordinator.ui.server import Dashboard
from tests.replication.helpers import begin
from tests.rpc.serving import serving


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_waiting_page_hears_of_a_round_change_and_a_bad_index_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "CHANGES_WAIT_S", 0.5)

    async def body() -> None:
        async with serving(tmp_path) as served:
            dashboard = Dashboard("127.0.0.1:0", served.operations, served.node)
            port = dashboard.start()
            base = f"http://127.0.0.1:{port}/changes"
            try:
                status, now = await asyncio.to_thread(_get, f"{base}?after=-1")
                assert status == 200  # answered at once: the index differs from -1
                # Nothing changes: answered unchanged once the wait is over.
                assert await asyncio.to_thread(_get, f"{base}?after={now}") == (200, now)
                waiting = asyncio.ensure_future(asyncio.to_thread(_get, f"{base}?after={now}"))
                await asyncio.sleep(0)  # (the request may start before or after the write)
                await served.node.write(begin("t-seen"))
                status, changed = await asyncio.wait_for(waiting, 30)
                assert status == 200 and int(changed) > int(now), (now, changed)
                status, text = await asyncio.to_thread(_get, f"{base}?after=soon")
                assert status == 400 and "integer" in text
            finally:
                dashboard.close()

    asyncio.run(body())
