"""`export_dinov2`: a DINOv2 backbone to an ONNX graph `image uint8 -> dino [B,C,H/14,W/14]`.

The same steps and files as the UNet export (trace, fold, optional mixed fp16, checker, ONNX
Runtime agreement on fresh random images, manifest in metadata and sidecar, atomic publish); only
the graph module and the shape rules (multiples of 14, default 840 px) differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CleanDiftError
from ..manifest import Manifest
from ..models.dinov2 import (
    DinoFeatures,
    LoadedDino,
    check_dino_size,
    default_dino_size,
)
from ..models.dinov2_graph import dino_manifest
from ..models.graph_options import EXTERNAL_DATA_THRESHOLD, check_common
from ..models.graph_shapes import ShapePlan, plan_ranges
from .agreement import as_record, compare_outputs, failures
from .artifact_files import (
    publish,
    refuse_existing_artifact,
    save_onnx,
    set_manifest_metadata,
    staging_folder,
)
from .artifact_runners import Batches, run_onnx
from .cleanup import fold_and_clean
from .exporter import check_onnx
from .fp16 import to_mixed_fp16
from .measure import concat_runs, reference_outputs
from .trace import trace_to_onnx

"""uint8 images, ImageNet mean/std applied in the graph, letterboxed by the runtime."""


@dataclass
class DinoExportOptions:
    """Options of one DINOv2 export; `image_size` (H, W) is the tracing size (default 840)."""

    layer: int | None = None
    image_size: tuple[int, int] | None = None
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None
    batch: tuple[int, int, int] = (1, 1, 1)
    opset: int = 17
    precision: str = "fp32"
    force: bool = False
    check_agreement: bool = True
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD

    def check(self) -> None:
        """One-line errors for option values that cannot work together."""
        check_common(self.precision, self.batch, self.opset)


def plan_dino_shapes(arch: str, options: DinoExportOptions) -> ShapePlan:
    """Batch and size ranges (default 840 px); sides must be multiples of 14."""
    default = default_dino_size(arch)
    size = options.image_size or (default, default)
    explicit = options.image_size is not None
    return plan_ranges(size, options.size_range, explicit, options.batch, check_dino_size)


def dino_batches(plan: ShapePlan, generator: torch.Generator | None = None) -> Batches:
    """Two fresh random uint8 images at the optimisation size (one batch of 2, or two of 1)."""
    sizes = [2] if plan.batch.min <= 2 <= plan.batch.max else [plan.batch.min] * 2
    shape = (3, plan.height.opt, plan.width.opt)
    return [
        {
            "image": torch.randint(
                0, 256, (n, *shape), dtype=torch.uint8, generator=generator
            ).numpy()
        }
        for n in sizes
    ]


def dino_agreement(
    path: Path, module: DinoFeatures, plan: ShapePlan, precision: str
) -> dict[str, object]:
    """ONNX Runtime vs the PyTorch module on fresh random images, as the manifest records it."""
    batches = dino_batches(plan)
    agreement = compare_outputs(
        reference_outputs(module, batches), concat_runs(run_onnx(path, batches))
    )
    return {
        "reference": "fp32 PyTorch, fresh random inputs",
        "runtime": "onnxruntime-cpu",
        "taps": as_record(agreement),
        "failures": failures(agreement, precision),
    }


def export_dinov2(loaded: LoadedDino, out: Path, options: DinoExportOptions) -> Manifest:
    """Export `loaded` to `out` (.onnx) with its manifest; returns the manifest."""
    out = Path(out)
    options.check()
    refuse_existing_artifact(out, options.force)
    plan = plan_dino_shapes(loaded.arch, options)
    module = DinoFeatures(loaded, options.layer).eval()
    if module.skip > 1:
        raise CleanDiftError(
            f"{loaded.arch} resizes its position embeddings with antialiased bicubic "
            "interpolation, which the ONNX exporter cannot express: export the variant without "
            "registers, or run this one with the PyTorch backend"
        )
    started = time.perf_counter()
    with staging_folder(out) as folder:
        sample = torch.randint(
            0, 256, (plan.batch.opt, 3, plan.height.opt, plan.width.opt), dtype=torch.uint8
        )
        traced = trace_to_onnx(module, (sample,), plan, options.opset, folder / "traced.onnx")
        model, before, after = fold_and_clean(traced, folder)
        if options.precision == "fp16":
            model = to_mixed_fp16(model, [])
        staged = folder / out.name
        external = save_onnx(model, staged, options.external_data_threshold)
        del model
        check_onnx(staged)
        manifest = dino_manifest(
            loaded,
            module,
            plan,
            options.precision,
            opset=options.opset,
            nodes_traced=before,
            nodes_cleaned=after,
            external_data=external,
            export_seconds=round(time.perf_counter() - started, 2),
        )
        if options.check_agreement:
            manifest.agreement = dino_agreement(staged, module, plan, options.precision)
        set_manifest_metadata(staged, manifest)
        publish(staged, out, manifest)
    return manifest
