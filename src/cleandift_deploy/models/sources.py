"""Model sources: what a SOURCE argument names, resolved to local files before anything loads.

Every loader (UNets, VAEs, DINOv2) takes its source through `resolve_source_files`, so one
grammar holds everywhere a model is read (export, info, train --teacher, export-dinov2, eval,
probes, compare and the torch backend reloading what a manifest names):

- a local path: a diffusers pipeline or UNet folder, a transformers DINOv2 folder, or one
  `.safetensors` file (CleanDIFT `*_full` / `*_unet`, a UNet state dict, DINOv2 weights);
- a Hugging Face repo id found in the LOCAL cache: `ORG/NAME`, `ORG/NAME:FILE` (a file or
  subfolder of the repo), each with an optional `@REVISION` (branch, tag, commit or a unique
  commit prefix), e.g. `CompVis/cleandift:cleandift_sd21_full.safetensors@main`.

Repo ids go through huggingface_hub's cache API with `local_files_only=True`: nothing is ever
downloaded, with or without `HF_HUB_OFFLINE`. The cache folder is read from `HF_HUB_CACHE`, else
`HF_HOME/hub`, at call time (huggingface_hub reads them once, at import). A missing repo, revision
or file is one line naming the cache folder searched and the `hf download` command that fetches
it on a connected machine.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import CleanDiftError

FULL_PREFIX = "unet_feature_extractor_cleandift."
"""Key prefix of the student UNet inside a CleanDIFT `*_full` (whole aligner) checkpoint."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DINO_MODEL_TYPES = ("dinov2", "dinov2_with_registers")

_REPO = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*"
_HUB_REF = re.compile(
    rf"^(?P<repo>{_REPO})(?:@(?P<rev1>[\w./-]+?))?(?::(?P<file>[^@:]+))?(?:@(?P<rev2>[\w./-]+))?$"
)
"""`ORG/NAME[:FILE][@REV]`, also `ORG/NAME@REV:FILE`."""
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_COMMIT_PREFIX = re.compile(r"^[0-9a-f]{4,39}$")

LAYOUTS = {
    "diffusers-pipeline": "diffusers pipeline folder (unet/, vae/, ...)",
    "diffusers-unet": "diffusers UNet folder (config.json + weights)",
    "transformers-dinov2": "transformers DINOv2 folder (config.json + weights)",
    "cleandift-full": "CleanDIFT *_full checkpoint (student UNet + learned timestep)",
    "unet-safetensors": "UNet state dict in one safetensors file (CleanDIFT *_unet, diffusers)",
    "dinov2-safetensors": "DINOv2 weights in one safetensors file (transformers names)",
    "safetensors": "safetensors file of unknown content",
    "folder": "folder of unknown layout",
    "pickle": "pickle checkpoint (never loaded: convert it to safetensors)",
}
"""Every layout a source can resolve to, with how `info` describes it."""


@dataclass(frozen=True)
class HubRef:
    """A parsed Hugging Face reference: repo id, optional file or subfolder, optional revision."""

    repo_id: str
    filename: str | None = None
    revision: str | None = None

    def fetch_command(self, revision: str | None = None) -> str:
        """The `hf download` command that puts this reference into the cache."""
        parts = ["hf download", self.repo_id]
        if self.filename and "." in Path(self.filename).name:
            parts.append(self.filename)
        elif self.filename:
            parts.append(f"--include '{self.filename}/*'")
        rev = revision or self.revision
        if rev:
            parts.append(f"--revision {rev}")
        return " ".join(parts)


@dataclass
class ResolvedSource:
    """A source resolved to a local file or folder, with its layout and where it came from."""

    text: str
    path: Path
    layout: str
    repo_id: str | None = None
    revision: str | None = None
    """The commit hash of the cached snapshot (repo ids only)."""
    requested_revision: str | None = None
    filename: str | None = None
    cache_dir: Path | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    """Tensor names and shapes of a single safetensors file (read from its header only)."""

    @property
    def from_hub(self) -> bool:
        """Whether this came from the Hugging Face cache."""
        return self.repo_id is not None

    @property
    def pinned(self) -> str:
        """What to write into a manifest: the path, or the repo id pinned to the snapshot's
        commit, so reloading finds exactly these files again through the same resolver."""
        if not self.from_hub:
            return str(self.path)
        name = f"{self.repo_id}:{self.filename}" if self.filename else str(self.repo_id)
        return f"{name}@{self.revision}"

    def origin(self) -> dict[str, Any]:
        """The provenance record for manifests (empty for local paths)."""
        if not self.from_hub:
            return {}
        record: dict[str, Any] = {"hub_repo": self.repo_id, "revision": self.revision}
        if self.filename:
            record["file"] = self.filename
        if self.requested_revision:
            record["requested_revision"] = self.requested_revision
        return record

    @cached_property
    def weight_files(self) -> list[Path]:
        """The safetensors file(s) the weights are read from (folders: the model's files)."""
        from .checkpoints import weight_files

        if self.path.is_file():
            return [self.path]
        if self.layout == "diffusers-pipeline":
            return weight_files(self.path / "unet")
        return weight_files(self.path)

    @cached_property
    def sha256(self) -> str:
        """The content hash of the weight files, as manifests record it."""
        from .checkpoints import sha256_of

        return sha256_of(self.weight_files)

    def config(self) -> dict[str, Any] | None:
        """The folder's model config (a pipeline's UNet config), or None for a bare file."""
        if self.path.is_file():
            beside = [self.path.parent / "config.json", self.path.parent / "unet" / "config.json"]
            found = next((p for p in beside if p.is_file()), None)
            return _read_json(found) if found is not None else None
        folder = self.path / "unet" if self.layout == "diffusers-pipeline" else self.path
        return _read_json(folder / "config.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CleanDiftError(f"cannot read the config {path} ({err})") from None
    if not isinstance(data, dict):
        raise CleanDiftError(f"{path} is not a JSON object")
    return data


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    `$XDG_CACHE_HOME/huggingface/hub` (`~/.cache/huggingface/hub`), read now (not at import)."""
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(os.path.expandvars(os.path.expanduser(env[name])))
    xdg = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = env.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def parse_hub_ref(text: str) -> HubRef | None:
    """The repo id, file and revision of `ORG/NAME[:FILE][@REV]`, or None if it is not one."""
    if text.startswith(("/", ".", "~")) or (":" not in text and text.endswith(PICKLE_SUFFIXES)):
        return None
    if ":" not in text and text.endswith(".safetensors"):
        return None
    match = _HUB_REF.match(text)
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        return None
    if match["rev1"] and match["rev2"]:
        return None
    filename = match["file"].strip("/") if match["file"] else None
    return HubRef(match["repo"], filename or None, match["rev1"] or match["rev2"])


def _repo_folder(cache: Path, repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache / repo_folder_name(repo_id=repo_id, repo_type="model")


def _cached_revisions(repo_dir: Path) -> str:
    refs = sorted(p for p in (repo_dir / "refs").rglob("*") if p.is_file())
    named = [f"{p.relative_to(repo_dir / 'refs')} -> {p.read_text().strip()[:12]}" for p in refs]
    snapshots = sorted(p.name[:12] for p in (repo_dir / "snapshots").glob("*") if p.is_dir())
    parts = []
    if named:
        parts.append("refs " + ", ".join(named))
    if snapshots:
        parts.append("snapshots " + ", ".join(snapshots))
    return "; ".join(parts) or "nothing"


def _expand_commit_prefix(repo_dir: Path, revision: str) -> str:
    """A unique prefix of a cached snapshot's commit -> the full commit (else unchanged)."""
    if _COMMIT.match(revision) or not _COMMIT_PREFIX.match(revision):
        return revision
    if (repo_dir / "refs" / revision).is_file():
        return revision
    found = [p.name for p in (repo_dir / "snapshots").glob(f"{revision}*") if p.is_dir()]
    return found[0] if len(found) == 1 else revision


def _snapshot(text: str, ref: HubRef, cache: Path) -> tuple[Path, str]:
    """The cached snapshot folder of `ref` and its commit hash, through huggingface_hub offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_dir = _repo_folder(cache, ref.repo_id)
    if not repo_dir.is_dir():
        raise CleanDiftError(
            f"{text}: no such local path, and {ref.repo_id} is not in the Hugging Face cache "
            f"{cache} (searched offline; nothing is downloaded): on a connected machine run "
            f"`{ref.fetch_command()}`, then copy that cache here or point HF_HOME / HF_HUB_CACHE "
            "at it"
        )
    revision = _expand_commit_prefix(repo_dir, ref.revision or "main")
    try:
        folder = snapshot_download(
            ref.repo_id, revision=revision, cache_dir=str(cache), local_files_only=True
        )
    except (LocalEntryNotFoundError, OSError) as err:
        reason = str(err).splitlines()[0] if "incomplete" in str(err) else "not cached"
        raise CleanDiftError(
            f"revision {ref.revision or 'main'} of {ref.repo_id} is not in the Hugging Face cache "
            f"{cache} ({reason}; cached: {_cached_revisions(repo_dir)}): on a connected machine "
            f"run `{ref.fetch_command(ref.revision or 'main')}`"
        ) from None
    path = Path(folder)
    return path, path.name


def _resolve_hub(text: str, ref: HubRef) -> ResolvedSource:
    cache = hub_cache_dir()
    snapshot, commit = _snapshot(text, ref, cache)
    filename = ref.filename
    if filename is None:
        filename = _default_file(snapshot, ref, commit)
    path = snapshot / filename if filename else snapshot
    if not path.exists():
        raise CleanDiftError(
            f"{filename} is not in the cached snapshot {commit[:12]} of {ref.repo_id} ({cache}): "
            f"on a connected machine run `{ref.fetch_command()}`"
        )
    layout, shapes = detect_layout(path)
    return ResolvedSource(
        text, path, layout, ref.repo_id, commit, ref.revision, filename, cache, shapes
    )


def _default_file(snapshot: Path, ref: HubRef, commit: str) -> str | None:
    """A repo without a model folder layout but holding one safetensors file: that file."""
    if detect_layout(snapshot)[0] != "folder":
        return None
    files = sorted(p.name for p in snapshot.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    listed = ", ".join(files) if files else "no safetensors files"
    raise CleanDiftError(
        f"{ref.repo_id} (snapshot {commit[:12]}) is not a model folder and holds {listed}: "
        f"name one as {ref.repo_id}:FILE"
    )


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118


def _file_layout(path: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    if path.suffix in PICKLE_SUFFIXES:
        return "pickle", {}
    try:
        shapes = header_shapes(path)
    except Exception:  # corrupt or not safetensors: the loader says so in its own words
        return "safetensors", {}
    if any(k.startswith(FULL_PREFIX) for k in shapes):
        return "cleandift-full", shapes
    if any(k.removeprefix("dinov2.") == "embeddings.cls_token" for k in shapes):
        return "dinov2-safetensors", shapes
    if "conv_in.weight" in shapes:
        return "unet-safetensors", shapes
    return "safetensors", shapes


def _folder_layout(path: Path) -> str:
    if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
        return "diffusers-pipeline"
    config_file = path / "config.json"
    if not config_file.is_file():
        return "folder"
    config = _read_json(config_file)
    if config.get("model_type") in DINO_MODEL_TYPES:
        return "transformers-dinov2"
    if "block_out_channels" in config:
        return "diffusers-unet"
    return "folder"


def detect_layout(path: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The layout of a local file or folder (and a single file's tensor shapes), reading only
    configs and safetensors headers."""
    if path.is_dir():
        return _folder_layout(path), {}
    return _file_layout(path)


def resolve_source_files(source: str | Path) -> ResolvedSource:
    """Resolve a local path or a cached Hugging Face repo id to local files, or fail in one line.

    An existing local path always wins; anything else that reads as a repo id is looked up in
    the cache (never downloaded)."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        layout, shapes = detect_layout(path)
        return ResolvedSource(text, path, layout, shapes=shapes)
    ref = parse_hub_ref(text)
    if ref is None:
        raise CleanDiftError(
            f"{text} does not exist: give a model folder, a .safetensors file or a Hugging Face "
            "repo id (ORG/NAME[:FILE][@REVISION]) that is in the local cache"
        )
    return _resolve_hub(text, ref)


def find_recorded(source: str, what: str, hint: str) -> ResolvedSource:
    """Find the weights a manifest (or another record) names, the same way they were first
    resolved: a path, or a repo id pinned to its commit, from the local cache only.

    Fails in one line saying `what` is not on this machine, why, and `hint` (what to pass
    instead)."""
    try:
        return resolve_source_files(source)
    except CleanDiftError as err:
        raise CleanDiftError(f"{what} {source} is not on this machine ({err}); {hint}") from None
