"""CPU capability detection used to pick a dense-matching path.

The exact bf16 prefilter (``dense_prefilter``) pays off where a bf16 GEMM runs meaningfully faster
than an fp32 one: on CPUs with AMX tiles (several times faster) and on CPUs with AVX512_BF16 (AMD
EPYC: 390 vs 157 GFLOP/s). The flags say whether the hardware can; a one-time measurement says
whether this process actually gets the speed (oneDNN may be capped, e.g. ``ONEDNN_MAX_CPU_ISA``).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
BF16_GEMM_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (as in /proc/cpuinfo) of the instruction sets that give oneDNN a fast bf16 GEMM."""
ISA_CAPS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)
"""`ONEDNN_MAX_CPU_ISA` values that stop oneDNN from using bf16 instructions (bf16 is then
emulated, 10-30x slower than fp32)."""
MIN_BF16_SPEEDUP = 1.3
"""bf16 over fp32 GEMM speed above which the prefilter wins: it also rescores candidates in fp32
(AMD EPYC with AVX512_BF16: a 2.5x faster GEMM gave a 1.5x faster dense match; AMX: more). The
probe measures 1.5-3x on that EPYC while other jobs run, about 1 where bf16 has no hardware."""
PROBE_SHAPE = (512, 1280, 1024)
"""(rows, channels, columns) of the probe GEMM: dense matching's channels, about 10 ms in fp32
(smaller probes are dominated by fixed costs and understate bf16's lead)."""


def cpu_flags() -> frozenset[str]:
    """The flags line of /proc/cpuinfo (empty where it cannot be read, e.g. not Linux)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.split())


@functools.cache
def has_bf16_gemm_isa() -> bool:
    """True when the CPU advertises AMX-bf16 or AVX512_BF16, torch has oneDNN, and oneDNN is not
    capped below them (`ONEDNN_MAX_CPU_ISA`, or its old name `DNNL_MAX_CPU_ISA`)."""
    has_flag = any(flag in cpu_flags() for flag in BF16_GEMM_FLAGS)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL"))
    capped = cap.strip().upper() in ISA_CAPS_WITHOUT_BF16
    return has_flag and not capped and torch.backends.mkldnn.is_available()


def _seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


@functools.cache
def bf16_gemm_speedup() -> float:
    """How many times faster a bf16 GEMM runs than an fp32 one in this process, measured once
    (after a warm-up, the best of three runs each, interleaved so that a busy machine slows both
    alike): about 0.1 s where bf16 has hardware; where it is emulated (tens of times slower)
    several seconds, which is why `prefers_bf16_gemm` checks the flags first. Only the speed of
    dense matching depends on it: both paths are exact."""
    rows, channels, columns = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, channels, generator=generator)
    b = torch.randn(channels, columns, generator=generator)
    a16, b16 = a.bfloat16(), b.bfloat16()
    fp32, bf16 = [_seconds(a, b)], [_seconds(a16, b16)]  # warm-up: oneDNN builds its kernels
    for _ in range(3):
        fp32.append(_seconds(a, b))
        bf16.append(_seconds(a16, b16))
    return min(fp32[1:]) / min(bf16[1:])


def prefers_bf16_gemm() -> bool:
    """Whether bf16 GEMM is meaningfully faster than fp32 here: the CPU can (flags, oneDNN's
    cap) and this process measures at least ``MIN_BF16_SPEEDUP``."""
    return has_bf16_gemm_isa() and bf16_gemm_speedup() >= MIN_BF16_SPEEDUP
