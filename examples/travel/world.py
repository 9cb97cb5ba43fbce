"""The outside world the travel agents act on: a bank, an airline and a hotel chain.

Each is an append-only JSONL ledger under the example's ``world/`` directory, one
fsynced line per operation, written by one agent process (the payment agent talks to
the bank, the flight agent to the airline, the hotel agent to the hotel chain). Every
operation carries an idempotency key, as real payment and booking APIs do:

- ``do(key, ...)`` (a charge, a booking) happens at most once per key: asked again
  with the same key, it changes nothing;
- ``undo(key)`` (a refund, a cancellation) is written at most once per key, and only
  for a key that was done: undoing something that never happened changes nothing.

That is the contract the SDK's compensations rest on (at least once + idempotent by
key = exactly once in effect; docs/rollback.md, participant_sdk/saga.py). The example
and its test read the ledgers back to show, and check, what really happened.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["AIRLINE_SEATS", "Ledger", "SoldOut", "airline", "bank", "hotels", "read", "seat_left"]

# Seats the airline still sells on the flights of the multi-leg (saga) trips.
AIRLINE_SEATS = {"FL200": 5, "FL201": 1}


class SoldOut(Exception):
    """Nothing was booked: there is no seat left."""


def read(path: Path) -> list[dict[str, Any]]:
    """The ledger's entries, oldest first (an absent ledger is empty)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Ledger:
    """One outside system: ``do_op`` and ``undo_op`` entries keyed by idempotency key."""

    def __init__(self, path: Path, do_op: str, undo_op: str) -> None:
        self.path = path
        self.do_op = do_op
        self.undo_op = undo_op
        self._lock = threading.Lock()

    def do(
        self, key: str, check: Callable[[list[dict[str, Any]]], None] | None = None, **details: Any
    ) -> bool:
        """Write ``do_op`` for ``key`` once; ``check(entries)`` may refuse by raising
        (before anything is written). True when written now, False when it already was."""
        with self._lock:
            entries = read(self.path)
            if self._has(entries, self.do_op, key):
                return False
            if check is not None:
                check(entries)
            self._append({"op": self.do_op, "key": key, **details})
            return True

    def undo(self, key: str) -> bool:
        """Write ``undo_op`` for ``key`` once, if it was done. True when written now."""
        with self._lock:
            entries = read(self.path)
            done = next((e for e in entries if e["op"] == self.do_op and e["key"] == key), None)
            if done is None or self._has(entries, self.undo_op, key):
                return False
            details = {k: v for k, v in done.items() if k not in ("op", "key", "t")}
            self._append({"op": self.undo_op, "key": key, **details})
            return True

    def done(self, key: str) -> bool:
        return self._has(read(self.path), self.do_op, key)

    def undone(self, key: str) -> bool:
        return self._has(read(self.path), self.undo_op, key)

    @staticmethod
    def _has(entries: list[dict[str, Any]], op: str, key: str) -> bool:
        return any(e["op"] == op and e["key"] == key for e in entries)

    def _append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as ledger:
            ledger.write(json.dumps({**entry, "t": time.time()}) + "\n")
            ledger.flush()
            os.fsync(ledger.fileno())


def bank(world: Path) -> Ledger:
    return Ledger(world / "bank.jsonl", "charge", "refund")


def airline(world: Path) -> Ledger:
    return Ledger(world / "airline.jsonl", "book", "cancel")


def hotels(world: Path) -> Ledger:
    return Ledger(world / "hotels.jsonl", "book", "cancel")


def seat_left(flight: str) -> Callable[[list[dict[str, Any]]], None]:
    """A ``check`` for ``airline(...).do``: refuse when ``flight`` has no seat left."""

    def check(entries: list[dict[str, Any]]) -> None:
        ops = [(e["op"], e["key"]) for e in entries if e.get("flight") == flight]
        held = sum(1 for op, key in ops if op == "book" and ("cancel", key) not in ops)
        if held >= AIRLINE_SEATS.get(flight, 0):
            raise SoldOut(f"{flight} is sold out")

    return check
