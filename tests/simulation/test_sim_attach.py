"""The simulator's participants that only connect out (simulations/attach.py): the
default workload has one (``SimConfig.outbound_participants``), reached only over the
stream it attached to a leader, and it follows the leader through crashes, partitions
and step-downs; a cluster whose participants all connect out keeps every checker."""

from __future__ import annotations

from simulations.checkers import check
from simulations.world import Plant, SimConfig, World


def _run(seed: int, config: SimConfig) -> World:
    world = World(seed, config, Plant(), None)
    world.run()
    return world


def test_the_default_workload_has_an_outbound_participant_that_follows_the_leader() -> None:
    config = SimConfig()
    assert config.outbound_participants == 1
    attaches = 0
    for seed in range(5):
        world = _run(seed, config)
        assert world.attachments.outbound == {"p2"}
        assert check(world) == []
        attaches += world.attachments.attaches
    # Once at the start, then again after each leadership it outlived.
    assert attaches > 5 * 2, attaches


def test_a_message_reaches_an_outbound_participant_only_from_the_node_it_attached_to() -> None:
    world = _run(0, SimConfig(workload_ms=3_000, liveness_bound_ms=3_000, faults=False))
    attachments = world.attachments
    node = attachments.attached_to("p2")
    assert node is not None
    others = [n for n in world.cluster.nodes if n != node]
    assert attachments.carries(node, "p2", object())
    assert not any(attachments.carries(other, "p2", object()) for other in others)
    assert attachments.carries("p0", others[0], object())  # not an outbound participant


def test_every_participant_outbound_keeps_every_checker() -> None:
    config = SimConfig(outbound_participants=3)
    for seed in range(8):
        world = _run(seed, config)
        assert check(world) == [], f"seed {seed}"
        assert world.attachments.outbound == {"p0", "p1", "p2"}
