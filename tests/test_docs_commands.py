"""The documentation cannot rot: every block marked runnable in README.md and docs/ runs.

A fenced block is runnable when the line just before its opening fence is `<!-- runnable -->`
(an HTML comment: GitHub and MkDocs render nothing for it). A runnable `bash` block holds only
`cleandift-deploy` commands (comments and `\\` continuations allowed); a runnable `python` block
is executed as it stands. Each file's runnable blocks run in order, in a fresh temporary folder,
in this process (the CLI's `main`, so torch is imported once), and every command must exit 0.
Commands that need a GPU, a server in the foreground or real weights are simply not marked.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cleandift_deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable -->"
PROGRAM = "cleandift-deploy"

pytestmark = pytest.mark.usefixtures("single_thread")


@dataclass(frozen=True)
class Block:
    """One runnable fenced block: its language, text and where it starts (for messages)."""

    language: str
    text: str
    where: str


def doc_files() -> list[Path]:
    """README.md and every Markdown page of the site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shown(path: Path) -> str:
    """A page's name in messages: relative to the repository where it is inside it."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def runnable_blocks(path: Path) -> list[Block]:
    """The blocks of one file whose opening fence follows the runnable marker, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        where = f"{shown(path)}:{number + 1}"
        fence = lines[number + 1] if number + 1 < len(lines) else ""
        if not fence.startswith("```"):
            raise AssertionError(f"{where}: the runnable marker must sit right above a ``` fence")
        end = next(i for i in range(number + 2, len(lines)) if lines[i].startswith("```"))
        blocks.append(Block(fence[3:].strip(), "\n".join(lines[number + 2 : end]), where))
    return blocks


def commands(block: Block) -> list[list[str]]:
    """The argument lists of a runnable bash block (continuations joined, comments dropped)."""
    joined = block.text.replace("\\\n", " ")
    argvs = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] != PROGRAM:
            raise AssertionError(f"{block.where}: runnable blocks hold only {PROGRAM} commands")
        argvs.append(words[1:])
    return argvs


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run with `folder` as the working directory, as a reader following the page would."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_cli(argv: list[str], where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """One command through the real entry point; fail with its output unless it exits 0."""
    code: int | str | None = 0
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    assert code in (0, None), f"{where}: `{PROGRAM} {shlex.join(argv)}` exited {code}\n{out.err}"


def run_file(path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every runnable block of one page, in order, in one folder."""
    with inside(folder):
        for block in runnable_blocks(path):
            if block.language == "bash":
                for argv in commands(block):
                    run_cli(argv, block.where, capsys)
            elif block.language == "python":
                code = compile(block.text, block.where, "exec")
                exec(code, {"__name__": "__docs__"})
            else:
                raise AssertionError(f"{block.where}: cannot run a {block.language!r} block")


PAGES = [p for p in doc_files() if runnable_blocks(p)]


def test_the_docs_mark_commands_runnable() -> None:
    """The marker is in use (the quick starts at least): a renamed marker would run nothing."""
    names = {shown(p) for p in PAGES}
    assert {"README.md", "docs/quickstart.md"} <= names
    total = sum(len(commands(b)) for p in PAGES for b in runnable_blocks(p) if b.language == "bash")
    assert total >= 10


def test_a_runnable_block_with_another_program_is_refused(tmp_path: Path) -> None:
    """A runnable block may not hide a shell command the test would silently skip."""
    page = tmp_path / "page.md"
    page.write_text(f"{MARKER}\n```bash\ncurl http://x\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="only cleandift-deploy"):
        commands(runnable_blocks(page)[0])


def test_a_failing_command_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A documented command that exits non-zero fails the test, naming the page and line."""
    page = tmp_path / "page.md"
    page.write_text(f"{MARKER}\n```bash\n{PROGRAM} info --arch nope\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="page.md:1"):
        run_file(page, tmp_path, capsys)


@pytest.mark.parametrize("path", PAGES, ids=[shown(p) for p in PAGES])
def test_runnable_commands_run(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each page's runnable commands, in order, in an empty folder: every one exits 0."""
    run_file(path, tmp_path, capsys)
