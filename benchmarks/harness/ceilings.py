"""The machine's own ceilings, measured in the same run as the figures they are compared with:
fp32 and bf16 GEMM rates and memory bandwidth (a few seconds in all).

On a shared machine absolute seconds drift from run to run; "achieved / ceiling measured just
now" does much less, so every results file carries these and the index prints the ratios.
"""

from __future__ import annotations

from typing import Any

import torch

from .timing import Protocol, Timing, measure

GEMM_SIDE = 1536
"""Side of the square probe GEMMs: 7.2 GFLOP, about 0.05 s in fp32 on two modern cores and well
under a second where bf16 is emulated (no AVX512_BF16 or AMX: 10-30x slower than fp32)."""
COPY_MIB = 256
"""Size of the bandwidth probe's buffers: far beyond any cache, so the copy runs from DRAM."""
PROBE = Protocol(warmup=1, repeats=5, max_seconds=1.5)

CEILINGS = {
    "fp32_gemm": ("fp32_gemm_gflops", "GFLOP/s"),
    "bf16_gemm": ("bf16_gemm_gflops", "GFLOP/s"),
    "memory": ("memory_gbps", "GB/s"),
}
"""Ceiling kinds a figure can be compared with: key in the ceilings record and its unit."""


def gemm_rate(dtype: torch.dtype, side: int = GEMM_SIDE) -> tuple[float, Timing]:
    """GFLOP/s of a square matrix product in `dtype` (best timed run)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=generator).to(dtype)
    b = torch.randn(side, side, generator=generator).to(dtype)
    timing = measure(lambda: a @ b, PROBE)
    return 2 * side**3 / timing.minimum / 1e9, timing


def memory_bandwidth(mib: int = COPY_MIB) -> tuple[float, Timing]:
    """GB/s of a large tensor copy, counting the bytes read and written (best timed run)."""
    source = torch.ones(mib * 2**20 // 4)
    target = torch.empty_like(source)
    timing = measure(lambda: target.copy_(source), PROBE)
    return 2 * source.numel() * 4 / timing.minimum / 1e9, timing


def measure_ceilings() -> dict[str, Any]:
    """The three ceilings with the timings behind them and the thread count they used."""
    fp32, fp32_timing = gemm_rate(torch.float32)
    bf16, bf16_timing = gemm_rate(torch.bfloat16)
    memory, memory_timing = memory_bandwidth()
    return {
        "fp32_gemm_gflops": round(fp32, 1),
        "bf16_gemm_gflops": round(bf16, 1),
        "memory_gbps": round(memory, 2),
        "threads": torch.get_num_threads(),
        "probes": {
            "gemm": f"{GEMM_SIDE}^3 torch.matmul, best of up to {PROBE.repeats} after a warm-up",
            "memory": f"copy of {COPY_MIB} MiB fp32 (read + write bytes), best of up to "
            f"{PROBE.repeats}",
        },
        "timings": {
            "fp32_gemm": fp32_timing.to_dict(),
            "bf16_gemm": bf16_timing.to_dict(),
            "memory": memory_timing.to_dict(),
        },
    }


def ratio(figure_rate: float, kind: str, ceilings: dict[str, Any]) -> float | None:
    """Achieved rate over the machine's ceiling of `kind` (None when it was not measured)."""
    key, _ = CEILINGS[kind]
    ceiling = ceilings.get(key)
    return figure_rate / ceiling if ceiling else None
