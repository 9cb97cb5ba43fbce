"""Logs for operators: text for a terminal, or one JSON object per line
(`--log-format json`) for a log pipeline.

A JSON line has ``ts``, ``level``, ``logger`` and ``msg``, then the record's structured
fields: whatever a call passes as ``extra=``, and the items of any mapping among its
arguments. A mapping is written into ``msg`` as ``key=value`` pairs, never as a Python
dict repr, so ``log.info("audit (local): %s %s", event, {"term": 3})`` gives
``{"msg": "audit (local): leader term=3", "term": 3, ...}``. A field whose name the line
already uses is kept under ``field_<name>``.

Levels: DEBUG is for developers; INFO says what the node does (serving, registered,
metrics address); WARNING is worth a look but needs no action (a leader change, a
participant unreachable, an audit gap); ERROR needs attention (a protocol violation,
a failed callback); CRITICAL means the node stopped or its data is suspect (a broken
invariant, a failed durable or audit write).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _scalar(value: Any) -> Any:
    """A value as JSON holds it: numbers, strings, booleans, None, lists and objects
    stay; anything else is its ``str``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _scalar(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scalar(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _pairs(mapping: Mapping[Any, Any]) -> str:
    """``key=value`` pairs for a message; a value with a space or quote is JSON-quoted."""
    words = []
    for key, value in mapping.items():
        text = value if isinstance(value, str) else json.dumps(_scalar(value))
        if isinstance(value, str) and (not value or any(c in value for c in ' "=')):
            text = json.dumps(value, ensure_ascii=False)
        words.append(f"{key}={text}")
    return " ".join(words)


class _Pairs:
    """A mapping argument of a log call: formats as ``key=value`` pairs."""

    def __init__(self, mapping: Mapping[Any, Any]) -> None:
        self.mapping = mapping

    def __str__(self) -> str:
        return _pairs(self.mapping)

    __repr__ = __str__


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {}
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, Mapping) for a in args):
            for arg in args:
                if isinstance(arg, Mapping):
                    fields.update({str(k): v for k, v in arg.items()})
            record.args = tuple(_Pairs(a) if isinstance(a, Mapping) else a for a in args)
        elif isinstance(args, Mapping):
            # One mapping argument: logging keeps it as the args themselves, for
            # log.info("%(term)s", {"term": 3}); with log.info("%s", {...}) it is the %s.
            fields.update({str(k): v for k, v in args.items()})
            if "%(" not in str(record.msg):
                record.args = (_Pairs(args),)
        try:
            message = record.getMessage()
        finally:
            record.args = args  # other handlers see the record as it came
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
        }
        fields.update({k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES})
        for key, value in fields.items():
            line[f"field_{key}" if key in line or key == "exc" else key] = _scalar(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
