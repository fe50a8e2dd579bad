"""`cleandift-deploy train --nproc-per-node N`: start PyTorch's own launcher (the machinery behind
`torchrun --standalone`) on this machine, N copies of `python -m cleandift_deploy <args>`.

The same job runs under plain torchrun, also across machines:

    torchrun --standalone --nproc-per-node 8 -m cleandift_deploy train ...
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id RUN -m cleandift_deploy train ...

The global batch is checked before any process starts. When a rank fails, torch's agent stops the
others at once and this launcher ends with one line naming the first failed rank and its error
(which the rank wrote into torchrun's error file, see `distributed.report_failure`).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import CleanDiftError
from .distributed import PEER_STOPPED, TIMEOUT_ENV, split_batch

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

MONITOR_INTERVAL_S = 0.2
"""How often the agent checks its workers: a failed rank stops the others within about this."""


class TrainingFailed(CleanDiftError):
    """A rank of a multi-process run failed (the message names it)."""


def check_launch(nproc: int, batch_size: int) -> None:
    """Refuse, before any process starts, a process count or global batch that cannot work."""
    if nproc < 1:
        raise CleanDiftError("--nproc-per-node must be at least 1")
    split_batch(batch_size, nproc)


def _quiet_agent() -> None:
    """torch's agent logs a page per failure; the launcher prints its own one line instead."""
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def launch_local(nproc: int, args: Sequence[str], timeout_s: float | None = None) -> None:
    """Run `python -m cleandift_deploy <args>` as `nproc` ranks on this machine (one thread
    each unless OMP_NUM_THREADS says otherwise); raise `TrainingFailed` naming the first rank
    that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if timeout_s is not None:
        os.environ[TIMEOUT_ENV] = str(timeout_s)
    _quiet_agent()
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=MONITOR_INTERVAL_S,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "cleandift_deploy", *args)
    except ChildFailedError as err:
        raise TrainingFailed(f"training stopped, {root_failure(err)}") from None


def _failure_line(rank: int, failure: ProcessFailure) -> str:
    """The one line a rank wrote into its error file, or its exit status when it wrote none."""
    message = failure.message  # the error file's "message": a dict once a rank wrote one
    if isinstance(message, dict):
        message = message.get("message", "")
    message = message if isinstance(message, str) else ""
    return (
        message
        if message.startswith("rank ")
        else f"rank {rank}: exited with status {failure.exitcode}"
    )


def root_failure(err: ChildFailedError) -> str:
    """The failure that stopped the job: the earliest one that is not a rank stopping because
    another failed (error files stamp whole seconds, so time alone cannot tell them apart)."""
    ranked = sorted(err.failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    lines = [_failure_line(rank, failure) for rank, failure in ranked]
    return next((line for line in lines if PEER_STOPPED not in line), lines[0])
