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
from ..manifest import InputInfo, Manifest, TapInfo
from ..models.dinov2 import (
    DINO_ARCHS,
    DINO_TAP,
    PATCH,
    RANDOM_PREFIX,
    SEED_PREFIX,
    DinoFeatures,
    LoadedDino,
    check_dino_size,
    default_dino_size,
    load_dino,
    random_dino,
)
from ..models.sources import find_recorded
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
from .exporter import check_onnx, package_versions
from .fp16 import to_mixed_fp16
from .measure import concat_runs, reference_outputs
from .options import EXTERNAL_DATA_THRESHOLD, check_common
from .shapes import ShapePlan, plan_ranges
from .trace import trace_to_onnx

DINO_INPUT = InputInfo("image", "uint8", "NCHW", (0.0, 255.0), "letterbox", PATCH)
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


def dino_manifest(
    loaded: LoadedDino, module: DinoFeatures, plan: ShapePlan, precision: str, **build: object
) -> Manifest:
    """The manifest of a DINOv2 artifact (or of its PyTorch reference with kind="pytorch")."""
    return Manifest(
        kind="onnx",
        arch=loaded.arch,
        source=loaded.source,
        checkpoint_sha256=loaded.checkpoint_sha256,
        origin=dict(loaded.origin),
        taps=[TapInfo(DINO_TAP, module.channels, PATCH)],
        input=DINO_INPUT,
        batch=plan.batch,
        height=plan.height,
        width=plan.width,
        timestep=None,
        prompt=None,
        prompt_input=False,
        precision=precision,
        versions=package_versions(),
        build={"backbone": "dinov2", "layer": module.layer, "normalisation": "imagenet", **build},
    )


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


def dino_source_of(manifest: Manifest, source: str | Path | None = None) -> LoadedDino:
    """The weights a DINOv2 artifact was exported from (or `source`), checked by hash."""
    if source is None and manifest.source.startswith(RANDOM_PREFIX):
        seed = int(manifest.checkpoint_sha256.removeprefix(SEED_PREFIX))
        return random_dino(manifest.arch, seed)
    where = str(source or manifest.source)
    if source is None:
        find_recorded(where, "the DINOv2 weights", "pass them as the reference source")
    loaded = load_dino(where, arch=manifest.arch if manifest.arch in DINO_ARCHS else None)
    if loaded.checkpoint_sha256 != manifest.checkpoint_sha256:
        raise CleanDiftError(
            f"{loaded.source} is not the DINOv2 checkpoint the artifact was exported from "
            f"(sha256 {loaded.checkpoint_sha256[:12]} vs {manifest.checkpoint_sha256[:12]}): "
            "give the original weights"
        )
    return loaded


def dino_reference_module(manifest: Manifest, source: str | Path | None = None) -> DinoFeatures:
    """The fp32 PyTorch module that computes what a DINOv2 artifact claims to compute."""
    return DinoFeatures(dino_source_of(manifest, source), manifest.build.get("layer")).eval()


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
