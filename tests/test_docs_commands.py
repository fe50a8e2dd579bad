"""The documentation cannot rot: every block marked runnable in README.md and docs/ runs.

A fenced block is runnable when the line just before its opening fence is `<!-- runnable -->`
(an HTML comment: GitHub and MkDocs render nothing for it). A runnable `bash` block holds only
`cleandift-deploy` commands (comments and `\\` continuations allowed); a runnable `python` block
is executed as it stands. Each file's runnable blocks run in order, in a fresh temporary folder,
in this process (the CLI's `main`, so torch is imported once), and every command must exit 0.
Commands that need a GPU, a server in the foreground or real weights are simply not marked.

Pages repeat the same first steps (the tiny export, the synthetic set). The folder a sequence of
commands leaves is saved after each command; a page whose steps so far equal another's starts from
that saved folder instead of running them again (python blocks always run, their names being
shared with later blocks of the page). A page therefore sees exactly the files its own commands
make, and the suite pays for each distinct step once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
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


class Snapshots:
    """The folder left by each sequence of steps run so far, keyed by the steps' text."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.saved: dict[tuple[str, ...], Path] = {}
        self.count = 0

    def save(self, key: tuple[str, ...], folder: Path) -> None:
        """Keep a copy of the folder as the steps in `key` left it."""
        self.count += 1
        copy = self.root / str(self.count)
        shutil.copytree(folder, copy, symlinks=True)
        self.saved[key] = copy

    def restore(self, key: tuple[str, ...], folder: Path) -> None:
        """Make the folder what the steps in `key` left (its contents replaced)."""
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        shutil.copytree(self.saved[key], folder, symlinks=True, dirs_exist_ok=True)


def run_file(
    path: Path,
    folder: Path,
    capsys: pytest.CaptureFixture[str],
    snapshots: Snapshots | None = None,
) -> int:
    """Every runnable block of one page, in order, in one folder; the number of steps taken
    (a command or a Python block), run or restored from a saved folder."""
    history: tuple[str, ...] = ()
    behind: tuple[str, ...] | None = None  # steps skipped since the folder was last brought up
    names: dict[str, object] = {"__name__": "__docs__"}
    with inside(folder):
        for block in runnable_blocks(path):
            if block.language not in ("bash", "python"):
                raise AssertionError(f"{block.where}: cannot run a {block.language!r} block")
            steps = commands(block) if block.language == "bash" else [None]
            for argv in steps:
                history += (block.text if argv is None else shlex.join(argv),)
                if argv is not None and snapshots is not None and history in snapshots.saved:
                    behind = history
                    continue
                if behind is not None and snapshots is not None:
                    snapshots.restore(behind, folder)
                    behind = None
                if argv is None:
                    exec(compile(block.text, block.where, "exec"), names)
                else:
                    run_cli(argv, block.where, capsys)
                if snapshots is not None:
                    snapshots.save(history, folder)
    return len(history)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Snapshots:
    """One store of saved folders for all pages of this module."""
    return Snapshots(tmp_path_factory.mktemp("docs-snapshots"))


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
    with pytest.raises(AssertionError, match=re.escape("page.md:1")):
        run_file(page, tmp_path, capsys)


@pytest.mark.parametrize("path", PAGES, ids=[shown(p) for p in PAGES])
def test_runnable_commands_run(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], snapshots: Snapshots
) -> None:
    """Each page's runnable commands, in order, in an empty folder: every one exits 0 (run_cli
    fails the test otherwise), and a page marked runnable has at least one step."""
    assert run_file(path, tmp_path, capsys, snapshots) >= 1


def test_a_saved_folder_is_what_the_steps_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A page sharing another's first steps starts from their folder, then runs its own steps."""
    store = Snapshots(tmp_path / "store")
    store.root.mkdir()
    first, second = tmp_path / "first.md", tmp_path / "second.md"
    make = f"{PROGRAM} eval make-synthetic --out syn --pairs 1 --max-side 64"
    first.write_text(f"{MARKER}\n```bash\n{make}\n```\n", encoding="utf-8")
    second.write_text(
        f"{MARKER}\n```bash\n{make}\n```\n{MARKER}\n```python\n"
        "from pathlib import Path\nassert Path('syn/JPEGImages').is_dir()\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_file(first, tmp_path / "a", capsys, store)
    assert len(store.saved) == 1
    run_file(
        second, tmp_path / "b", capsys, store
    )  # the command is not run again, its files are there
    assert len(store.saved) == 2


def test_the_readme_links_to_files_that_exist() -> None:
    """`make docs` checks the site's links; the README (read on GitHub) is checked here."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links to its documentation pages"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


SOURCE_PATH = re.compile(r"`([\w/]+/\w+\.(?:py|sh))`")
# Paths the docs write relative to the package or the repository; other paths are the reference
# implementations' files (`src/depth.py` of CleanDIFT), which are not checked.
OURS = (
    "src/cleandift_deploy/",
    "tests/",
    "benchmarks/",
    *(f"{name}/" for name in ("kernels", "models", "descriptors", "runtime", "export", "train")),
    *(f"{name}/" for name in ("eval", "methods", "serve", "cli", "hedlin", "hyperfeatures")),
)


def missing_files(pages: list[Path]) -> list[str]:
    """The source, test and benchmark files the pages name in backticks that do not exist."""
    package = ROOT / "src" / "cleandift_deploy"
    missing = []
    for page in pages:
        for name in SOURCE_PATH.findall(page.read_text(encoding="utf-8")):
            if not name.startswith(OURS):
                continue
            if not ((ROOT / name).exists() or (package / name).exists()):
                missing.append(f"{shown(page)}: {name}")
    return missing


def test_the_files_the_docs_name_exist(tmp_path: Path) -> None:
    """A module the docs point at (`runtime/extractor.py`, `tests/test_x.py`) exists: files move."""
    missing = missing_files(doc_files())
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(missing)
    page = tmp_path / "page.md"
    page.write_text(
        "see `runtime/extractor.py`, `runtime/gone.py` and the reference's `src/depth.py`\n",
        encoding="utf-8",
    )
    assert missing_files([page]) == ["page.md: runtime/gone.py"]
