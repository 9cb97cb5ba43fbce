"""docs/protocol.md embeds the transition table and diagram generated from
``TRANSITIONS``; this fails when the doc no longer shows the table the code runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATOR = REPO_ROOT / "scripts" / "gen_state_diagram.py"
DOC = REPO_ROOT / "docs" / "protocol.md"
HOW_TO_FIX = "run: python scripts/gen_state_diagram.py --update docs/protocol.md"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_state_diagram", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_embedded_diagram_is_the_generated_one() -> None:
    gen = load_generator()
    embedded = gen.extract_between(DOC.read_text(), gen.DIAGRAM_MARKERS)
    assert embedded == gen.diagram_block(), HOW_TO_FIX


def test_the_embedded_table_is_the_generated_one() -> None:
    gen = load_generator()
    embedded = gen.extract_between(DOC.read_text(), gen.TABLE_MARKERS)
    assert embedded == gen.render_table(), HOW_TO_FIX


def test_the_diagram_shows_every_transition() -> None:
    from coordinator.core.state import TRANSITIONS

    diagram = load_generator().render_mermaid()
    assert diagram.startswith("stateDiagram-v2\n")
    assert len(diagram.splitlines()) == 1 + len(TRANSITIONS)


def test_the_generator_runs_as_a_script() -> None:
    printed = subprocess.run(
        [sys.executable, str(GENERATOR)], check=True, capture_output=True, text=True
    ).stdout
    assert printed == load_generator().render_mermaid()


def test_update_rewrites_only_the_generated_blocks(tmp_path: Path) -> None:
    gen = load_generator()
    doc = tmp_path / "protocol.md"
    stale = (
        "intro\n"
        f"{gen.TABLE_MARKERS[0]}\nold table\n{gen.TABLE_MARKERS[1]}\n"
        "middle\n"
        f"{gen.DIAGRAM_MARKERS[0]}\nold diagram\n{gen.DIAGRAM_MARKERS[1]}\n"
        "outro\n"
    )
    doc.write_text(stale)
    gen.update(doc)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "\nmiddle\n" in text
    assert gen.extract_between(text, gen.DIAGRAM_MARKERS) == gen.diagram_block()
    assert gen.extract_between(text, gen.TABLE_MARKERS) == gen.render_table()
