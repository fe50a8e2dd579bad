"""`compare`: an artifact against the fp32 PyTorch reference (or saved golden outputs) on the
same inputs, with pass/fail thresholds per precision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CleanDiftError
from ..manifest import Manifest, artifact_manifest
from ..models.dinov2 import DinoFeatures, is_dinov2
from ..models.graph_module import ExportGraph
from ..models.graph_shapes import ShapePlan
from ..models.provenance import (
    Recorded,
    Wording,
    dino_reference_module,
    reference_graph,
    reload_unet,
)
from .agreement import TapAgreement, compare_outputs, failures
from .artifact_runners import Batches, run_artifact
from .dinov2_export import dino_batches
from .golden import load_golden, save_golden
from .measure import agreement_batches, concat_runs, reference_outputs

COMPARE_WORDING = Wording(
    what="the checkpoint the artifact was exported from",
    fix="pass the original with --reference",
    missing=None,
    name_given=True,
)


@dataclass
class Comparison:
    """Per-output agreement and the thresholds missed."""

    agreement: dict[str, TapAgreement]
    failures: list[str]
    precision: str


def reference_module(manifest: Manifest, source: str | None) -> ExportGraph:
    """The fp32 PyTorch module that computes what the artifact claims to compute."""
    if manifest.noise.get("random"):
        raise CleanDiftError(
            "the artifact draws fresh noise on every call, so no reference can agree with it: "
            "export with fixed noise (no --random-noise) to compare"
        )
    loaded = reload_unet(Recorded.of(manifest), source, COMPARE_WORDING)
    return reference_graph(loaded, manifest).module


def _reference_and_inputs(
    manifest: Manifest, reference: str | None
) -> tuple[ExportGraph | DinoFeatures, Batches]:
    """The fp32 module (UNet graph or DINOv2) and fresh random inputs at the optimisation size."""
    plan = ShapePlan(manifest.batch, manifest.height, manifest.width)
    if is_dinov2(manifest.arch):
        return dino_reference_module(manifest, reference), dino_batches(plan)
    module = reference_module(manifest, reference)
    return module, agreement_batches(plan, module)


def compare_artifact(
    path: Path,
    reference: str | None = None,
    save_golden_dir: Path | None = None,
    golden_dir: Path | None = None,
    runtime: str = "onnxruntime",
) -> Comparison:
    """Run the artifact and the reference (PyTorch or golden) on the same inputs and compare.

    `runtime` runs ONNX graphs: "onnxruntime", "openvino" or "openvino-bf16" (engines: TensorRT).
    """
    if save_golden_dir is not None and golden_dir is not None:
        raise CleanDiftError("give --save-golden or --golden, not both")
    manifest = artifact_manifest(path)
    if golden_dir is not None:
        batches, expected = load_golden(golden_dir)
    else:
        module, batches = _reference_and_inputs(manifest, reference)
        expected = [reference_outputs(module, [b]) for b in batches]
        if save_golden_dir is not None:
            save_golden(save_golden_dir, batches, expected)
    actual = run_artifact(path, manifest, batches, runtime)
    agreement = compare_outputs(concat_runs(expected), concat_runs(actual))
    return Comparison(agreement, failures(agreement, manifest.precision), manifest.precision)
