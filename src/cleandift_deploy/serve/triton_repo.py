"""A Triton Inference Server model repository from exported artifacts.

Layout (Triton's conventions): `REPO/<name>/config.pbtxt`, `REPO/<name>/1/model.onnx` for ONNX
graphs (a DIRECTORY `1/model.onnx/` holding the graph and its `.data` file when weights are
external), `REPO/<name>/1/model_<cc>.plan` for TensorRT engines with one plan per compute
capability (`cc_model_filenames`), and the artifacts' manifests under `REPO/<name>/manifests/`.
Engines built from the same ONNX file for several GPUs become one model. Each model folder is
staged beside its final name and renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import CleanDiftError
from ..manifest import Manifest, artifact_manifest, source_onnx
from .triton_config import (
    RepoOptions,
    TensorSpec,
    manifest_signature,
    model_config,
    onnx_signature,
    parse_config,
)

VERSION = "1"
_CC = re.compile(r"^\d+\.\d+$")


@dataclass
class RepoModel:
    """One Triton model: its name, its artifacts and where each goes in the version folder."""

    name: str
    kind: str
    artifacts: list[Path] = field(default_factory=list)
    manifests: list[Manifest] = field(default_factory=list)


def plan_capability(manifest: Manifest) -> str:
    """The one compute capability an engine runs on ("8.0"), or "" when it names none
    (hardware-compatible and portable engines: one plan for every GPU)."""
    listed = [c for c in manifest.target.get("compute_capabilities", []) if _CC.match(str(c))]
    return str(listed[0]) if len(listed) == 1 else ""


def _model_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip(".")
    if not name:
        raise CleanDiftError(f"cannot make a Triton model name from {text!r}: pass --name")
    return name


def group_models(artifacts: Sequence[Path], name: str | None = None) -> list[RepoModel]:
    """Artifacts grouped into models: each ONNX file alone, engines by the ONNX file they came
    from (one model with a plan per compute capability)."""
    models: dict[str, RepoModel] = {}
    for path in artifacts:
        if not path.is_file():
            raise CleanDiftError(f"{path} does not exist: export or build it first")
        if path.suffix not in (".onnx", ".engine", ".plan"):
            raise CleanDiftError(
                f"{path.name} is not a model artifact: give .onnx or .engine files"
            )
        manifest = artifact_manifest(path)
        kind = "onnx" if path.suffix == ".onnx" else "engine"
        stem = (
            path.stem if kind == "onnx" else Path(str(manifest.build.get("onnx", path.stem))).stem
        )
        key = f"{kind}:{path.resolve() if kind == 'onnx' else stem}"
        model = models.setdefault(key, RepoModel(_model_name(stem), kind))
        model.artifacts.append(path)
        model.manifests.append(manifest)
    grouped = list(models.values())
    if name is not None:
        if len(grouped) != 1:
            raise CleanDiftError(f"--name names one model, but the artifacts make {len(grouped)}")
        grouped[0].name = _model_name(name)
    _check_unique_names(grouped)
    return grouped


def _check_unique_names(models: Sequence[RepoModel]) -> None:
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            raise CleanDiftError(f"two models would be called {model.name!r}: rename an artifact")
        seen.add(model.name)


def _place(source: Path, target: Path) -> None:
    """Hard-link when source and target share a file system (no copy of GBs), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _stage_onnx(model: RepoModel, folder: Path) -> None:
    path = model.artifacts[0]
    data = path.with_name(path.name + ".data")
    if data.exists():
        _place(path, folder / VERSION / "model.onnx" / "model.onnx")
        _place(data, folder / VERSION / "model.onnx" / data.name)
    else:
        _place(path, folder / VERSION / "model.onnx")


def _stage_plans(model: RepoModel, folder: Path) -> dict[str, str]:
    plans: dict[str, str] = {}
    for path, manifest in zip(model.artifacts, model.manifests, strict=True):
        capability = plan_capability(manifest)
        if capability in plans:
            raise CleanDiftError(
                f"two engines of {model.name} run on compute capability "
                f"{capability or '(unnamed)'}: give one engine per GPU architecture"
            )
        plans[capability] = (
            f"model_sm{capability.replace('.', '')}.plan" if capability else ("model.plan")
        )
        _place(path, folder / VERSION / plans[capability])
    return plans


def _signature(model: RepoModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
    source = source_onnx(model.artifacts[0], model.manifests[0])
    return manifest_signature(model.manifests[0]) if source is None else onnx_signature(source)


def _stage_model(model: RepoModel, folder: Path, options: RepoOptions) -> None:
    plans = _stage_plans(model, folder) if model.kind == "engine" else None
    if plans is None:
        _stage_onnx(model, folder)
    text = model_config(model.name, model.manifests[0], _signature(model), options, plans)
    parse_config(text)
    write_text_atomic(folder / "config.pbtxt", text)
    for path, manifest in zip(model.artifacts, model.manifests, strict=True):
        manifest.save(folder / "manifests" / f"{path.name}.json")


def write_repository(
    artifacts: Sequence[Path],
    repo: Path,
    options: RepoOptions,
    *,
    name: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Write (or add to) a model repository; returns the model folders written."""
    models = group_models(artifacts, name)
    if options.cuda_graphs and all(m.kind == "onnx" for m in models):
        raise CleanDiftError(
            "--cuda-graphs applies to TensorRT engines: Triton runs CUDA graphs only in its "
            "tensorrt backend"
        )
    for model in models:
        if (repo / model.name).exists() and not force:
            raise CleanDiftError(f"{repo / model.name} already exists: pass --force to replace it")
    created = not repo.exists()
    written = []
    try:
        for model in models:
            written.append(_publish(model, repo, options))
    except BaseException:
        if created:  # bad input leaves nothing behind: not even the folder it made
            shutil.rmtree(repo, ignore_errors=True)
        raise
    return written


def _publish(model: RepoModel, repo: Path, options: RepoOptions) -> Path:
    final = repo / model.name
    staging = repo / f".{model.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _stage_model(model, staging, options)
        if final.exists():
            old = repo / f".{model.name}.old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
