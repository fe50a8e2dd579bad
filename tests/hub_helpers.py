"""A Hugging Face hub cache written by hand, as `hf download` leaves it: blobs named by content
hash, `snapshots/<commit>/...` symlinks to them, `refs/<branch>` holding the commit."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def commit_of(label: str) -> str:
    """A fake but well-formed 40-hex commit hash derived from a label."""
    return hashlib.sha1(label.encode()).hexdigest()


def cache_repo(
    cache: Path, repo_id: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",)
) -> Path:
    """Put `source` (a folder's files, or one file) into `cache` as snapshot `commit` of
    `repo_id`, pointed to by `refs`; returns the snapshot folder."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    files = (
        {p.relative_to(source): p for p in sorted(source.rglob("*")) if p.is_file()}
        if source.is_dir()
        else {Path(source.name): source}
    )
    for relative, path in files.items():
        data = path.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        (repo_dir / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot
