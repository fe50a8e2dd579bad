"""Writing an ONNX artifact: one `.onnx` (plus one `.onnx.data` when large) and its manifest,
staged in a temporary folder beside the target and renamed into place only when complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from ..atomic import refuse_existing
from ..manifest import MANIFEST_KEY, Manifest, read_manifest_metadata, sidecar_path
from .cleanup import weight_bytes


def data_path(onnx_path: Path) -> Path:
    """The single external-data file of a large model: `model.onnx` -> `model.onnx.data`."""
    return onnx_path.with_name(onnx_path.name + ".data")


def refuse_existing_artifact(out: Path, force: bool) -> None:
    """Fail before any work when the artifact or its sidecar exists and --force was not given."""
    for path in (out, sidecar_path(out)):
        refuse_existing(path, force)


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out`, removed afterwards whether or not the export worked."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save_onnx(model: onnx.ModelProto, path: Path, external_threshold: int) -> bool:
    """Save `model`; weights over `external_threshold` bytes go to ONE `path.onnx.data` file.

    Returns whether external data was used.
    """
    external = weight_bytes(model) > external_threshold
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_path(path).name,
            size_threshold=1024,
        )
        data_path(path).chmod(path.stat().st_mode & 0o777)  # onnx creates it owner-only
    else:
        onnx.save_model(model, str(path))
    return external


def set_manifest_metadata(path: Path, manifest: Manifest) -> None:
    """Store the manifest in the ONNX file's metadata (weights in external data are untouched)."""
    model = onnx.load(str(path), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key != MANIFEST_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=MANIFEST_KEY, value=manifest.to_json())
    onnx.save_model(model, str(path))


def publish(staged_onnx: Path, out: Path, manifest: Manifest) -> None:
    """Move the staged model (and its data file) to `out`, then write the sidecar manifest.

    The data file moves first and the manifest last, so a crash never leaves a complete-looking
    artifact that is missing its weights.
    """
    staged_data = data_path(staged_onnx)
    stale = data_path(out)
    if staged_data.exists():
        os.replace(staged_data, stale)
    elif stale.exists():
        stale.unlink()
    os.replace(staged_onnx, out)
    manifest.save(sidecar_path(out))


__all__ = ["MANIFEST_KEY", "read_manifest_metadata"]  # moved to manifest.py (runtime needs them)
