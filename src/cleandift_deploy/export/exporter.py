"""`export_onnx`: a loaded UNet (plus VAE and prompt) to an ONNX graph with its manifest."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx

from ..errors import CleanDiftError
from ..manifest import Manifest, package_versions
from ..models.graph_module import ExportGraph, GraphSpec, build_export_graph, input_info
from ..models.graph_options import ExportOptions
from ..models.graph_shapes import ShapePlan, plan_shapes, sample_inputs
from ..models.loading import LoadedUNet
from .agreement import as_record, failures
from .artifact_files import (
    publish,
    refuse_existing_artifact,
    save_onnx,
    set_manifest_metadata,
    staging_folder,
)
from .calibration import calibrated_keep_list, read_images
from .cleanup import fold_and_clean
from .fp16 import to_mixed_fp16
from .measure import agreement_batches, measure_agreement
from .trace import trace_to_onnx

log = logging.getLogger(__name__)


def _manifest(
    loaded: LoadedUNet,
    options: ExportOptions,
    plan: ShapePlan,
    module: ExportGraph,
    **extra: object,
) -> Manifest:
    return Manifest(
        kind="onnx",
        arch=loaded.arch,
        source=loaded.source,
        checkpoint_sha256=loaded.checkpoint_sha256,
        origin=dict(loaded.origin),
        taps=module.output_infos(loaded.unet.config),
        input=input_info(options.vae),
        batch=plan.batch,
        height=plan.height,
        width=plan.width,
        timestep=module.features.baked_timestep,
        prompt=None if options.prompt_input else options.prompt,
        prompt_input=options.prompt_input,
        precision=options.precision,
        versions=package_versions(),
        build=dict(extra, opset=options.opset, method=options.method),
        noise={} if options.noise is None else options.noise.record(),
        freeu={} if options.freeu is None else options.freeu.record(),
    )


def _convert_precision(
    model: onnx.ModelProto, options: ExportOptions, calibration: list[np.ndarray] | None
) -> tuple[onnx.ModelProto, list[str]]:
    if options.precision == "fp32":
        return model, []
    keep = (
        [] if calibration is None else calibrated_keep_list(model, calibration, options.fp16_bound)
    )
    return to_mixed_fp16(model, keep), keep


def _calibration_images(options: ExportOptions, plan: ShapePlan) -> list[np.ndarray] | None:
    """The calibration images, read before any slow step so bad files fail fast."""
    if options.calibration_images is None:
        return None
    return read_images(options.calibration_images, plan.height.opt, plan.width.opt)


def export_onnx(
    loaded: LoadedUNet, out: Path, options: ExportOptions, spec: GraphSpec | None = None
) -> Manifest:
    """Export `loaded` to `out` (.onnx, plus .onnx.data when large) with `out`'s .json manifest.

    The graph is traced in fp32, cleaned (constants folded, shapes inferred), converted to mixed
    fp16 when asked, checked with `onnx.checker`, measured against PyTorch in ONNX Runtime and
    written atomically. Returns the manifest. `spec` replaces the module built from `options`
    (a graph with a head, e.g. the hyperfeature aggregation network).
    """
    out = Path(out)
    options.check()
    refuse_existing_artifact(out, options.force)
    plan = plan_shapes(loaded.arch, options)
    calibration = _calibration_images(options, plan)
    spec = spec or build_export_graph(loaded, options)
    module = spec.module
    started = time.perf_counter()
    with staging_folder(out) as folder:
        inputs = sample_inputs(plan, options.vae, options.prompt_input, spec.cross_attention_dim)
        traced = trace_to_onnx(module, inputs, plan, options.opset, folder / "traced.onnx")
        model, nodes_before, nodes_after = fold_and_clean(traced, folder)
        del traced
        model, keep = _convert_precision(model, options, calibration)
        staged = folder / out.name
        external = save_onnx(model, staged, options.external_data_threshold)
        del model
        check_onnx(staged)
        manifest = _manifest(
            loaded,
            options,
            plan,
            module,
            **spec.build,
            nodes_traced=nodes_before,
            nodes_cleaned=nodes_after,
            external_data=external,
            fp32_keep_list=keep,
            export_seconds=round(time.perf_counter() - started, 2),
        )
        if options.check_agreement:
            agreement = measure_agreement(staged, module, agreement_batches(plan, module))
            manifest.agreement = {
                "reference": "fp32 PyTorch, fresh random inputs",
                "runtime": "onnxruntime-cpu",
                "taps": as_record(agreement),
                "failures": failures(agreement, options.precision),
            }
        set_manifest_metadata(staged, manifest)
        publish(staged, out, manifest)
    log.info("exported %s (%d -> %d nodes)", out, nodes_before, nodes_after)
    return manifest


def check_onnx(path: Path) -> None:
    """`onnx.checker` on the saved file (a path, so external data of any size works)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise CleanDiftError(f"the exported graph is invalid: {str(err).splitlines()[0]}") from None
