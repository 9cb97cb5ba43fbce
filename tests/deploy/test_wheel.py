"""The wheel builds, installs into a fresh venv, and its `concord` command runs there,
away from the checkout (issue 16, item 7).

Kept fast and offline: the wheel is built from a copy of the sources with the project
venv's setuptools (no build isolation, no download), installed with ``--no-deps`` into
a venv made ``--without-pip``, and that venv finds the dependencies through a ``.pth``
line naming the project venv's site-packages (a plain path entry: the project's own
editable install there is not activated, so every Concord module comes from the
wheel). That the wheel's declared dependencies are what it needs is checked too: every
``Requires-Dist`` without an extra is installed at a version it allows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, REPO

pytestmark = pytest.mark.integration
PACKAGED = ("coordinator", "participant_sdk", "simulations", "protos")


def _run(argv: list[str], cwd: Path) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGED:
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    pip = [sys.executable, "-m", "pip"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        root,
    )
    (wheel,) = dist.glob("concord_txn-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    target = ["--python", str(venv / "bin" / "python")]
    _run([*pip, *target, "install", "-q", "--no-deps", "--no-index", str(wheel)], root)
    purelib = _run([str(venv / "bin" / "python"), "-c", _PURELIB], root).strip()
    Path(purelib, "_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def test_the_wheel_holds_the_packages_and_not_the_tests(fresh_venv: Path) -> None:
    (wheel,) = (fresh_venv.parent / "dist").glob("concord_txn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "coordinator/runtime/cli.py",
        "coordinator/runtime/health_command.py",
        "concord/v1/coordinator_pb2.py",
        "participant_sdk/py.typed",
    ):
        assert needed in names, f"the wheel lacks {needed}"
    assert not [n for n in names if n.startswith(("tests/", "deploy/", "examples/"))]


def test_concord_runs_from_the_fresh_venv(fresh_venv: Path, tmp_path: Path) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    concord = str(fresh_venv / "bin" / "concord")
    assert _run([concord, "--version"], tmp_path).strip() == f"concord {version}"
    assert "--metrics" in _run([concord, "serve", "--help"], tmp_path)
    where = _run([str(fresh_venv / "bin" / "python"), "-c", _WHERE], tmp_path).split()
    assert all(path.startswith(str(fresh_venv)) for path in where), where
    # the example agent of deploy/ runs on the installed SDK
    assert "--advertise" in _run(
        [str(fresh_venv / "bin" / "python"), str(DEPLOY / "agent.py"), "serve", "--help"],
        tmp_path,
    )


_WHERE = (
    "import coordinator, participant_sdk, concord.v1.coordinator_pb2 as p;"
    "print(coordinator.__file__, participant_sdk.__file__, p.__file__)"
)


def test_the_wheels_dependencies_are_declared_and_met(fresh_venv: Path, tmp_path: Path) -> None:
    problems = _run([str(fresh_venv / "bin" / "python"), "-c", _REQUIREMENTS], tmp_path)
    assert problems.strip() == "", problems
    assert os.path.exists(fresh_venv / "bin" / "concord")


_REQUIREMENTS = """
from importlib import metadata
from packaging.requirements import Requirement
for text in metadata.requires("concord-txn") or []:
    requirement = Requirement(text)
    if requirement.marker is not None and "extra" in str(requirement.marker):
        continue
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        print(f"{requirement}: not installed")
        continue
    if not requirement.specifier.contains(version, prereleases=True):
        print(f"{requirement}: {version} installed")
"""
