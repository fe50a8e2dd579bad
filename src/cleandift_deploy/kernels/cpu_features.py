"""CPU capability detection used to pick a dense-matching path."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def has_amx_bf16() -> bool:
    """True when the CPU advertises AMX bf16 tiles (``amx_bf16`` in /proc/cpuinfo) and torch has
    oneDNN, the combination under which a bf16 GEMM runs several times faster than fp32."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "amx_bf16" in flags.split() and torch.backends.mkldnn.is_available()
