"""examples/langgraph_trip runs: three LangGraph agents book a trip as one Concord
transaction on a real (one-node) cluster; the budget guardrail's rollback round takes
every graph back to its planning checkpoint and undoes every booking exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.langgraph_trip.agents import World
from examples.langgraph_trip.run import main

pytestmark = pytest.mark.integration

PLANNED = [
    "  flight: waiting to run tools; last message 'I will book_flight for 640 EUR.'",
    "  hotel: waiting to run tools; last message 'I will book_hotel for 720 EUR.'",
    "  payment: waiting to run tools; last message 'I will charge_card for 300 EUR.'",
]


def test_the_trip_is_rolled_back_everywhere(tmp_path: Path) -> None:
    world = World()
    lines = main(tmp_path, world)
    assert lines == [
        "planned:",
        *PLANNED,
        "global checkpoint 'planned': KEEP",
        "booked:",
        "  flight: finished; last message 'Done: book_flight.'",
        "  hotel: finished; last message 'Done: book_hotel.'",
        "  payment: finished; last message 'Done: charge_card.'",
        "bookings in the participants' stores: ['book_flight LIS-JFK 640 EUR', "
        "'book_hotel NYC 4 nights 720 EUR', 'charge_card trip deposit 300 EUR']",
        "guardrail: 1660 EUR > 1500 EUR: ROLLBACK to 'planned'",
        "rollback to 'planned': EXECUTE",
        "after the rollback:",
        *PLANNED,
        "undone: flight:call-flight-1, hotel:call-hotel-1, payment:call-pay-1",
        "bookings in the participants' stores: [None, None, None]",
        "ledger:",
        "  flight:call-flight-1: book_flight LIS-JFK 640 EUR (undone)",
        "  hotel:call-hotel-1: book_hotel NYC 4 nights 720 EUR (undone)",
        "  payment:call-pay-1: charge_card trip deposit 300 EUR (undone)",
    ]
    # The outside world, checked on its own: every booking undone, each exactly once.
    assert sorted(world.undo_requests) == sorted(world.booked) == sorted(world.undone)
