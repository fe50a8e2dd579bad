"""What machine a measurement was taken on: a speed figure belongs to its CPU or GPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

CPU_FEATURES = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")
"""Flags that decide which fast paths a CPU has, strongest first."""


def cpu_description() -> str:
    """Model name, logical cores and the matrix/vector features that matter here."""
    name = platform.processor() or platform.machine()
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    features = [f for f in CPU_FEATURES if f in flags] or ["no AVX2"]
    if "amx_bf16" not in flags:
        features.append("no AMX")
    return f"{name}, {os.cpu_count()} logical cores, {', '.join(features)}"


def device_description(device: str) -> str:
    """The GPU's name and compute capability for CUDA devices, else the CPU's description."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} (sm{major}{minor})"
    return cpu_description()
