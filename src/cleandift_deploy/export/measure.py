"""Running an exported graph in ONNX Runtime and its PyTorch reference on the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..models.dinov2 import DinoFeatures
from ..models.graph_module import ExportGraph
from ..models.graph_shapes import ShapePlan, sample_inputs
from .agreement import TapAgreement, compare_outputs
from .artifact_runners import Batches, run_onnx


def agreement_batches(
    plan: ShapePlan, module: ExportGraph, generator: torch.Generator | None = None
) -> Batches:
    """Two fresh random inputs at the optimisation size (matching needs a source and a target):
    one batch of 2 when the batch range allows it, else two batches of 1."""
    vae = module.image_model is not None
    prompt_input = not module.has_prompt
    width = module.features.cross_attention_dim
    sizes = [2] if plan.batch.min <= 2 <= plan.batch.max else [plan.batch.min] * 2
    batches = []
    for size in sizes:
        tensors = sample_inputs(plan, vae, prompt_input, width, size, generator)
        batches.append({n: t.numpy() for n, t in zip(module.input_names, tensors, strict=True)})
    return batches


def concat_runs(runs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Outputs of several batches joined along the batch axis."""
    return {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}


@torch.no_grad()
def reference_outputs(
    module: ExportGraph | DinoFeatures, batches: Batches
) -> dict[str, np.ndarray]:
    """The fp32 PyTorch module's outputs, by tap name, over all batches."""
    runs = []
    for feeds in batches:
        outputs = module(*(torch.from_numpy(feeds[n]) for n in module.input_names))
        runs.append({t: o.float().numpy() for t, o in zip(module.taps, outputs, strict=True)})
    return concat_runs(runs)


def measure_agreement(
    path: Path, module: ExportGraph | DinoFeatures, batches: Batches
) -> dict[str, TapAgreement]:
    """Per-tap agreement of the ONNX graph at `path` with `module` on the same inputs."""
    return compare_outputs(reference_outputs(module, batches), concat_runs(run_onnx(path, batches)))
