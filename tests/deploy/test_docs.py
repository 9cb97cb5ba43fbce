"""docs/deploy.md and docs/operations.md name only deploy/ files that exist (the page
checker of tests/docs does not know deploy/), and docs/deploy.md uses every file of
deploy/ it describes."""

from __future__ import annotations

import re

from tests.deploy.conftest import DEPLOY, REPO

PAGES = [REPO / "docs" / "deploy.md", REPO / "docs" / "operations.md"]


def test_the_pages_name_deploy_files_that_exist() -> None:
    missing = [
        f"{page.name}: {path}"
        for page in PAGES
        for path in re.findall(r"(?<![\w./-])(deploy/[\w./-]*\w)", page.read_text())
        if not (REPO / path).exists()
    ]
    assert not missing, missing


def test_docs_deploy_names_each_deployment() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    for path in ("Dockerfile", "agent.py", "compose", "kubernetes", "systemd"):
        assert f"deploy/{path}" in text, path
        assert (DEPLOY / path).exists(), path
