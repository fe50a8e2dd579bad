"""Latency and throughput of an artifact's model call, the way trtexec and perf_analyzer report it.

Each case (batch size, image size) runs the backend on prepared random inputs: warm-up runs
first (the first run at a new shape grows memory arenas and picks kernels), then timed runs until
an iteration count or a time budget is reached. CUDA runs are timed with CUDA events, CPU runs
with a monotonic clock. Peak memory is sampled while the case runs (resident set size on the CPU,
the caching allocator's peak on CUDA). Preprocessing (decoding and resizing images) is not timed:
the figures are the model's, comparable across backends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CleanDiftError
from ..manifest import Manifest
from ..models.prompt import random_prompt_embedding
from .extractor import PROMPT_INPUT, FeatureExtractor
from .preprocess import to_model_input

PAGE_BYTES = 4096

DENORMALS = (
    "denormals flushed to zero while timing, the same for every engine "
    "(torch.set_flush_denormal(True) around each engine's timed runs)"
)
"""What the report says about denormal numbers: the same policy for every engine."""


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero in PyTorch while timing, then restore the default.

    Random weights (the tiny model's) produce denormal activations; x86 arithmetic on them is
    many times slower unless flushed (issue 25 measured PyTorch at 2.7 s per image unflushed and
    0.28 s flushed), and ONNX Runtime and OpenVINO kernels avoid that cost where PyTorch's default
    does not: without this the reference would be timed under another policy than the artifact."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@dataclass(frozen=True)
class BenchCase:
    """One measured shape: batch size and image height and width in pixels."""

    batch: int
    height: int
    width: int


@dataclass(frozen=True)
class BenchBudget:
    """How long to measure each case: warm-up runs, then iterations or seconds (whichever set)."""

    warmup: int = 3
    iterations: int | None = 20
    seconds: float | None = None


@dataclass
class BenchRow:
    """The figures of one case on one backend."""

    backend: str
    batch: int
    height: int
    width: int
    iterations: int
    latency_ms: dict[str, float]
    images_per_s: float
    peak_memory_mb: float
    flops: int | None = None
    tflops: float | None = None
    speedup_vs_reference: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able values."""
        return asdict(self)


def model_inputs(manifest: Manifest, case: BenchCase, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the model's own contract for `case` (never constant)."""
    generator = torch.Generator().manual_seed(seed)
    if manifest.input.name == "image":
        pixels = torch.randint(
            0, 256, (case.batch, 3, case.height, case.width), dtype=torch.uint8, generator=generator
        )
        inputs = {"image": to_model_input(pixels, manifest.input)}
    else:
        shape = (case.batch, 4, case.height // 8, case.width // 8)
        inputs = {manifest.input.name: torch.randn(shape, generator=generator)}
    if manifest.prompt_input:
        prompt = random_prompt_embedding(manifest.arch, seed)
        inputs[PROMPT_INPUT] = prompt.expand(case.batch, *prompt.shape[1:]).contiguous()
    return inputs


def check_case(manifest: Manifest, case: BenchCase) -> None:
    """Refuse a case outside the artifact's profile with what it accepts."""
    for what, value, allowed in (
        ("batch", case.batch, manifest.batch),
        ("height", case.height, manifest.height),
        ("width", case.width, manifest.width),
    ):
        if not allowed.contains(value):
            raise CleanDiftError(
                f"{what} {value} is outside the model's profile {allowed.min}..{allowed.max}: "
                "choose sizes the artifact was exported for"
            )


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Callable[[], float]]:
    """Yield a function that returns the peak memory (MB) seen since the block started."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: torch.cuda.max_memory_allocated(device) / 2**20
        return
    statm = Path("/proc/self/statm")
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], int(statm.read_text().split()[1]) * PAGE_BYTES)
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0] / 2**20
    finally:
        done.set()
        sampler.join()


def _timed_run(run: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call; CUDA work is timed with events on the current stream."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1000.0
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def latencies(run: Callable[[], object], device: torch.device, budget: BenchBudget) -> list[float]:
    """Seconds per call after the warm-up runs, until the budget is spent."""
    for _ in range(budget.warmup):
        run()
    found: list[float] = []
    started = time.perf_counter()
    while True:
        found.append(_timed_run(run, device))
        if budget.iterations is not None and len(found) >= budget.iterations:
            return found
        if budget.seconds is not None and time.perf_counter() - started >= budget.seconds:
            return found


def summarise(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99, mean and min in milliseconds."""
    values = np.asarray(seconds) * 1000.0
    percentiles = np.percentile(values, [50, 90, 99])
    return {
        "p50": float(percentiles[0]),
        "p90": float(percentiles[1]),
        "p99": float(percentiles[2]),
        "mean": float(values.mean()),
        "min": float(values.min()),
    }


def measure(
    extractor: FeatureExtractor, case: BenchCase, budget: BenchBudget, flops: int | None
) -> BenchRow:
    """Run one case on the extractor's backend and return its figures."""
    check_case(extractor.manifest, case)
    backend = extractor.backend
    inputs = {k: v.to(backend.device) for k, v in model_inputs(extractor.manifest, case).items()}
    with torch.inference_mode(), flush_denormals(), peak_memory(backend.device) as peak:
        seconds = latencies(lambda: backend.run(inputs), backend.device, budget)
        memory = peak()
    latency = summarise(seconds)
    median_s = latency["p50"] / 1000.0
    return BenchRow(
        backend=backend.name,
        batch=case.batch,
        height=case.height,
        width=case.width,
        iterations=len(seconds),
        latency_ms=latency,
        images_per_s=case.batch / median_s,
        peak_memory_mb=memory,
        flops=flops,
        tflops=None if flops is None else flops / median_s / 1e12,
    )
