"""Generate the Python protobuf and gRPC code for protos/concord/v1/*.proto.

    python scripts/gen_protos.py            # regenerate next to the .proto files
    python scripts/gen_protos.py --out DIR  # write into DIR instead (the freshness test)

The generated files are committed, so a checkout imports without grpcio-tools at run
time; tests/test_protos_generated.py fails when they are out of date.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_PACKAGE = Path("concord") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """The .proto sources, relative to PROTO_ROOT (protoc names them that way in the
    generated descriptors, so the output does not depend on where the repo lives)."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def generated_files(root: Path) -> list[Path]:
    """Generated files under ``root``, relative to it."""
    found = (p for suffix in GENERATED_SUFFIXES for p in (root / PROTO_PACKAGE).glob(f"*{suffix}"))
    return sorted(p.relative_to(root) for p in found)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto into ``out_dir``; return the written files, relative."""
    sources = proto_files()
    if not sources:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE}")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        ".",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(source) for source in sources),
    ]
    result = subprocess.run(command, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({result.returncode}):\n{result.stderr}")
    return generated_files(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root directory")
    args = parser.parse_args(argv)
    for path in generate(args.out.resolve()):
        print(args.out / path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
