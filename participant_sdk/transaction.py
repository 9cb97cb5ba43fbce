"""A transaction being built inside ``ConcordClient.transaction``: what it carries to the
cluster with its commit (the begin, the participants enlisted) and its action calls
(``call``: transaction actions, participant_sdk/actions.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import Any, Protocol

from concord.v1 import coordinator_pb2
from coordinator.core.types import Decision
from participant_sdk.channels import CALL, ENLIST, CoordinatorChannels
from participant_sdk.errors import ActionFailed


class Client(Protocol):
    """What a transaction needs of its client (``ConcordClient``)."""

    _channels: CoordinatorChannels

    async def _send_begin(self, txn_id: str, request: coordinator_pb2.BeginTxnRequest) -> None: ...

    def _trace_parent(self, txn_id: str) -> str: ...

    async def applied(self, txn_id: str, *, timeout_s: float = ...) -> Decision: ...


__all__ = ["Transaction"]


class Transaction:
    """A transaction being built inside ``ConcordClient.transaction``.

    It reaches the cluster with its commit: the BeginTxn travels inside the Commit
    call, so committing costs one round trip and one Raft round, and nothing is
    written while the body runs. ``enlist`` before that only adds to the begin the
    commit carries. ``ready()`` registers the transaction now (the body may want it
    visible in ``concord txn list`` early, or its timeout to start); an abort does it
    too, so that participants that did work hear ABORT at once."""

    def __init__(
        self,
        client: Client,
        txn_id: str,
        participants: Sequence[str],
        begun: asyncio.Task[None] | None = None,
        begin_request: coordinator_pb2.BeginTxnRequest | None = None,
    ):
        self._client = client
        self.id = txn_id
        self.participants: list[str] = list(participants)
        self.decision: Decision | None = None
        self._begun = begun  # the BeginTxn call, once sent
        self._begin_request = begin_request  # None once the cluster has the begin
        self._calls_done: dict[str, int] = {}  # participant -> its calls that answered
        self._call_ids = itertools.count()

    def _unsent(self) -> bool:
        return self._begun is None and self._begin_request is not None

    def _request(self) -> coordinator_pb2.BeginTxnRequest:
        request = self._begin_request
        assert request is not None
        del request.participants[:]
        request.participants.extend(self.participants)
        return request

    def _send_begin(self) -> None:
        """Send the BeginTxn now, in the background (once)."""
        if self._unsent():
            self._begun = asyncio.get_running_loop().create_task(
                self._client._send_begin(self.id, self._request())
            )

    async def ready(self) -> None:
        """Until the cluster has applied BeginTxn (sent now if it was waiting for the
        commit); raises what the begin raised."""
        self._send_begin()
        if self._begun is not None:
            await self._begun

    def begin_in_flight(self) -> coordinator_pb2.BeginTxnRequest | None:
        """The BeginTxn request the commit carries: one not sent yet, or one still
        travelling (None once applied). Raises what a finished begin raised."""
        if self._unsent():
            return self._request()
        begun = self._begun
        if begun is None:
            return None
        if begun.done():
            begun.result()  # its error, if any
            return None
        # Whatever it ends with, the commit's own copy of the begin decides.
        begun.add_done_callback(lambda task: task.cancelled() or task.exception())
        return self._begin_request

    async def enlist(self, participant_id: str) -> None:
        if self._unsent():  # the begin the commit carries will name it
            self.participants.append(participant_id)
            return
        await self.ready()
        await self._client._channels.call(
            ENLIST,
            coordinator_pb2.EnlistRequest(txn_id=self.id, participant_id=participant_id),
            round_id=self.id,
            trace_parent=self._client._trace_parent(self.id),
        )
        self.participants.append(participant_id)

    async def call(
        self, participant_id: str, action: str, payload: Any = None, *, timeout_s: float = 30.0
    ) -> Any:
        """Run ``action`` at ``participant_id``, on its branch of this transaction, and
        return the handler's result (payload and result are JSON values). Registers the
        transaction and enlists the participant first when needed. A call is
        idempotent (its id travels with it), so an unanswered attempt is retried.

        Raises ``ActionFailed`` when the handler raised or the action is not declared
        there: that branch then votes NO, so the transaction can only abort (leaving
        the ``transaction`` block with the exception aborts it at once)."""
        if participant_id not in self.participants:
            await self.enlist(participant_id)
        await self.ready()
        request = coordinator_pb2.CallRequest(
            txn_id=self.id,
            participant_id=participant_id,
            call_id=f"{participant_id}/{next(self._call_ids)}",
            action=action,
            payload=json.dumps(payload).encode(),
            calls_before=self._calls_done.get(participant_id, 0),
        )
        reply = await self._client._channels.call(
            CALL, request, round_id=self.id, write=False, timeout_s=timeout_s
        )
        if reply.error:
            raise ActionFailed(self.id, participant_id, action, reply.error)
        self._calls_done[participant_id] = self._calls_done.get(participant_id, 0) + 1
        return json.loads(reply.result) if reply.result else None

    async def applied(self, timeout_s: float = 30.0) -> Decision:
        """After the decision: until every participant has durably applied it (see
        ``ConcordClient.applied``)."""
        return await self._client.applied(self.id, timeout_s=timeout_s)
