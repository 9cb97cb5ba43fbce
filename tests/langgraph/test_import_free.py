"""Nothing imports langgraph unless it is used: the SDK, the coordinator and the
command line run without the ``langgraph`` extra."""

from __future__ import annotations

import subprocess
import sys


def test_the_sdk_does_not_import_langgraph() -> None:
    code = (
        "import sys, participant_sdk, participant_sdk.participant, coordinator.runtime.cli\n"
        "loaded = sorted(m for m in sys.modules if m.startswith("
        "('langgraph', 'langchain', 'participant_sdk.integrations')))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
