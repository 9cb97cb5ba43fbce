"""The client's API without asyncio: a private event loop runs in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from coordinator.core.types import Decision
from coordinator.security.transport import Transport
from participant_sdk.client import ConcordClient, Transaction
from participant_sdk.results import RoundResult, SagaResult, SagaStep, TxnStatus

__all__ = ["SyncConcordClient", "SyncTransaction"]

T = TypeVar("T")


class _LoopThread:
    """A private event loop in a daemon thread, for callers without asyncio."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncTransaction:
    def __init__(self, client: SyncConcordClient, txn: Transaction):
        self._client = client
        self._txn = txn

    @property
    def id(self) -> str:
        return self._txn.id

    @property
    def decision(self) -> Decision | None:
        return self._txn.decision

    def enlist(self, participant_id: str) -> None:
        self._client._run(self._txn.enlist(participant_id))

    def call(
        self, participant_id: str, action: str, payload: Any = None, *, timeout_s: float = 30.0
    ) -> Any:
        """``Transaction.call``: run a transaction action at a participant."""
        return self._client._run(
            self._txn.call(participant_id, action, payload, timeout_s=timeout_s)
        )

    def applied(self, timeout_s: float = 30.0) -> Decision:
        return self._client.applied(self.id, timeout_s=timeout_s)


class SyncConcordClient:
    """The same API without asyncio: a private event loop runs in a thread."""

    def __init__(
        self,
        coordinators: Sequence[str],
        *,
        tls: Transport | None = None,
        attempts_max: int = 6,
        call_timeout_s: float = 10.0,
    ) -> None:
        self._loop = _LoopThread("concord-client")

        async def make() -> ConcordClient:
            return ConcordClient(
                coordinators, tls=tls, attempts_max=attempts_max, call_timeout_s=call_timeout_s
            )

        self._client = self._loop.run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    def __enter__(self) -> SyncConcordClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._run(self._client.close())
            self._loop.close()

    @contextlib.contextmanager
    def transaction(
        self,
        participants: Sequence[str] = (),
        *,
        timeout_s: float = 30.0,
        session_id: str = "",
        txn_id: str | None = None,
        wait_applied: bool = False,
    ) -> Iterator[SyncTransaction]:
        txn = self._client._unsent_transaction(participants, timeout_s, session_id, txn_id)
        try:
            yield SyncTransaction(self, txn)
            begin = txn.begin_in_flight()
        except BaseException as error:
            with contextlib.suppress(BaseException):
                self._run(txn.ready())  # registered first: the abort must find it
            self._run(self._client._abort_after(txn.id, error))
            raise
        txn.decision = self._run(self._client.commit(txn.id, timeout_s=timeout_s, begin=begin))
        if wait_applied:
            self.applied(txn.id, timeout_s=timeout_s)

    def run(
        self,
        actions: Mapping[str, tuple[str, Any]],
        *,
        timeout_s: float = 30.0,
        session_id: str = "",
        txn_id: str | None = None,
        wait_applied: bool = False,
    ) -> dict[str, Any]:
        """``ConcordClient.run``: a one-shot transaction."""
        return self._run(
            self._client.run(
                actions,
                timeout_s=timeout_s,
                session_id=session_id,
                txn_id=txn_id,
                wait_applied=wait_applied,
            )
        )

    def begin(
        self,
        participants: Sequence[str] = (),
        *,
        timeout_s: float = 30.0,
        session_id: str = "",
        txn_id: str | None = None,
        wait: bool = True,
    ) -> SyncTransaction:
        begun = self._client.begin(
            participants, timeout_s=timeout_s, session_id=session_id, txn_id=txn_id, wait=wait
        )
        return SyncTransaction(self, self._run(begun))

    def commit(self, txn_id: str, *, timeout_s: float = 30.0) -> Decision:
        return self._run(self._client.commit(txn_id, timeout_s=timeout_s))

    def abort(self, txn_id: str, reason: str = "") -> Decision | None:
        return self._run(self._client.abort(txn_id, reason))

    def get(self, txn_id: str) -> TxnStatus:
        return self._run(self._client.get(txn_id))

    def outcome(self, txn_id: str) -> Decision | None:
        return self._run(self._client.outcome(txn_id))

    def applied(self, txn_id: str, *, timeout_s: float = 30.0) -> Decision:
        return self._run(self._client.applied(txn_id, timeout_s=timeout_s))

    def request_rollback(
        self,
        *,
        session_id: str,
        participants: Sequence[str],
        checkpoint_id: str,
        reason: str = "",
        timeout_s: float = 30.0,
        round_id: str | None = None,
        wait_for_decision: bool = True,
    ) -> RoundResult:
        return self._run(
            self._client.request_rollback(
                session_id=session_id,
                participants=participants,
                checkpoint_id=checkpoint_id,
                reason=reason,
                timeout_s=timeout_s,
                round_id=round_id,
                wait_for_decision=wait_for_decision,
            )
        )

    def global_checkpoint(
        self,
        *,
        session_id: str,
        participants: Sequence[str],
        checkpoint_id: str | None = None,
        label: str = "",
        timeout_s: float = 30.0,
        round_id: str | None = None,
        wait_for_decision: bool = True,
    ) -> RoundResult:
        return self._run(
            self._client.global_checkpoint(
                session_id=session_id,
                participants=participants,
                checkpoint_id=checkpoint_id,
                label=label,
                timeout_s=timeout_s,
                round_id=round_id,
                wait_for_decision=wait_for_decision,
            )
        )

    def run_saga(
        self,
        steps: Sequence[SagaStep],
        *,
        saga_id: str | None = None,
        session_id: str = "",
        step_timeout_s: float = 30.0,
        wait_s: float = 300.0,
    ) -> SagaResult:
        saga = self._client.run_saga(
            steps,
            saga_id=saga_id,
            session_id=session_id,
            step_timeout_s=step_timeout_s,
            wait_s=wait_s,
        )
        return self._run(saga)

    def saga(self, saga_id: str) -> SagaResult:
        return self._run(self._client.saga(saga_id))
