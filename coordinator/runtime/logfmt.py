"""Logs for operators: text for a terminal, or one JSON object per line
(`--log-format json`) for a log pipeline.

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

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
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
