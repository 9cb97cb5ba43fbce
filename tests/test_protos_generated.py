"""The committed *_pb2*.py files must be exactly what scripts/gen_protos produces."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load_generator() -> ModuleType:
    path = REPO_ROOT / "scripts" / "gen_protos.py"
    spec = importlib.util.spec_from_file_location("gen_protos", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generator = _load_generator()
    fresh = generator.generate(tmp_path)
    committed = generator.generated_files(generator.PROTO_ROOT)
    assert fresh, "protoc generated nothing"

    hint = "generated protobuf code is out of date: run scripts/gen_protos"
    assert committed == fresh, f"{hint} (files differ: {sorted(set(committed) ^ set(fresh))})"
    stale = [
        str(path)
        for path in fresh
        if (tmp_path / path).read_bytes() != (generator.PROTO_ROOT / path).read_bytes()
    ]
    assert not stale, f"{hint} (stale: {stale})"
