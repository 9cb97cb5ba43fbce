"""A cancelled SDK call stays cancelled: Ctrl-C in an agent or an initiator (asyncio.run
cancels the main task) must stop it, whatever it was waiting for.

Python 3.11's ``asyncio.wait_for`` loses a cancellation that arrives in the same loop
iteration as the result it waits for: it returns the result and the task runs on, as
if never cancelled. Ctrl-C on a whole process group makes exactly that likely: the
cluster's nodes die at the moment the client is cancelled, so a channel's state change
and the cancel arrive together, and the client would run on against a dead cluster.
``asyncio.timeout`` keeps the cancellation, so the SDK (and the rest of the code)
uses only that."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The SDK, and the coordinator and tools for the same reason (a node's driver loop that
# lost its cancel would keep a stopping node from ever stopping).
PACKAGES = ("participant_sdk", "coordinator", "simulations", "examples", "deploy", "scripts")


async def _cancelled_as_the_result_arrives(wait: str) -> bool:
    """Whether a task waiting with ``wait`` sees a cancel that comes with its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    async def waiter() -> int:
        if wait == "wait_for":
            return await asyncio.wait_for(future, 10)
        async with asyncio.timeout(10):
            return await future

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)  # the waiter is waiting now

    def both() -> None:
        future.set_result(1)
        task.cancel()

    loop.call_soon(both)
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


def test_asyncio_timeout_keeps_a_cancel_that_comes_with_the_result() -> None:
    assert asyncio.run(_cancelled_as_the_result_arrives("timeout"))


def test_nothing_waits_with_wait_for() -> None:
    used = [
        f"{path.relative_to(REPO)}:{number}"
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\basyncio\.wait_for\(", line)
    ]
    assert not used, f"asyncio.wait_for can lose a cancellation (module doc): {used}"


def test_why_wait_for_is_not_used_here() -> None:
    """The behaviour the module doc describes, on this interpreter (fixed in 3.12)."""
    lost = not asyncio.run(_cancelled_as_the_result_arrives("wait_for"))
    assert lost == (sys.version_info < (3, 12)), "wait_for's behaviour changed: update the doc"
