"""Joining a Ray cluster, or starting a private local one, for `serve` and `extract --ray`.

Without an address a NEW local instance is started (`address="local"`), never an unrelated cluster
that happens to run on the machine; it has a small object store (only file names and single
images travel through it) and no dashboard, and it is shut down when the block ends. When Ray is
already initialised (a test, a notebook), that session is used and left running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

LOCAL_OBJECT_STORE_BYTES = 512 << 20


def local_cpus(workers: int) -> int:
    """CPUs a local instance declares: the machine's, and at least one per worker."""
    return max(os.cpu_count() or 1, workers)


@contextmanager
def ray_session(address: str | None, workers: int = 1) -> Iterator[bool]:
    """Ray for the duration of the block; yields whether it runs locally."""
    import ray

    if ray.is_initialized():
        yield not address
        return
    local = not address
    ray.init(
        address=address or "local",
        num_cpus=local_cpus(workers) if local else None,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES if local else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        yield local
    finally:
        ray.shutdown()
