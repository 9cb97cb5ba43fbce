"""Who may abort which round (coordinator_service.may_abort): the table of the
security manual, as the leader applies it before it proposes an Abort."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from coordinator.rpc.coordinator_service import may_abort
from coordinator.security.identity import Identity, Role


class State:
    def __init__(self) -> None:
        self.rounds = {
            "t1": SimpleNamespace(owner="client/app", participants=["flight", "hotel"]),
        }

    def get(self, round_id: str) -> object:
        return self.rounds.get(round_id)


def who(role: Role, name: str) -> Identity:
    return Identity("prod", role, name)


@pytest.mark.parametrize(
    ("caller", "txn_id", "reason", "allowed"),
    [
        (None, "t1", "anything", True),  # plaintext cluster: no identities
        (who(Role.OPERATOR, "alice"), "t1", "operator: stuck", True),
        (who(Role.OPERATOR, "alice"), "unknown", "", True),
        (who(Role.CLIENT, "app"), "t1", "gave up", True),  # who began it
        (who(Role.PARTICIPANT, "hotel"), "t1", "", True),  # named in it
        (who(Role.CLIENT, "other-app"), "t1", "", False),
        (who(Role.PARTICIPANT, "payment"), "t1", "", False),  # not in it
        (who(Role.CLIENT, "app"), "t1", "operator: pretending", False),
        (who(Role.CLIENT, "app"), "unknown", "", False),
        (who(Role.NODE, "c2"), "t1", "", False),
    ],
)
def test_who_may_abort(caller: Identity | None, txn_id: str, reason: str, allowed: bool) -> None:
    request = SimpleNamespace(txn_id=txn_id, reason=reason)
    why_not = may_abort(caller, State(), request)  # type: ignore[arg-type]
    assert (why_not == "") is allowed, why_not
    if not allowed:
        assert str(caller) in why_not
