"""The OpenVINO backend: an exported `.onnx` graph run by OpenVINO's CPU plugin.

OpenVINO reads the ONNX graph (external data included) and, on first use, saves it as OpenVINO IR
in the cache folder; later loads read that IR, whose weights are memory-mapped instead of copied.
Each input shape gets its own statically reshaped model, compiled once and kept (dynamic shapes
cost speed). Precision is exact fp32 (`INFERENCE_PRECISION_HINT=f32`) unless bf16 is asked for by
name: on CPUs with AMX or AVX512_BF16, OpenVINO would otherwise silently run bf16. Compiled blobs
(`CACHE_DIR`, in the same folder) are opt-in: they shorten a later process's compile by a few
seconds but raised the peak memory of the SD2.1 graph from 6.7 to 9.1 GiB (the blob is read beside
the mapped IR), and take the weights' size on disk per input shape and precision.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CleanDiftError
from ..manifest import Manifest, read_onnx_header
from .onnx_backend import MANIFEST_METADATA_KEY, _check_embedded_manifest
from .threads import physical_cores

if TYPE_CHECKING:
    import openvino as ov

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
"""Our precision names -> OpenVINO's `INFERENCE_PRECISION_HINT` values."""
CACHE_ENV = "CLEANDIFT_OPENVINO_CACHE"
"""Environment variable naming the cache folder (default: ~/.cache/cleandift_deploy/openvino)."""


def default_cache_dir() -> Path:
    """Where IR conversions and compiled blobs are kept between processes."""
    if CACHE_ENV in os.environ:
        return Path(os.environ[CACHE_ENV])
    from .engine_choice import cache_root

    return cache_root() / "openvino"


def _artifact_key(path: Path) -> str:
    """Names one version of a graph file: its full path, size and modification time."""
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_onnx(core: ov.Core, path: Path) -> ov.Model:
    try:
        return core.read_model(str(path))
    except Exception as error:  # OpenVINO raises RuntimeError subclasses with long traces
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CleanDiftError(f"OpenVINO cannot read {path}: {first}; re-export it") from None


def intermediate_representation(
    core: ov.Core, path: Path, cache: Path, half_weights: bool = False
) -> Path:
    """The artifact as OpenVINO IR in `cache` (converted once; `.bin` weights are then mapped,
    not copied, when read). Both files are written under temporary names and renamed, the
    `.xml` last, so a crash never leaves an IR that looks complete.

    `half_weights` stores the weights as fp16 (for bf16 runs only: the plugin rounds them to
    bf16 anyway). The mapped IR is resident beside the plugin's own copy while a model
    compiles, so this halves the larger of the two: SD2.1 us6 at 512 px on an Intel Xeon, bf16
    peak 5.17 GiB from the f32 IR, 3.35 GiB from the fp16 one (weights 2.85 GiB)."""
    suffix = "-w16" if half_weights else ""
    xml = cache / f"{path.stem}-{_artifact_key(path)}{suffix}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml
    import openvino as ov

    cache.mkdir(parents=True, exist_ok=True)
    model = _read_onnx(core, path)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".ir-") as staging:
        staged = Path(staging) / xml.name
        ov.save_model(model, str(staged), compress_to_fp16=half_weights)
        del model
        os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(staged, xml)
    return xml


def _check_artifact(path: Path, manifest: Manifest) -> None:
    """The file exists, is ONNX, and carries the manifest beside it (read without weights)."""
    if not path.is_file():
        raise CleanDiftError(f"{path} does not exist: export the model first")
    header = read_onnx_header(path)
    metadata = {p.key: p.value for p in header.metadata_props}
    _check_embedded_manifest(path, metadata.get(MANIFEST_METADATA_KEY), manifest)


class OpenVINOModel:
    """An ONNX graph in OpenVINO: compiled per input shape on first use, run from many threads.

    `precision` "fp32" (exact: `INFERENCE_PRECISION_HINT=f32`) or "bf16"; `threads` defaults to
    the physical cores; `cache_dir` holds the IR (and, with `compiled_cache`, compiled blobs).
    """

    def __init__(
        self,
        path: Path,
        precision: str = "fp32",
        threads: int | None = None,
        cache_dir: Path | None = None,
        compiled_cache: bool = False,
    ) -> None:
        import openvino as ov

        if precision not in PRECISIONS:
            raise CleanDiftError(f"unknown precision {precision!r}: use fp32 or bf16")
        if threads is not None and threads < 1:
            raise CleanDiftError(f"threads must be at least 1, got {threads}")
        self.core = ov.Core()
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.ir = intermediate_representation(
            self.core, Path(path), cache, half_weights=precision == "bf16"
        )
        model = self.core.read_model(str(self.ir))
        self.input_names = [port.get_any_name() for port in model.inputs]
        self.output_names = [port.get_any_name() for port in model.outputs]
        self.config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            "INFERENCE_NUM_THREADS": threads or physical_cores(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        if compiled_cache:
            self.config["CACHE_DIR"] = str(cache / "blobs")
        self.compiled: dict[tuple[tuple[int, ...], ...], ov.CompiledModel] = {}
        self._compile_lock = threading.Lock()
        self._requests = threading.local()

    def compiled_for(self, shapes: tuple[tuple[int, ...], ...]) -> ov.CompiledModel:
        """The model compiled for these input shapes (in `input_names` order), compiled on the
        first request for them; one compile at a time, shared by every thread. The IR is read
        (mapped) for each compile and let go after it, so its weights do not stay resident
        beside the compiled model's own copy."""
        compiled = self.compiled.get(shapes)
        if compiled is not None:
            return compiled
        with self._compile_lock:
            if shapes not in self.compiled:
                static = self.core.read_model(str(self.ir))
                static.reshape(dict(zip(self.input_names, shapes, strict=True)))
                self.compiled[shapes] = self.core.compile_model(static, "CPU", self.config)
            return self.compiled[shapes]

    def _request(self, shapes: tuple[tuple[int, ...], ...]) -> ov.InferRequest:
        """This thread's infer request for the shapes (a request must not be shared)."""
        requests: dict[tuple[tuple[int, ...], ...], ov.InferRequest] | None
        requests = getattr(self._requests, "by_shape", None)
        if requests is None:
            requests = self._requests.by_shape = {}
        if shapes not in requests:
            requests[shapes] = self.compiled_for(shapes).create_infer_request()
        return requests[shapes]

    def run(self, feed: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs (copies, in `output_names` order) for contiguous inputs in `input_names`
        order."""
        request = self._request(tuple(tuple(array.shape) for array in feed))
        request.infer(feed)
        return [np.array(request.get_output_tensor(i).data) for i in range(len(self.output_names))]


class OpenVINOBackend:
    """Runs an `.onnx` artifact on the CPU with OpenVINO, in fp32 (default) or bf16."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "fp32",
        cache_dir: Path | None = None,
    ) -> None:
        path = Path(path)
        if device != "cpu":
            raise CleanDiftError(f"the OpenVINO backend runs on the CPU, not {device!r}: use cpu")
        _check_artifact(path, manifest)
        self.model = OpenVINOModel(path, precision, threads, cache_dir)
        missing = [t for t in manifest.tap_names if t not in self.model.output_names]
        if missing:
            raise CleanDiftError(
                f"{path} lacks the outputs {', '.join(missing)} its manifest lists: re-export it"
            )
        self.device = torch.device("cpu")
        self.name = "openvino-cpu" if precision == "fp32" else "openvino-cpu-bf16"

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Taps for one batch: host tensors in, host float32 tensors out."""
        names = self.model.input_names
        feed = [np.ascontiguousarray(inputs[name].cpu().numpy()) for name in names]
        outputs = self.model.run(feed)
        return {
            name: torch.from_numpy(value).float()
            for name, value in zip(self.model.output_names, outputs, strict=True)
        }
