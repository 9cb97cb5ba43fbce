"""What the repository's files cite is in the repository: every path of it a source,
test, script, proto or page names exists, and no file cites a design document that
was never checked in."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP_DIRS = "coordinator|participant_sdk|simulations|scripts|tests|examples|protos|docs"
PATH = re.compile(rf"(?<![\w./-])((?:{TOP_DIRS})/[\w./-]*\w)")
# Documents cited in the past that are not part of the repository (spelled in pieces,
# so that this file does not cite them itself).
ABSENT = re.compile("|".join(("DESIGN" + r"\.md", "BASE" + r"LINE\.md", "DESIGN" + " §")))


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    files = []
    for name in listed:
        path = REPO / name
        if "_pb2" in name or not path.is_file():
            continue
        try:
            path.read_text()
        except UnicodeDecodeError:
            continue  # not text
        files.append(path)
    return files


def test_every_repository_path_a_file_names_exists() -> None:
    missing = [
        f"{path.relative_to(REPO)}:{number}: {named}"
        for path in tracked_text_files()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for named in PATH.findall(line)
        if not (REPO / named).exists()
    ]
    assert not missing, "files name paths that are not in the repository:\n" + "\n".join(missing)


def test_no_file_cites_a_document_outside_the_repository() -> None:
    citing = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in tracked_text_files()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ABSENT.search(line)
    ]
    assert not citing, "cite docs/ instead:\n" + "\n".join(citing)
