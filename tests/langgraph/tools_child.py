"""Child process for the compensable tools crash test.

``python -m tests.langgraph.tools_child DIR KILL_KEY``: books three flights through a
compensable LangChain tool (tool calls call-1..3 of thread t, in transaction "trip"),
then aborts the transaction: the undos run newest first. The undo of ``KILL_KEY``
cancels at the airline, then SIGKILLs this process before the log marks it
COMPENSATED (once: a marker file remembers). Each run first recovers what the one
before left. The airline is a file of lines ("book KEY", "cancel KEY"), each synced
before the call returns. Prints ``finished`` at the end.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from coordinator.core.types import Decision
from participant_sdk.effects import Effect, EffectLog
from participant_sdk.integrations.langgraph_tools import compensable


def main(data_dir: Path, kill_key: str) -> None:
    ledger = data_dir / "airline.txt"
    marker = data_dir / "killed"

    def record(line: str) -> None:
        with ledger.open("a") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

    def cancel_flight(effect: Effect) -> None:
        record(f"cancel {effect.key}")
        if effect.key == kill_key and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    effects = EffectLog.open(data_dir, sleep=lambda s: None)

    @compensable(effects, undo=cancel_flight)
    def book_flight(flight: str, idempotency_key: str) -> str:
        """Book a flight."""
        record(f"book {idempotency_key}")
        return f"booked {flight}"

    effects.recover()
    if not effects.effects():
        config = {"configurable": {"thread_id": "t"}}
        with effects.transaction("trip"):
            for n in (1, 2, 3):
                call = {"name": "book_flight", "args": {"flight": f"F{n}"}, "id": f"call-{n}"}
                book_flight.invoke({**call, "type": "tool_call"}, config)
    effects.on_decision("trip", Decision.ABORT)
    effects.close()
    print("finished", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
