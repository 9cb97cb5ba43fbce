"""The participant store's audit events and checksums are built without going through
``json.dumps`` each time (participant_sdk/storage/records.py): what they write must
stay byte for byte what the ``json`` module and the chained CRC-32 wrote before, or
data dirs written earlier would no longer verify."""

from __future__ import annotations

import hashlib
import json
import zlib

import pytest

from participant_sdk.storage.records import (
    GENESIS_HASH,
    TABLES,
    DamagedValue,
    audit_hash,
    decode_audit,
    seal,
    seal_audit_event,
    unseal,
)

TEXTS = [
    "",
    "vote",
    "TXN PREPARED yes=True",
    'quote " backslash \\ slash /',
    "control \x00 \x1f \n \t",
    "unicode é ü 中文 \u2028 emoji 🙂",
    "a" * 300,
]


def _by_json_module(
    prev_hash: str, seq: object, at_ms: object, event: object, round_id: object, detail: object
) -> tuple[str, bytes]:
    """What the store wrote before: ``audit_hash`` of the body and ``json.dumps``."""
    body = {"seq": seq, "at_ms": at_ms, "event": event, "round_id": round_id, "detail": detail}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(prev_hash.encode() + canonical).hexdigest()
    record = {**body, "prev_hash": prev_hash, "hash": digest}
    return digest, json.dumps(record, sort_keys=True).encode()


@pytest.mark.parametrize("text", TEXTS)
def test_an_audit_event_is_what_the_json_module_writes(text: str) -> None:
    for prev_hash in (GENESIS_HASH, hashlib.sha256(text.encode()).hexdigest()):
        for seq, at_ms in ((1, 0), (2**40, 1_733_400_000_000), (7, -5)):
            built = seal_audit_event(prev_hash, seq, at_ms, "decision_applied", text, text)
            assert built == _by_json_module(prev_hash, seq, at_ms, "decision_applied", text, text)
            digest, stored = built
            event = decode_audit(stored)
            read_back = (event.seq, event.at_ms, event.round_id, event.detail)
            assert read_back == (seq, at_ms, text, text)
            body = {"seq": seq, "at_ms": at_ms, "event": event.event, "round_id": text}
            assert audit_hash(prev_hash, {**body, "detail": text}) == digest == event.hash


def test_fields_that_are_not_plain_ints_and_strs_go_through_the_json_module() -> None:
    # A bool is an int that JSON spells true; an f-string would spell it True.
    assert seal_audit_event(GENESIS_HASH, True, 5, "note", "r", "d") == _by_json_module(
        GENESIS_HASH, True, 5, "note", "r", "d"
    )
    assert b'"seq": true' in seal_audit_event(GENESIS_HASH, True, 5, "note", "r", "d")[1]


@pytest.mark.parametrize("table", [*TABLES, "not-a-table"])
def test_a_seal_is_the_chained_crc32_of_table_key_and_value(table: str) -> None:
    key, value = b"acct/0", b"100"
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(table.encode())))
    assert seal(table, key, value) == crc.to_bytes(4, "big") + value
    assert unseal(table, key, seal(table, key, value), "test") == value
    with pytest.raises(DamagedValue):
        unseal(table, key, seal(table, key, value)[:-1] + b"4", "test")
