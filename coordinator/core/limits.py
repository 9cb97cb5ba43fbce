"""Named limits of the coordinator core.

Every queue, size and retry in the protocol has a bound here, with its unit last in
the name. The limits are part of the replicated configuration: every replica must
apply entries with the same limits, or their states could diverge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    participants_per_round_max: int = 16
    rounds_inflight_max: int = 10_000
    participants_registered_max: int = 10_000
    id_bytes_max: int = 128
    label_bytes_max: int = 256
    reason_bytes_max: int = 1024
    timeout_ms_min: int = 10
    timeout_ms_max: int = 600_000
    # A finished round is remembered this long after its last acknowledgement, so
    # duplicate messages and client status queries still find it.
    retention_ms: int = 60_000
    # Retries of Prepare/Decide/Timeout back off exponentially between these bounds.
    retry_backoff_initial_ms: int = 50
    retry_backoff_max_ms: int = 2_000
    # Votes or acknowledgements folded into one replicated entry.
    entry_batch_max: int = 256
    # Acknowledgements wait this long on the leader to share an entry: they only
    # finish rounds (nobody waits on them), and each entry costs every node a sync.
    ack_flush_delay_ms: int = 50
    # Sagas: steps in one saga, and the bytes of a step's payload or result.
    saga_steps_max: int = 64
    step_payload_bytes_max: int = 65_536
    # Escalated effects a participant can report (beyond: refused, the operator must
    # clear some first).
    escalations_per_participant_max: int = 100

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"limit {name} must be positive, got {value}")
        if self.timeout_ms_min > self.timeout_ms_max:
            raise ValueError("timeout_ms_min must not exceed timeout_ms_max")
        if self.retry_backoff_initial_ms > self.retry_backoff_max_ms:
            raise ValueError("retry_backoff_initial_ms must not exceed retry_backoff_max_ms")
