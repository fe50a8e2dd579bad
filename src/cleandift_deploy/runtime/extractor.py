"""FeatureExtractor: one API over the PyTorch, ONNX Runtime and TensorRT backends.

It reads an artifact's manifest, checks every request against it, preprocesses images the same way
for every backend, splits batches larger than the model's maximum (and pads ones smaller than its
minimum), and returns `{tap: features}`. It holds no per-call state, so one extractor can serve
several threads at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CleanDiftError
from ..manifest import Manifest, artifact_manifest, sidecar_path
from ..models import validate_taps
from ..models.dinov2 import is_dinov2
from ..models.loading import LoadedUNet, resolve_source
from ..models.taps import DEFAULT_TAP
from .backend import Backend
from .engine_choice import Selection, choose_exact_cpu_engine, gate_bf16
from .fidelity_gate import calibration_images, check_min_agreement
from .precision import DEFAULT_MIN_AGREEMENT
from .preprocess import ImageInput, Placement, check_policy, prepare, to_model_input
from .request_checks import (
    check_latents,
    check_prompt,
    manifest_sha256,
    resolve_batch_size,
    resolve_image_size,
    select_taps,
)
from .selection import BACKENDS, artifact_kind, choose_backend, default_device
from .torch_backend import TorchBackend
from .torch_reference import ReferenceSpec, build_reference, check_same_checkpoint, source_of

PROMPT_INPUT = "encoder_hidden_states"


@dataclass
class Features:
    """Tap tensors `[B, C, h, w]` (float32) and where each image was placed on the canvas."""

    taps: dict[str, torch.Tensor]
    placements: list[Placement]


class FeatureExtractor:
    """Images in, `{tap: features}` out, through whichever backend runs the model."""

    def __init__(
        self,
        backend: Backend,
        manifest: Manifest,
        *,
        taps: Sequence[str] | None = None,
        image_size: tuple[int, int] | None = None,
        resize: str | None = None,
        batch_size: int | None = None,
        selection: Selection | None = None,
    ) -> None:
        self.backend = backend
        self.selection = selection or Selection(backend.name, "asked for by name")
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256(manifest)
        self.taps = select_taps(manifest, taps)
        self.takes_images = manifest.input.name == "image"
        self.image_size = resolve_image_size(manifest, image_size)
        self.resize = check_policy(resize or manifest.input.resize) if self.takes_images else "none"
        self.batch_size = resolve_batch_size(manifest, batch_size)
        self._reopen: tuple[Path, Callable[[str], FeatureExtractor]] | None = None
        """The artifact and how `load` opened it, to open its other engines."""

    @property
    def backend_name(self) -> str:
        """The backend actually running, e.g. "onnxruntime-cpu" or "torch-cpu-bf16"."""
        return self.backend.name

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str = "auto",
        device: str | None = None,
        *,
        taps: Sequence[str] | None = None,
        image_size: tuple[int, int] | None = None,
        resize: str | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
        source: str | Path | LoadedUNet | None = None,
        cuda_graphs: bool = True,
        precision: str = "fp32",
        calibration: str | Path | Sequence[ImageInput] | None = None,
        min_agreement: float = DEFAULT_MIN_AGREEMENT,
    ) -> FeatureExtractor:
        """Open an artifact (`.onnx`, `.plan`, `.engine`) with its manifest.

        `backend`: "auto" (the fastest that can run here), "onnxruntime", "openvino" (CPU, fp32;
        "openvino-bf16" for bf16), "tensorrt", or "torch" /
        "torch-bf16" for the PyTorch reference of the artifact, rebuilt from `source` (default:
        the checkpoint named in the manifest, which must be the same one). The request is checked
        against the manifest before the (possibly slow) backend is opened. `cuda_graphs=False`
        runs TensorRT engines without CUDA graphs (they also fall back by themselves when a
        capture fails).

        `precision="bf16"` runs the backend's bf16 engine (OpenVINO bf16 for `.onnx`, bf16
        autocast for "torch") only where it keeps at least `min_agreement` of the exact
        engine's nearest-neighbour matches on the `calibration` images (a folder or images;
        measured once and kept beside the artifact), else the exact engine. `selection` says
        which engine runs and why.
        """
        path = Path(path)
        kind = artifact_kind(path)
        manifest = artifact_manifest(path)
        if manifest.kind != kind:
            raise CleanDiftError(
                f"{sidecar_path(path).name} describes a {manifest.kind} artifact, but {path.name} "
                f"is an {kind} file: keep each artifact with its own manifest"
            )
        if backend not in BACKENDS:
            raise CleanDiftError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
        select_taps(manifest, taps)
        resolve_image_size(manifest, image_size)
        if precision not in ("fp32", "bf16"):
            raise CleanDiftError(f"unknown precision {precision!r}: use fp32 or bf16")
        images = calibration_images(calibration) if precision == "bf16" else []
        check_min_agreement(min_agreement)
        name = choose_backend(kind) if backend == "auto" else backend

        def build(engine: str) -> FeatureExtractor:
            runner = _open_backend(
                engine,
                path,
                manifest,
                device or default_device(engine),
                threads,
                source,
                cuda_graphs,
            )
            opened = cls(
                runner,
                manifest,
                taps=taps,
                image_size=image_size,
                resize=resize,
                batch_size=batch_size,
            )
            opened._reopen = (path, build)
            return opened

        if (
            backend == "auto"
            and name == "onnxruntime"
            and (device or default_device(name)) == "cpu"
        ):
            chosen = choose_exact_cpu_engine(path, build, threads)
        else:
            reason = "auto" if backend == "auto" else "asked for by name"
            chosen = build(name), Selection(name, reason)
        extractor, selection = chosen
        extractor.selection = selection
        return (
            extractor.behind_bf16_gate(images, min_agreement) if precision == "bf16" else extractor
        )

    def behind_bf16_gate(
        self, calibration: str | Path | Sequence[ImageInput], min_agreement: float
    ) -> FeatureExtractor:
        """The bf16 engine of this (exact) extractor's artifact where it keeps `min_agreement` of
        this one's matches on the `calibration` images, else this extractor; `selection` says
        which and the measurement. `serve` calls it once its first requests have given it
        images. Only for extractors opened by `load` (the bf16 engine is opened the same way)."""
        if self._reopen is None:
            raise CleanDiftError("bf16 needs an artifact opened with FeatureExtractor.load")
        images = calibration_images(calibration)
        check_min_agreement(min_agreement)
        path, build = self._reopen
        extractor, selection = gate_bf16(path, (self, self.selection), build, images, min_agreement)
        extractor.selection = selection
        return extractor

    @classmethod
    def from_source(
        cls,
        source: str | Path | LoadedUNet | None = None,
        *,
        arch: str | None = None,
        random_init: bool = False,
        seed: int = 0,
        taps: Sequence[str] = (DEFAULT_TAP,),
        spec: ReferenceSpec | None = None,
        image_size: tuple[int, int] | None = None,
        resize: str = "squash",
        batch_size: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> FeatureExtractor:
        """The PyTorch backend straight from a model source (folder, .safetensors, a loaded
        UNet, or `arch` with `random_init`); `precision="bf16"` runs it under bf16 autocast.

        `spec` sets the taps, timestep, prompt and input contract (default: `taps`, the model's
        timestep, the empty prompt, uint8 images).
        """
        loaded = (
            source
            if isinstance(source, LoadedUNet)
            else resolve_source(source, arch=arch, random_init=random_init, seed=seed)
        )
        runner, manifest = build_reference(
            loaded, spec or ReferenceSpec(taps=validate_taps(taps)), device, precision
        )
        return cls(runner, manifest, image_size=image_size, resize=resize, batch_size=batch_size)

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`{tap: [B, C, h, w] float32}` for images (Pillow, uint8 HxWx3 arrays, or a float
        [B,3,H,W] tensor in [-1, 1]) or, for a --no-vae model, a latent batch."""
        return self.extract(images, encoder_hidden_states).taps

    def extract(
        self,
        images: ImageInput | Sequence[ImageInput],
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> Features:
        """Like calling the extractor, but also says where each image sits on the canvas."""
        if self.takes_images:
            prepared = prepare(images, self.image_size, self.resize)
            batch = to_model_input(prepared.pixels, self.manifest.input)
            placements = prepared.placements
        else:
            batch = check_latents(self.manifest, images)  # type: ignore[arg-type]
            size = (batch.shape[2], batch.shape[3])
            placements = [Placement(size, size)] * batch.shape[0]
        prompt = check_prompt(self.manifest, encoder_hidden_states, batch.shape[0])
        parts = [
            self._run_chunk(batch[start : start + self.batch_size], prompt, start)
            for start in range(0, batch.shape[0], self.batch_size)
        ]
        taps = {name: torch.cat([part[name] for part in parts]) for name in self.taps}
        _check_finite(taps)
        return Features(taps, placements)

    def _run_chunk(
        self, chunk: torch.Tensor, prompt: torch.Tensor | None, start: int
    ) -> dict[str, torch.Tensor]:
        count = chunk.shape[0]
        padded = _pad_batch(chunk, self.manifest.batch.min)
        inputs = {self.manifest.input.name: padded}
        if prompt is not None:
            inputs[PROMPT_INPUT] = _pad_batch(prompt[start : start + count], padded.shape[0])
        outputs = self.backend.run(inputs)
        return {name: outputs[name][:count] for name in self.taps}


def _pad_batch(batch: torch.Tensor, minimum: int) -> torch.Tensor:
    """Repeat the last item until the batch reaches the model's minimum batch size."""
    missing = minimum - batch.shape[0]
    if missing <= 0:
        return batch
    return torch.cat([batch, batch[-1:].expand(missing, *batch.shape[1:])])


def _check_finite(taps: dict[str, torch.Tensor]) -> None:
    for name, tensor in taps.items():
        if not torch.isfinite(tensor).all():
            raise CleanDiftError(
                f"the model produced NaN or infinite values in {name}: for an fp16 model, "
                "re-export with --calibration-images or use fp32"
            )


def _open_backend(
    name: str,
    path: Path,
    manifest: Manifest,
    device: str,
    threads: int | None,
    source: str | Path | LoadedUNet | None,
    cuda_graphs: bool = True,
) -> Backend:
    if name == "onnxruntime":
        if path.suffix != ".onnx":
            raise CleanDiftError(f"ONNX Runtime runs .onnx files, not {path.name}")
        from .onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, manifest, device, threads)
    if name in ("openvino", "openvino-bf16"):
        if path.suffix != ".onnx":
            raise CleanDiftError(f"OpenVINO runs .onnx files, not {path.name}")
        from .openvino_backend import OpenVINOBackend

        precision = "bf16" if name == "openvino-bf16" else "fp32"
        return OpenVINOBackend(path, manifest, device, threads, precision)
    if name == "tensorrt":
        if path.suffix == ".onnx":
            raise CleanDiftError(f"TensorRT runs built engines, not {path.name}: build one first")
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, manifest, device, cuda_graphs=cuda_graphs)
    precision = "bf16" if name == "torch-bf16" else "fp32"
    if is_dinov2(manifest.arch):
        from ..models.provenance import dino_reference_module

        dino = dino_reference_module(manifest, None if isinstance(source, LoadedUNet) else source)
        return TorchBackend(dino, dino.input_names, dino.taps, device, precision)
    if isinstance(source, LoadedUNet):
        check_same_checkpoint(source, manifest)
        loaded = source
    elif source is not None:
        loaded = resolve_source(source, arch=manifest.arch if manifest.arch != "custom" else None)
        check_same_checkpoint(loaded, manifest)
    else:
        loaded = source_of(manifest)
    runner, _ = build_reference(loaded, ReferenceSpec.like(manifest), device, precision)
    return runner
