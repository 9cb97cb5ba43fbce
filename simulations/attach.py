"""Participants that only connect out (``ParticipantOptions(connect="outbound")``).

Such a participant is reached only over the stream it opened to a leader
(CoordinatorService.Attach, participant_sdk/attach.py), so in the simulation a
coordinator's message to it arrives only if the sender is the node it is attached
to, in the term it attached in, and its replies travel back the same way; anything
else is lost, as on a stream that is gone. Its own calls (in-doubt questions) are
unary calls to any node and are not affected.

The stream ends, and the participant attaches again after ``attach_delay_ms`` (its
backoff and a handshake), when:

- the node crashes, or stops believing it leads, or leads in a new term (the real
  leader ends every stream when its leadership ends or begins: ``links.reset()``);
- the participant crashes (its stream dies with it);
- the two cannot reach each other for ``attach_silence_ms`` (no heartbeat arrives:
  the real participant gives up a silent stream after ``ATTACH_SILENCE_MS``).

It attaches to a node it can reach that believes it leads, the one of the highest
term if several do (a follower's leader hint names the newest leader it knows); with
none, it tries again at its next tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from coordinator.core.messages import AckReply, Refused, StepReply, VoteReply


class World(Protocol):
    """What this module uses of simulations.world.World (not imported: the world
    imports this module)."""

    cluster: Any
    network: Any
    participants: Any
    loop: Any
    config: Any
    history: Any


_STREAM_REPLIES = (VoteReply, AckReply, Refused, StepReply)


@dataclass(slots=True)
class _Stream:
    node_id: str
    term: int
    silent_since_ms: int | None = None


class Attachments:
    def __init__(self, world: World, outbound: list[str]) -> None:
        self.world = world
        self.outbound = frozenset(outbound)
        self._streams: dict[str, _Stream] = {}
        self._attaching: set[str] = set()
        self.attaches = 0

    def attached_to(self, participant_id: str) -> str | None:
        stream = self._streams.get(participant_id)
        return None if stream is None else stream.node_id

    def carries(self, src: str, dst: str, payload: Any) -> bool:
        """Whether a message between a node and an outbound participant has a stream to
        travel on (every other message is none of this module's business)."""
        if dst in self.outbound:
            participant_id, node_id = dst, src
        elif src in self.outbound and isinstance(payload, _STREAM_REPLIES):
            participant_id, node_id = src, dst
        else:
            return True
        if node_id not in self.world.cluster.nodes:
            return True  # a client's call to the agent (Read, Stage): not the stream
        stream = self._streams.get(participant_id)
        return stream is not None and stream.node_id == node_id and self._holds(stream)

    def _holds(self, stream: _Stream) -> bool:
        node = self.world.cluster.nodes[stream.node_id]
        return node.alive and node.believes_leader and node.term == stream.term

    def tick(self) -> None:
        """Every participant tick: end the streams that are gone, attach the others."""
        world = self.world
        now = world.loop.now_ms
        network = world.network
        for participant_id in sorted(self.outbound):
            participant = world.participants[participant_id]
            stream = self._streams.get(participant_id)
            if not participant.alive:
                self._streams.pop(participant_id, None)
                continue
            if stream is not None:
                if not self._holds(stream):
                    del self._streams[participant_id]
                elif network.connected(stream.node_id, participant_id) and network.connected(
                    participant_id, stream.node_id
                ):
                    stream.silent_since_ms = None
                elif stream.silent_since_ms is None:
                    stream.silent_since_ms = now
                elif now - stream.silent_since_ms >= world.config.attach_silence_ms:
                    del self._streams[participant_id]
            if participant_id not in self._streams and participant_id not in self._attaching:
                self._attaching.add(participant_id)
                low, high = world.config.attach_delay_ms
                delay_ms = world.loop.rng.randrange(low, high + 1)
                world.loop.after(delay_ms, lambda p=participant_id: self._attach(p))

    def _attach(self, participant_id: str) -> None:
        self._attaching.discard(participant_id)
        world = self.world
        if not world.participants[participant_id].alive or participant_id in self._streams:
            return
        network = world.network
        leaders = [
            node
            for node_id, node in world.cluster.nodes.items()
            if node.alive
            and node.believes_leader
            and network.connected(participant_id, node_id)
            and network.connected(node_id, participant_id)
        ]
        if leaders:
            node = max(leaders, key=lambda n: n.term)
            self._streams[participant_id] = _Stream(node.node_id, node.term)
            self.attaches += 1
            if world.history.trace is not None:
                world.history.note(participant_id, f"attached to {node.node_id} (term {node.term})")
