"""The cluster secret between nodes: proven, never sent, never taken on trust.

Raft traffic is authenticated and encrypted with the cluster secret (pysyncobj's
password). Nodes also ask each other over gRPC whether they hold it (``CheckSecret``):
at start-up, to fail with a clear line instead of a node that never joins, and before
the leader adds a node, which must prove it holds the secret itself. The asker proves
it first (a MAC of its nonce); only then does the peer answer, with a proof bound to
the nonce and its own node id, which the asker checks. An attacker without the secret
learns nothing but "no", and only a few times a second (``RateLimiter``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time

import grpc

from concord.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.security.identity import Role
from coordinator.security.transport import Transport

__all__ = [
    "CHECK_TIMEOUT_S",
    "NONCE_BYTES",
    "RateLimiter",
    "answer",
    "peer_holds_secret",
    "secret_mac",
    "secret_proof",
]

NONCE_BYTES = 16
CHECK_TIMEOUT_S = 1.0


def secret_mac(secret: str, nonce: bytes) -> bytes:
    return hmac.new(secret.encode(), b"concord-secret-check:" + nonce, hashlib.sha256).digest()


def secret_proof(secret: str, nonce: bytes, node_id: str) -> bytes:
    message = b"concord-secret-proof:" + nonce + node_id.encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def answer(secret: str, node_id: str, nonce: bytes, mac: bytes) -> bytes | None:
    """Our proof, if the asker proved it holds our secret; None otherwise."""
    if len(nonce) != NONCE_BYTES or not hmac.compare_digest(mac, secret_mac(secret, nonce)):
        return None
    return secret_proof(secret, nonce, node_id)


async def peer_holds_secret(
    address: str, secret: str, transport: Transport, node_id: str = ""
) -> bool | None:
    """True: the node at ``address`` proved it holds ``secret`` (as ``node_id``, if
    given); False: it does not; None: no answer."""
    nonce = os.urandom(NONCE_BYTES)
    request = coordinator_pb2.CheckSecretRequest(nonce=nonce, mac=secret_mac(secret, nonce))
    async with transport.aio_channel(address, to=Role.NODE) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        try:
            reply = await stub.CheckSecret(request, timeout=CHECK_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return None
    if not reply.match:
        return False
    claimed = node_id or reply.node_id
    return hmac.compare_digest(reply.proof, secret_proof(secret, nonce, claimed))


class RateLimiter:
    """A token bucket per key: ``rate_per_s`` sustained, ``burst`` at once. Keys are
    kept for the most recent ``keys_max`` callers only (bounded memory)."""

    def __init__(self, rate_per_s: float, burst: int, keys_max: int = 10_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.keys_max = keys_max
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self.keys_max:
                self._buckets.pop(next(iter(self._buckets)))
            return allowed
