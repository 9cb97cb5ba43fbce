"""Transaction actions: what an initiator asks an agent to do inside a transaction.

An agent declares its actions by name (``TxnActions``), as it declares saga actions.
The initiator calls one through the cluster (``await txn.call("inventory", "reserve",
{"sku": "widget"})``): the leader relays the call to the participant, whose handler
runs on the transaction's branch here (``handler(branch, payload)``, reading and
writing with the branch's isolation) and returns a result. Payloads and results are
JSON values.

- A call runs once per ``(txn, call_id)``: a retried call waits for the first run and
  returns its result.
- Calls of one transaction run one at a time, in arrival order.
- A handler that raises dooms the branch: it is aborted here at once (the transaction
  can only abort; its Prepare gets NO with the error as reason) and the initiator's
  call raises ``ActionFailed`` with the same text.
- A call that is not the transaction's first here (``calls_before`` > 0) needs the
  branch the earlier calls built: if the participant restarted in between, the branch
  is gone and the call fails rather than run on an empty one.

Nothing here is durable, and need not be: a branch's work is not durable before its
Prepare either, so a restart loses both together, and the transaction then aborts.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator.core.limits import ACTION_NAME_BYTES_MAX, CALL_PAYLOAD_BYTES_MAX
from participant_sdk.branch import Branch
from participant_sdk.errors import BranchClosed, MustAsk, StoreLimitError

__all__ = ["ActionHandler", "ActionRunner", "TxnActions"]

log = logging.getLogger(__name__)

# handler(branch, payload) -> a JSON value
ActionHandler = Callable[[Branch, Any], Any]

CALL_MEMO_TXNS_MAX = 10_000  # transactions whose call results are remembered
# The call id of the action a one-shot transaction's Prepare carries (clients number
# their calls "<participant>/<n>", so it cannot collide).
PREPARE_CALL_ID = "prepare"


class TxnActions:
    """The transaction actions one participant offers, by name."""

    def __init__(self) -> None:
        self._handlers: dict[str, ActionHandler] = {}

    def action(self, name: str) -> Callable[[ActionHandler], ActionHandler]:
        """Declare an action (a decorator): ``@actions.action("reserve")``."""

        def register(handler: ActionHandler) -> ActionHandler:
            self.add(name, handler)
            return handler

        return register

    def add(self, name: str, handler: ActionHandler) -> None:
        if not name or len(name.encode()) > ACTION_NAME_BYTES_MAX:
            raise ValueError(f"an action needs a name of 1..{ACTION_NAME_BYTES_MAX} bytes")
        if name in self._handlers:
            raise ValueError(f"action {name!r} is declared twice")
        self._handlers[name] = handler

    def get(self, name: str) -> ActionHandler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)


class BranchHost(Protocol):
    """What a call needs from the participant."""

    def begin(self, txn_id: str) -> Branch: ...

    def branch(self, txn_id: str) -> Branch: ...

    def abort_alone(self, txn_id: str, reason: str = ...) -> None: ...


@dataclass
class _TxnCalls:
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: dict[str, tuple[bytes, str]] = field(default_factory=dict)


class ActionRunner:
    """Runs the calls relayed to one participant (from the server's worker threads)."""

    def __init__(self, actions: TxnActions | None, host: BranchHost) -> None:
        self.actions = actions or TxnActions()
        self._host = host
        self._lock = threading.Lock()
        self._txns: collections.OrderedDict[str, _TxnCalls] = collections.OrderedDict()

    def run(
        self, txn_id: str, call_id: str, action: str, payload: bytes, calls_before: int
    ) -> tuple[bytes, str]:
        """(JSON result, "") or (b"", why it failed). Blocking: runs the handler."""
        with self._lock:
            calls = self._txns.get(txn_id)
            if calls is None:
                calls = self._txns[txn_id] = _TxnCalls()
                while len(self._txns) > CALL_MEMO_TXNS_MAX:
                    self._txns.popitem(last=False)
            self._txns.move_to_end(txn_id)
        with calls.lock:
            done = calls.results.get(call_id)
            if done is None:
                done = calls.results[call_id] = self._run(txn_id, action, payload, calls_before)
            return done

    def _run(
        self, txn_id: str, action: str, payload: bytes, calls_before: int
    ) -> tuple[bytes, str]:
        handler = self.actions.get(action)
        if handler is None:
            offered = ", ".join(self.actions.names()) or "none"
            return self._doom(txn_id, f"no action {action!r} here (offered: {offered})")
        if len(payload) > CALL_PAYLOAD_BYTES_MAX:
            return self._doom(txn_id, f"payload of {len(payload)} bytes > {CALL_PAYLOAD_BYTES_MAX}")
        try:
            value = json.loads(payload) if payload else None
        except ValueError as error:
            return self._doom(txn_id, f"payload is not JSON: {error}")
        try:
            # A later call continues the branch the earlier ones built, or fails.
            branch = self._host.branch(txn_id) if calls_before else self._host.begin(txn_id)
        except (BranchClosed, MustAsk, StoreLimitError) as error:
            return b"", str(error)  # it says why: voted, aborted, lost in a restart
        try:
            result = handler(branch, value)
            encoded = json.dumps(result).encode()
        except Exception as error:
            log.info("action %r of txn %r raised %r: its branch votes NO", action, txn_id, error)
            return self._doom(txn_id, f"{action} raised {type(error).__name__}: {error}")
        if len(encoded) > CALL_PAYLOAD_BYTES_MAX:
            return self._doom(
                txn_id, f"{action}'s result of {len(encoded)} bytes > {CALL_PAYLOAD_BYTES_MAX}"
            )
        return encoded, ""

    def _doom(self, txn_id: str, reason: str) -> tuple[bytes, str]:
        """The branch can only abort now: abort it here, so its Prepare votes NO."""
        try:
            self._host.abort_alone(txn_id, reason)
        except (BranchClosed, MustAsk) as error:
            log.debug("txn %r: abort after a failed call: %s", txn_id, error)
        return b"", reason
