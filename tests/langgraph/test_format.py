"""The saver's value layout (participant_sdk/integrations/langgraph_format.py): the
one-pass ``sealed`` writes exactly what ``seal(pack(...))`` wrote, so stores written
before it read the same, and the key parts of channel versions are unchanged."""

from __future__ import annotations

import pytest

from participant_sdk.integrations.langgraph_format import (
    EMPTY_BLOB,
    channel_key,
    make_key,
    pack,
    sealed,
    unpack,
    version_part,
)
from participant_sdk.storage.checkpoint_format import (
    CheckpointError,
    seal,
    unseal,
)


@pytest.mark.parametrize(
    "fields",
    [(), (b"",), (b"msgpack", b"\x00" * 3), (b"p", b"json", b"x" * 70_000, b"", b"\xff")],
)
def test_sealed_is_seal_of_pack(fields: tuple[bytes, ...]) -> None:
    assert sealed(*fields) == seal(pack(*fields))
    assert unpack(unseal(sealed(*fields), "value")) == list(fields)


def test_an_empty_channel_value_is_stored_as_before() -> None:
    assert seal(pack(b"empty", b"")) == EMPTY_BLOB


def test_version_key_parts() -> None:
    assert version_part("00000000000000000000000000000002.0.5") == (
        "00000000000000000000000000000002.0.5"
    )
    assert version_part(3) == "i3"
    assert version_part(2.5) == "f2.5"
    assert channel_key("messages") == make_key("messages")
    with pytest.raises(CheckpointError, match="not an int, float or str"):
        version_part(True)
