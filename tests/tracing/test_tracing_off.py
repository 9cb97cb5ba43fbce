"""No cost when off: with tracing off no OpenTelemetry module is ever imported, and
without the packages installed everything still runs (tracing asked for by the
environment is skipped with a warning; asked for by a `concord serve` flag, it is a
one-line mistake)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A process that uses every traced path: a participant serving, a client, and the
# coordinator's runtime modules imported.
USE_EVERYTHING = """
import asyncio, sys
from coordinator import tracing
from coordinator.rpc import coordinator_service, participant_links
from coordinator.runtime import commands, node, serve
from participant_sdk import ConcordClient, Participant, SyncConcordClient

async def main():
    p = Participant("p1", None, [])
    await p.start()
    async with ConcordClient(["127.0.0.1:1"]):
        pass
    await p.stop()

asyncio.run(main())
SyncConcordClient(["127.0.0.1:1"]).close()
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
print("active:", tracing.active() is not None, "loaded:", loaded)
"""

# Makes `import opentelemetry...` fail, as on a machine without the tracing extra.
WITHOUT_OPENTELEMETRY = """
import sys
class _NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _NoOpenTelemetry())
"""


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CONCORD_TRACE"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_with_tracing_off_no_opentelemetry_module_is_imported() -> None:
    result = _run(USE_EVERYTHING)
    assert result.returncode == 0, result.stderr
    assert "active: False loaded: []" in result.stdout, result.stdout + result.stderr


def test_the_environment_may_turn_it_on() -> None:
    result = _run(USE_EVERYTHING, OTEL_TRACES_EXPORTER="console")
    assert result.returncode == 0, result.stderr
    assert "active: True loaded: ['opentelemetry'" in result.stdout, result.stdout


def test_without_the_packages_everything_runs_and_tracing_is_skipped(tmp_path: Path) -> None:
    result = _run(WITHOUT_OPENTELEMETRY + USE_EVERYTHING, CONCORD_TRACE_FILE=str(tmp_path / "f"))
    assert result.returncode == 0, result.stderr
    assert "active: False loaded: []" in result.stdout, result.stdout
    assert "concord-txn[tracing]" in result.stderr  # the warning says what to install
    assert not (tmp_path / "f").exists()


def test_serve_asked_to_trace_without_the_packages_is_a_one_line_mistake(
    tmp_path: Path,
) -> None:
    serve = (
        "from coordinator.runtime.cli import main\n"
        "sys.exit(main(['serve', '--node-id=c1', '--raft=127.0.0.1:1', '--grpc=127.0.0.1:2',"
        f" '--data-dir={tmp_path / 'c1'}', '--trace-file={tmp_path / 'spans'}', '--insecure']))\n"
    )
    result = _run(WITHOUT_OPENTELEMETRY + serve, CONCORD_SECRET="0123456789abcdef0123")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'concord-txn[tracing]'" in lines[0], result.stderr
