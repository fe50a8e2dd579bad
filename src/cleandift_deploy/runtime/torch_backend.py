"""The PyTorch backend: the very module the ONNX graph is traced from, run eagerly.

It is the reference every other backend is compared with. On a CPU it can also run under bf16
autocast, which on CPUs with AMX tile units is several times faster than fp32 (see
benchmarks/bench_runtime_backends.py for speed and agreement).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

import torch
from torch import nn

from ..errors import CleanDiftError

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend:
    """Runs a module taking the graph's inputs (in order) and returning taps in `taps` order."""

    def __init__(
        self,
        module: nn.Module,
        input_names: list[str],
        taps: tuple[str, ...],
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise CleanDiftError(
                f"unknown torch precision {precision!r}: use one of {', '.join(AUTOCAST_DTYPES)}"
            )
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise CleanDiftError("device cuda was asked for but torch sees no CUDA GPU")
        self.module = module.to(self.device).eval()
        self.input_names = input_names
        self.taps = taps
        self.precision = precision
        suffix = "" if precision == "fp32" else f"-{precision}"
        self.name = f"torch-{self.device.type}{suffix}"

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Taps for one batch, as float32 on the backend's device."""
        args = [inputs[name].to(self.device) for name in self.input_names]
        with torch.inference_mode(), self._autocast():
            outputs = self.module(*args)
        return {name: out.float() for name, out in zip(self.taps, outputs, strict=True)}
