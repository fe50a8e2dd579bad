"""How many threads a model may use: this process's physical cores, shared out among workers.

ONNX Runtime and OpenVINO both run best with one thread per physical core (a second hardware
thread on the same core only competes for its vector units); several replicas or actors on one
machine share the cores out instead of each taking all of them.
"""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical cores available to this process: ONNX Runtime's best intra-op thread count.

    Uses psutil when installed (a test extra); otherwise the logical count, which is the same on
    machines without simultaneous multithreading.
    """
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    logical = logical or 1
    try:
        import psutil
    except ImportError:
        return logical
    return max(1, min(psutil.cpu_count(logical=False) or logical, logical))


def threads_per_worker(workers: int) -> int:
    """Threads for each of `workers` models running at once on this machine (at least one)."""
    return max(1, physical_cores() // max(1, workers))
