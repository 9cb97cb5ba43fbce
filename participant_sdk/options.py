"""Where a participant serves, and its limits and timings: ``ParticipantOptions``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from participant_sdk.store import StoreLimits

__all__ = ["CONNECT_MODES", "ParticipantOptions"]

CONNECT_MODES = ("inbound", "outbound")


@dataclass(frozen=True, kw_only=True, slots=True)
class ParticipantOptions:
    """``connect``: how the leader reaches the participant. ``"inbound"`` (the
    default): the participant serves ``ParticipantService`` and the leader dials it;
    ``listen`` is where it serves, ``advertise`` the endpoint it registers with the
    cluster (default: the bound host:port, or 127.0.0.1:port when listening on all
    interfaces). ``"outbound"``: it serves nothing, opens no port, and attaches to the
    leader itself (participant_sdk/attach.py), for agents no coordinator can dial
    (behind NAT, in serverless jobs, on laptops); ``listen`` and ``advertise`` are not
    used."""

    connect: str = "inbound"
    listen: str = "127.0.0.1:0"
    advertise: str | None = None
    limits: StoreLimits = field(default_factory=StoreLimits)
    # Finished records are kept this long: a repeated message is answered from them.
    record_retention_ms: int = 300_000
    tick_interval_s: float = 1.0  # forgetting old records, asking about rounds in doubt
    # A round that voted YES while running is asked about after this long without a
    # decision (a leader answers a round it drives from memory: asking is cheap).
    in_doubt_ask_after_s: float = 0.5
    query_backoff_initial_s: float = 0.05
    query_backoff_max_s: float = 2.0
    call_timeout_s: float = 5.0  # each call to the cluster
    lock_lease_ms: int = 30_000  # Branch.lock holds keys at most this long
    # Branches begun here that never got a Prepare are given up after this long.
    active_branch_ms_max: int = 3_600_000
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.connect not in CONNECT_MODES:
            raise ValueError(f"connect must be 'inbound' or 'outbound', got {self.connect!r}")
        if self.connect == "outbound" and self.advertise is not None:
            raise ValueError("advertise has no use with connect='outbound': nothing is served")
        for name in ("lock_lease_ms", "call_timeout_s", "tick_interval_s"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
