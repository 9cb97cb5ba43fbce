"""A participant's own calls to the cluster: registering its endpoint, asking the
outcome of a round in doubt, and reporting its escalated effects; and, for one that
only connects out, its stream to the leader (attach.py), which follows the leader
over the same addresses as the calls.

Registration is retried with backoff until accepted; an in-doubt question that gets
no answer is asked again later by the participant's tick; the escalation report is
the whole set each time (idempotent), sent only when it changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from concord.v1 import coordinator_pb2
from coordinator.core.types import Decision
from coordinator.protomap import decision_from_proto
from coordinator.security.transport import Transport
from participant_sdk.attach import Attacher
from participant_sdk.capabilities import Escalation
from participant_sdk.channels import (
    QUERY_OUTCOME,
    REGISTER_PARTICIPANT,
    REPORT_ESCALATIONS,
    CoordinatorChannels,
)
from participant_sdk.errors import ConcordError
from participant_sdk.server import BatchHandler

__all__ = ["ClusterLink"]

log = logging.getLogger(__name__)


class ClusterLink:
    def __init__(
        self,
        participant_id: str,
        coordinators: Sequence[str],
        transport: Transport,
        *,
        call_timeout_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
    ) -> None:
        self.participant_id = participant_id
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.registered = asyncio.Event()
        self._channels = CoordinatorChannels(
            coordinators,
            transport=transport,
            attempts_max=len(coordinators),
            call_timeout_s=call_timeout_s,
        )
        self._escalations_reported: tuple[Escalation, ...] = ()

    def attacher(self, participant: BatchHandler) -> Attacher:
        """The participant's Attach stream, opened where this link's calls go."""
        return Attacher(
            participant,
            self._channels,
            backoff_initial_s=self.backoff_initial_s,
            backoff_max_s=self.backoff_max_s,
        )

    async def register_forever(self, endpoint: str) -> None:
        request = coordinator_pb2.RegisterParticipantRequest(
            participant_id=self.participant_id, endpoint=endpoint
        )
        backoff_s = self.backoff_initial_s
        while True:
            try:
                await self._channels.call(REGISTER_PARTICIPANT, request, write=False)
            except ConcordError as error:
                log.warning("participant %s: registration failed: %s", self.participant_id, error)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.backoff_max_s)
                continue
            log.info("participant %s registered as %s", self.participant_id, endpoint)
            self.registered.set()
            return

    async def outcome(self, round_id: str) -> Decision | None:
        """The cluster's decision of a round this participant voted YES on; None when
        undecided or not answered (asked again later)."""
        request = coordinator_pb2.QueryOutcomeRequest(
            round_id=round_id, participant_id=self.participant_id
        )
        try:
            reply = await self._channels.call(QUERY_OUTCOME, request, write=False)
        except ConcordError as error:
            log.info("participant %s: in-doubt %s: %s", self.participant_id, round_id, error)
            return None
        return decision_from_proto(reply.decision)

    async def report_escalations(self, current: tuple[Escalation, ...]) -> None:
        """Tell the cluster the set of escalated effects when it changed (an empty set
        clears it once an operator resolved them)."""
        if not self.registered.is_set() or current == self._escalations_reported:
            return
        request = coordinator_pb2.ReportEscalationsRequest(
            participant_id=self.participant_id,
            escalations=[
                coordinator_pb2.Escalation(round_id=txn, key=key, detail=why)
                for txn, key, why in current
            ],
        )
        try:
            await self._channels.call(REPORT_ESCALATIONS, request, write=False)
        except ConcordError as error:  # the next tick tries again
            log.info("participant %s: escalations not reported: %s", self.participant_id, error)
            return
        self._escalations_reported = current

    async def close(self) -> None:
        await self._channels.close()
