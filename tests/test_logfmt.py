"""`--log-format json`: one JSON object a line, with structured fields; a mapping
among a call's arguments is written into ``msg`` as ``key=value`` pairs and kept as
fields, never as a Python dict repr."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.runtime.logfmt import JsonFormatter


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("concord.test.logfmt")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)


def _records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_dict_argument_becomes_fields_and_pairs(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = lines
    logger.info("audit (local): %s %s", "leader", {"leader": "c2", "term": 3, "why": "a b"})
    [record] = _records(out)
    assert record["msg"] == 'audit (local): leader leader=c2 term=3 why="a b"'
    assert (record["leader"], record["term"], record["why"]) == ("c2", 3, "a b")
    assert record["level"] == "INFO" and record["logger"] == "concord.test.logfmt"


def test_extra_fields_and_clashing_names(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = lines
    logger.warning("leader is now %s", "c1", extra={"term": 7, "path": Path("/x")})
    logger.info("%s", {"msg": "clash", "level": 1})
    first, second = _records(out)
    assert first["msg"] == "leader is now c1"
    assert first["term"] == 7 and first["path"] == "/x"
    assert second["msg"] == "msg=clash level=1"
    assert second["field_msg"] == "clash" and second["field_level"] == 1
    assert second["level"] == "INFO"


def test_the_real_audit_note_logs_structured_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line the issue saw: a node's local audit note carried a dict repr."""
    from coordinator.audit.log import AuditLog

    caplog.set_level(logging.INFO, logger="coordinator.audit.log")
    with AuditLog(tmp_path / "audit", node_id="c1") as audit:
        audit.note_local("leader_change", {"leader": "c1", "term": 4}, round_id="")
    [record] = [r for r in caplog.records if "audit (local)" in r.getMessage()]
    line = json.loads(JsonFormatter().format(record))
    assert "{" not in line["msg"] and "'" not in line["msg"], line["msg"]
    assert line["leader"] == "c1" and line["term"] == 4
    assert "{'leader'" in record.getMessage()  # the record itself is left as it came
