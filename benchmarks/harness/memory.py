"""The one way benchmarks read peak memory.

In-process cases use the package's sampler (`cleandift_deploy.runtime.bench.peak_memory`, which
`cleandift-deploy bench` uses too: resident set size sampled every 5 ms, or the CUDA allocator's
peak). A case run in a fresh child process reports its lifetime peak (`process_peak_gib`, the
kernel's high-water mark), which is the figure for "this step needs N GiB".
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import torch

from cleandift_deploy.runtime.bench import peak_memory

GIB = 2**30
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
"""ru_maxrss is in bytes on macOS and KiB on Linux."""


@contextmanager
def sampled_peak_gib(device: str = "cpu") -> Iterator[Callable[[], float]]:
    """Yield a function returning the peak memory (GiB) seen since the block started."""
    with peak_memory(torch.device(device)) as peak_mb:
        yield lambda: peak_mb() * 2**20 / GIB


def process_peak_gib() -> float:
    """This process's peak resident set size since it started (GiB): the kernel's VmHWM, which
    starts afresh at exec. (ru_maxrss does not on Linux: a child started by a parent that once
    held 2 GB reports at least 2 GB.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT / GIB


def children_peak_gib() -> float:
    """The largest peak resident set size of any waited-for child process (GiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * _MAXRSS_UNIT / GIB


def resident_gib() -> float:
    """This process's resident set size now (GiB), from /proc (0 where it has none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * resource.getpagesize() / GIB


def reset_peak() -> None:
    """Start the kernel's high-water mark (VmHWM) afresh from the current resident set, so that
    `process_peak_gib` then reports the peak of what follows (Linux; a no-op elsewhere)."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
