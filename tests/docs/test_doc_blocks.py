"""Every fenced code block in README.md and docs/*.md runs as written, or is checked for
what it is.

A reader follows a page from top to bottom in one session, so the blocks of one page run
that way:

- ``python``: the page's python blocks, in order, are one program, run by the project's
  venv in a fresh temporary directory. Each ``print(x)  # y`` promises y: the program's
  output must be exactly the promised lines, in order.
- ``sh`` / ``bash``: the page's shell blocks, in order, are one bash script
  (``set -euo pipefail``), run in a temporary directory that holds ``scripts/``,
  ``examples/``, ``deploy/`` and ``.venv/`` of this checkout (as links), so ``scripts/concord ...``
  works as it does from a clone and what the page's commands write lands in the
  temporary directory (``scripts/example`` keeps its own scratch directory in the
  checkout, as it does for a reader). A page that needs a cluster starts and stops one
  in its own blocks.
- Blocks that are not programs say so by their language and are checked for what they
  are: ``toml`` parses (and one that configures a node is accepted by `concord serve
  --config`); ``json`` loads; ``text`` (sample output, synopses, diagrams):
  each line that is a ``concord`` command names a real command, and every ``--flag`` it
  shows is one that command takes (so does every ``concord`` command in inline code);
  ``mermaid`` is the generated state diagram (tests/core/test_protocol_doc.py);
  ``proto``: every message it names is in protos/.

Any other language, a block left unlabelled, or an indented code block fails: a snippet
must say whether it runs. Every repository path a page names (``coordinator/...``,
``docs/...``, ``tests/...``) must exist.

Each program runs in a process group of its own; whatever it leaves behind (a cluster
that a failed block never stopped) is killed by that group's id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_TIMEOUT_S = 180
LINKED_INTO_SCRATCH = ("scripts", "examples", "deploy", ".venv")

RUN = {"python", "sh", "bash"}
CHECKED = {"text", "toml", "json", "mermaid", "proto"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+)(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end][indent:] if lines[end][:indent].isspace() else lines[end])
            end += 1
        assert end < len(lines), f"{page.name}:{index + 1}: a code fence is never closed"
        language = opening["info"].strip().split(" ")[0]
        found.append(Block(page, index + 1, language, "\n".join(body) + "\n"))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def indented_code(page: Path) -> list[int]:
    """Line numbers of indented code blocks: a paragraph indented 4+ spaces after a blank
    line that does not continue a list item."""
    found = []
    in_fence = False
    in_list = False
    previous = ""
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            stripped = line.lstrip()
            if line and not line[0].isspace():
                in_list = bool(re.match(r"([-*+]|\d+\.) ", line))
            if (
                line.startswith("    ")
                and stripped
                and not previous.strip()
                and not in_list
                and not re.match(r"([-*+]|\d+\.) ", stripped)
            ):
                found.append(number)
        previous = line
    return found


# ---------------------------------------------------------------------- the checks


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_says_what_it_is(page: Path) -> None:
    unlabelled = [
        f"{b.where}: {b.language or 'no language'}"
        for b in blocks(page)
        if b.language not in RUN | CHECKED
    ]
    assert not unlabelled, f"label each block with one of {sorted(RUN | CHECKED)}: {unlabelled}"
    indented = [f"{page.relative_to(REPO)}:{n}" for n in indented_code(page)]
    assert not indented, f"indented code blocks (fence them and label them): {indented}"


PATH = re.compile(
    r"(?<![\w./-])((?:coordinator|participant_sdk|simulations|scripts|tests|examples|protos"
    r"|docs)/[\w./-]*\w)"
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_a_page_names_exists(page: Path) -> None:
    missing = [
        f"{page.relative_to(REPO)}:{number}: {path}"
        for number, line in enumerate(page.read_text().splitlines(), 1)
        for path in PATH.findall(line)
        if not (REPO / path).exists()
    ]
    assert not missing, "pages name files that are not in the repository:\n" + "\n".join(missing)


def test_toml_blocks_parse() -> None:
    for block in all_blocks():
        if block.language == "toml":
            try:
                tomllib.loads(block.code)
            except tomllib.TOMLDecodeError as error:
                pytest.fail(f"{block.where}: {error}")


def test_node_config_blocks_are_accepted_by_the_config_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A toml block that configures a node (it names a ``node_id``) is what `concord
    serve --config` accepts, given the certificate and secret files it names."""
    from coordinator.runtime import config
    from coordinator.security.certs import init_dir
    from coordinator.security.identity import Identity, Role

    for number, block in enumerate(b for b in all_blocks() if b.language == "toml"):
        settings = tomllib.loads(block.code)
        if "node_id" not in settings:
            continue
        scratch = tmp_path / str(number)
        scratch.mkdir()
        monkeypatch.chdir(scratch)
        if "tls_dir" in settings:
            init_dir(
                Path(settings["tls_dir"]),
                "docs",
                [Identity("docs", Role.NODE, settings["node_id"])],
            )
        if "secret_file" in settings:
            Path(settings["secret_file"]).write_text(secrets.token_hex(32))
            Path(settings["secret_file"]).chmod(0o600)
        (scratch / "node.toml").write_text(block.code)
        args = argparse.Namespace(config=scratch / "node.toml")
        try:
            loaded = config.load(args, environ={})
        except config.ConfigError as error:
            pytest.fail(f"{block.where}: concord serve --config refuses it: {error}")
        assert loaded.node_id == settings["node_id"], block.where


def test_json_blocks_load() -> None:
    for block in all_blocks():
        if block.language == "json":
            try:
                json.loads(block.code)
            except json.JSONDecodeError as error:
                pytest.fail(f"{block.where}: {error}")


def test_proto_blocks_name_real_messages() -> None:
    protos = "".join(p.read_text() for p in (REPO / "protos").rglob("*.proto"))
    for block in all_blocks():
        if block.language == "proto":
            for name in re.findall(r"^\s*(?:message|enum|service)\s+(\w+)", block.code, re.M):
                assert re.search(rf"\b(message|enum|service)\s+{name}\b", protos), (
                    f"{block.where}: {name} is not in protos/"
                )


COMMAND = re.compile(r"^(?:\$ )?(?:scripts/|\.venv/bin/)?concord((?: [a-z][a-z-]*)+)(.*)$")


def _help(words: list[str]) -> str:
    """``concord WORDS --help``, or "" when WORDS is not a command; fails when the
    command crashes instead of answering (its last line says why)."""
    done = subprocess.run(
        [sys.executable, "-m", "coordinator.runtime.cli", *words, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    if "Traceback" in done.stderr:
        last = done.stderr.strip().splitlines()[-1]
        pytest.fail(f"concord {' '.join(words)} --help crashed: {last}")
    return done.stdout if done.returncode == 0 else ""


def shown_commands(page: Path) -> list[tuple[str, str]]:
    """(where, command line) of every ``concord`` command a page shows without running
    it: lines of its text blocks (continuation lines joined) and inline code spans."""
    shown = []
    for block in blocks(page):
        if block.language == "text":
            for line in block.code.replace("\\\n", " ").splitlines():
                shown.append((block.where, line.strip()))
    prose = re.sub(r"^ {0,3}```.*?^ {0,3}```", "", page.read_text(), flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        shown.append((f"{page.relative_to(REPO)} (inline)", span.strip()))
    return [(where, line) for where, line in shown if COMMAND.match(line)]


def test_commands_shown_exist_with_their_flags() -> None:
    """A synopsis cannot run as written (a server in the foreground, a cluster of your
    own); it can still be checked against the command's own help."""
    helps: dict[tuple[str, ...], str] = {}
    problems = []
    for page in PAGES:
        for where, line in shown_commands(page):
            command = COMMAND.match(line)
            assert command is not None
            words = command[1].split()
            # the longest prefix of words that is a command (the rest are arguments)
            while words and tuple(words) not in helps:
                helps[tuple(words)] = _help(words)
                if helps[tuple(words)]:
                    break
                words.pop()
            while words and not helps.get(tuple(words)):
                words.pop()
            if not words:
                problems.append(f"{where}: not a concord command: {line}")
                continue
            usage = helps[tuple(words)]
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line):
                if not re.search(rf"(?<![\w-]){re.escape(flag)}\b", usage):
                    problems.append(f"{where}: concord {' '.join(words)} has no {flag}: {line}")
    assert not problems, "\n".join(problems)


def _run(command: list[str], cwd: Path, what: str) -> str:
    """Run ``command`` in a process group of its own and return what it printed on
    stdout; kill the group afterwards, so nothing it started outlives it; fail with
    its stdout and stderr if it failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env["PYTHONPATH"] = str(REPO)  # `examples` is importable, as from a clone
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        output, errors = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, errors = process.communicate()
        pytest.fail(f"{what} did not finish within {RUN_TIMEOUT_S}s:\n{output}\n{errors}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what a failed block left running
    assert process.returncode == 0, f"{what} failed ({process.returncode}):\n{output}\n{errors}"
    return output


def _pages_with(languages: set[str]) -> list[Path]:
    return [p for p in PAGES if any(b.language in languages for b in blocks(p))]


@pytest.mark.parametrize("page", _pages_with({"python"}), ids=lambda p: p.name)
def test_python_blocks_run_and_print_what_they_promise(page: Path, tmp_path: Path) -> None:
    program_blocks = [b for b in blocks(page) if b.language == "python"]
    lines: list[str] = []
    for block in program_blocks:  # padded so that a traceback names the page's lines
        lines += [""] * (block.line - len(lines))
        lines += block.code.splitlines()
    program = "\n".join(lines) + "\n"
    script = tmp_path / f"{page.name}.py"
    script.write_text(program)
    scratch = tmp_path / "cwd"
    scratch.mkdir()
    printed = _run([sys.executable, str(script)], scratch, f"the python blocks of {page.name}")
    promised = [
        line.split("#", 1)[1].strip()
        for block in program_blocks
        for line in block.code.splitlines()
        if line.lstrip().startswith("print(") and "#" in line
    ]
    assert printed.splitlines() == promised, (
        f"{page.name}: each print(x)  # y must print y, and nothing else may print"
    )


@pytest.mark.parametrize("page", _pages_with({"sh", "bash"}), ids=lambda p: p.name)
def test_shell_blocks_run(page: Path, tmp_path: Path) -> None:
    for name in LINKED_INTO_SCRATCH:
        (tmp_path / name).symlink_to(REPO / name)
    script = "set -euo pipefail\n" + "".join(
        f"echo '--- {b.where}'\n{b.code}" for b in blocks(page) if b.language in ("sh", "bash")
    )
    _run(["bash", "-c", script], tmp_path, f"the shell blocks of {page.name}")
