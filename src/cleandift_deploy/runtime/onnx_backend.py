"""The ONNX Runtime backend: an exported `.onnx` graph run through `create_session`.

Sessions are opened by `ort_session.create_session` (provider and speed settings live there).
`InferenceSession.run` is safe to call from several threads at once, so one session serves all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import CleanDiftError
from ..manifest import Manifest
from .ort_session import create_session

MANIFEST_METADATA_KEY = "cleandift_deploy.manifest"
"""Where the exporter stores the manifest inside the ONNX file (see export.artifact_files)."""
_CHECKED_FIELDS = ("checkpoint_sha256", "taps", "input", "timestep", "prompt", "precision")


def _check_embedded_manifest(path: Path, embedded: str | None, manifest: Manifest) -> None:
    """The manifest inside the graph must describe the same model as the sidecar beside it."""
    if embedded is None:
        raise CleanDiftError(f"{path} carries no cleandift manifest: export it with this toolkit")
    inner = json.loads(embedded)
    outer = json.loads(manifest.to_json())
    differing = [key for key in _CHECKED_FIELDS if inner.get(key) != outer.get(key)]
    if differing:
        raise CleanDiftError(
            f"{path} and its manifest {path.with_suffix('.json').name} describe different models "
            f"({', '.join(differing)} differ): re-export, or keep each .onnx with its own .json"
        )


class OnnxRuntimeBackend:
    """Runs an `.onnx` artifact with ONNX Runtime on "cpu" or "cuda"."""

    def __init__(
        self, path: Path, manifest: Manifest, device: str = "cpu", threads: int | None = None
    ) -> None:
        self.session = create_session(Path(path), device=device, threads=threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        _check_embedded_manifest(Path(path), metadata.get(MANIFEST_METADATA_KEY), manifest)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        missing = [t for t in manifest.tap_names if t not in self.output_names]
        if missing:
            raise CleanDiftError(
                f"{path} lacks the outputs {', '.join(missing)} its manifest lists: re-export it"
            )
        self.device = torch.device("cpu")
        self.name = f"onnxruntime-{device}"

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Taps for one batch: host tensors in, host float32 tensors out."""
        feed = {name: np.ascontiguousarray(inputs[name].cpu().numpy()) for name in self.input_names}
        outputs = self.session.run(self.output_names, feed)
        return {
            name: torch.from_numpy(np.asarray(value)).float()
            for name, value in zip(self.output_names, outputs, strict=True)
        }
