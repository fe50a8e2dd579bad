"""fp16 calibration: which nodes see activations too large for fp16, measured on real images.

The fp32 graph runs in ONNX Runtime (which agrees with PyTorch fp32 to about 1e-6) with every float
intermediate exposed, over the calibration images; a node whose inputs or outputs exceed the bound
anywhere is kept in fp32. Node-level measurement maps one to one onto the nodes the fp16 pass
assigns, which module hooks in PyTorch would not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from PIL import Image, UnidentifiedImageError

from ..errors import CleanDiftError
from ..models.graph_module import IMAGE_INPUT
from .cleanup import PROTOBUF_LIMIT, weight_bytes
from .fp16 import FLOAT, name_nodes, tensor_types

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_images(folder: Path, height: int, width: int) -> list[np.ndarray]:
    """Every image in `folder`, squashed to height x width, as uint8 [1,3,H,W]."""
    if not folder.is_dir():
        raise CleanDiftError(f"calibration folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CleanDiftError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}: give a folder of real images"
        )
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        except (OSError, UnidentifiedImageError) as err:
            raise CleanDiftError(f"cannot read calibration image {path} ({err})") from None
        images.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)[None].copy())
    return images


def _expose_intermediates(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` that also outputs every float tensor a node produces."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    types = tensor_types(model)
    present = {o.name for o in exposed.graph.output}
    names = []
    for node in exposed.graph.node:
        for out in node.output:
            if out and types.get(out) == FLOAT and out not in present:
                exposed.graph.output.append(onnx.helper.make_tensor_value_info(out, FLOAT, None))
                names.append(out)
    return exposed, [*present, *names]


def tensor_peaks(
    model: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]]
) -> dict[str, float]:
    """The largest magnitude each float tensor reaches over all `feeds`."""
    import onnxruntime as ort

    exposed, names = _expose_intermediates(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    peaks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cleandift-calib-") as folder:
        source: str | bytes = (
            exposed.SerializeToString() if weight_bytes(exposed) < PROTOBUF_LIMIT else ""
        )
        if not source:
            path = Path(folder) / "exposed.onnx"
            onnx.save_model(exposed, str(path), save_as_external_data=True)
            source = str(path)
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        for feed in feeds:
            for name, value in zip(names, session.run(names, feed), strict=True):
                peak = float(np.max(np.abs(value))) if value.size else 0.0
                peaks[name] = max(peaks.get(name, 0.0), peak)
    return peaks


def keep_list(model: onnx.ModelProto, peaks: dict[str, float], bound: float) -> list[str]:
    """Nodes with an input or output whose peak magnitude exceeds `bound` (or is not finite)."""
    kept = []
    for node in model.graph.node:
        values = [peaks[n] for n in (*node.input, *node.output) if n in peaks]
        if any(not np.isfinite(v) or v > bound for v in values):
            kept.append(node.name)
    return kept


def calibrated_keep_list(
    model: onnx.ModelProto, images: list[np.ndarray], bound: float
) -> list[str]:
    """Names of the nodes to keep in fp32 after running the fp32 graph on `images` (uint8
    [1,3,H,W] at the export's optimisation size, from `read_images`)."""
    name_nodes(model)
    if model.graph.input[0].name != IMAGE_INPUT:
        raise CleanDiftError("calibration needs an image-input graph (drop --no-vae)")
    peaks = tensor_peaks(model, ({IMAGE_INPUT: image} for image in images))
    return keep_list(model, peaks, bound)
