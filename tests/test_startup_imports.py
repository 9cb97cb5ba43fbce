"""What a process imports to start: a node's start is mostly imports (docs/performance.md,
Restart), and a whole cluster restarted elects only once its nodes have imported.

tests/test_import_graph.py checks which imports are allowed; this checks which ones a
start actually runs, in a fresh interpreter: `concord serve` imports neither the
participant SDK nor the tools of other commands, and `concord --help` imports no
command's module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from coordinator.runtime.cli import _MODULE_COMMANDS

REPO_ROOT = Path(__file__).resolve().parent.parent

# Imported by other commands (or by a node only when asked: --ui), never to serve.
NOT_ON_THE_SERVE_PATH = ("participant_sdk", "simulations", "coordinator.bench", "coordinator.ui")


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(modules)


def _under(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))


def test_serve_imports_no_sdk_and_no_other_command() -> None:
    # What `concord serve` imports before it runs: the command line, the serve
    # command's arguments, then the node itself.
    modules = _modules_after(
        "from coordinator.runtime import cli\n"
        "cli.build_parser('serve')\n"
        "import coordinator.runtime.serve"
    )
    assert "coordinator.runtime.serve" in modules
    assert _under(modules, NOT_ON_THE_SERVE_PATH) == []


def test_help_imports_no_command() -> None:
    modules = _modules_after(
        "import contextlib, io\n"
        "from coordinator.runtime import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])  # argparse's help exits\n"
    )
    command_modules = tuple(sorted({module for module, _help in _MODULE_COMMANDS.values()}))
    assert "coordinator.runtime.cli" in modules
    assert _under(modules, command_modules) == []
