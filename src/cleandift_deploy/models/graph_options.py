"""What an export should produce: the options of `export_onnx` and the `export` verb."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CleanDiftError
from .taps import DEFAULT_TAP

if TYPE_CHECKING:
    from .freeu import FreeU
    from .noise import NoiseSpec

PRECISIONS = ("fp32", "fp16")
EXTERNAL_DATA_THRESHOLD = 2_000_000_000
"""Models whose weights exceed this many bytes are saved with one external `.onnx.data` file
(protobuf cannot hold more than 2 GiB)."""


def check_common(precision: str, batch: tuple[int, int, int], opset: int) -> None:
    """One-line errors for a precision, batch range or opset that cannot work (every export)."""
    if precision not in PRECISIONS:
        raise CleanDiftError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    low, opt, high = batch
    if not 1 <= low <= opt <= high:
        raise CleanDiftError(f"batch range {low}:{opt}:{high} must satisfy 1 <= MIN <= OPT <= MAX")
    if opset < 14:
        raise CleanDiftError(f"opset {opset} is too old: use 14 or newer (17 default)")


@dataclass
class ExportOptions:
    """Options of one export; `None` fields take the model's defaults.

    `batch` is (min, opt, max); `size_range` is ((h_min, w_min), (h_max, w_max)) in image pixels,
    or None for a static `image_size`. `image_size` is also the optimisation (tracing) shape.
    """

    taps: tuple[str, ...] = (DEFAULT_TAP,)
    timestep: float | None = None
    prompt: str = ""
    prompt_input: bool = False
    vae: bool = True
    image_size: tuple[int | None, int | None] = (None, None)
    batch: tuple[int, int, int] = (1, 1, 1)
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None
    opset: int = 17
    precision: str = "fp32"
    force: bool = False
    calibration_images: Path | None = None
    random_init: bool = False
    check_agreement: bool = True
    """Measure ONNX Runtime vs PyTorch on fresh random inputs and record it in the manifest."""
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
    fp16_bound: float = 512.0
    """Calibrated activations above this magnitude keep their node in fp32 (ModelOpt's default)."""
    noise: NoiseSpec | None = None
    """Noisy (DIFT-style) features: timestep, ensemble, seed, latent mode; None: clean latents."""
    freeu: FreeU | None = None
    """FreeU factors applied in up blocks 0 and 1; None: off."""
    method: str | None = None
    """The catalog method whose recipe filled the defaults (`export --method`), recorded in the
    manifest's build record so servers and users can name what the graph computes."""

    def check(self) -> None:
        """One-line errors for option values that cannot work together."""
        check_common(self.precision, self.batch, self.opset)
        if self.calibration_images is not None and self.precision != "fp16":
            raise CleanDiftError("--calibration-images only applies to --precision fp16")
        if self.calibration_images is not None and not self.vae:
            raise CleanDiftError("--calibration-images needs the VAE in the graph (drop --no-vae)")
        if self.noise is not None:
            self.check_noise(self.noise)

    def check_noise(self, noise: NoiseSpec) -> None:
        """Noisy features need the VAE (posterior draws) and the noise's own timestep."""
        noise.check()
        if not self.vae:
            raise CleanDiftError("noisy features need the VAE in the graph: drop --no-vae")
        if self.timestep is not None and self.timestep != noise.timestep:
            raise CleanDiftError(
                f"--timestep {self.timestep:g} differs from --noise-timestep {noise.timestep}: "
                "the UNet runs at the noise's timestep, give one of them"
            )
        if noise.random and self.check_agreement:
            raise CleanDiftError(
                "random noise differs on every call, so agreement cannot be measured: "
                "pass --no-agreement (or use fixed noise)"
            )
