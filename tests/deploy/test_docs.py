"""docs/deploy.md and docs/operations.md name only deploy/ files that exist (the page
checker of tests/docs does not know deploy/), and docs/deploy.md uses every file of
deploy/ it describes."""

from __future__ import annotations

import re

from tests.deploy.conftest import DEPLOY, REPO

PAGES = [REPO / "docs" / "deploy.md", REPO / "docs" / "operations.md"]
MADE_BY_THE_READER = {"deploy/compose/.env"}  # the secret; deploy/compose/.gitignore


def test_the_pages_name_deploy_files_that_exist() -> None:
    missing = [
        f"{page.name}: {path}"
        for page in PAGES
        for path in re.findall(r"(?<![\w./-])(deploy/[\w./-]*\w)", page.read_text())
        if not (REPO / path).exists() and path not in MADE_BY_THE_READER
    ]
    assert not missing, missing


def test_docs_deploy_names_each_deployment() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    for path in ("Dockerfile", "agent.py", "compose", "kubernetes", "systemd"):
        assert f"deploy/{path}" in text, path
        assert (DEPLOY / path).exists(), path


def test_what_the_reader_makes_is_ignored_by_git() -> None:
    for path in MADE_BY_THE_READER:
        ignored = (REPO / path).parent / ".gitignore"
        assert (REPO / path).name in ignored.read_text().split(), path
