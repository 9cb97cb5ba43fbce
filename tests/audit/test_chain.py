"""The hash chain's sealing: the stored JSON and the record agree."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from coordinator.audit.chain import GENESIS_HASH, record_hash, seal, seal_encoded

_SCALARS = st.none() | st.booleans() | st.integers() | st.text()
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.text(), _VALUES, max_size=6), st.sampled_from([GENESIS_HASH, "ab" * 32]))
def test_the_stored_json_is_the_sealed_record(body: dict[str, Any], prev_hash: str) -> None:
    record, encoded = seal_encoded(prev_hash, body)
    assert record == seal(prev_hash, body)
    assert json.loads(encoded) == record
    assert record["hash"] == record_hash(prev_hash, json.loads(encoded))


def test_a_body_naming_the_chain_fields_is_sealed_as_seal_does() -> None:
    body = {"event": "x", "hash": "forged", "prev_hash": "forged"}
    record, encoded = seal_encoded(GENESIS_HASH, body)
    assert record == seal(GENESIS_HASH, body) and json.loads(encoded) == record
    assert record["hash"] != "forged"
