"""The pieces every trainer needs to run as one of N processes (DDP), and to give the same result
whatever N is.

- `init()` / `teardown()` (or `session()`): join the process group torchrun or Ray Train set up
  (gloo on the CPU, NCCL on CUDA, one device per local rank); one process needs no group at all.
- `split_batch()`: the global batch over the ranks; an indivisible one is refused with the nearest
  valid values, before any work starts.
- `rank_positions()` / `RankSampler`: which samples of the global stream this rank reads. Global
  batch k is the same set of samples for every world size; each rank takes a contiguous slice.
- `sample_generator()`: every random draw that belongs to a sample (noise, timesteps, crops, flips)
  comes from a generator seeded by (seed, global sample index, step), never from a per-process
  stream, so 2 ranks x batch 2 and 1 rank x batch 4 draw the same numbers.
- `wrap()` / `freeze_except()`: DDP without `find_unused_parameters`: parameters that can never
  receive a gradient are frozen first. DDP averages gradients over ranks, so with equal local
  batches the loss is the mean over the global batch.
- `accumulate()`: gradient accumulation that syncs gradients only on the last micro-batch; the
  caller divides each micro-batch loss by the count and reads a fresh batch every time.
- `mean_over_ranks()`, `on_main()`: logged losses averaged over ranks; files written by rank 0
  only (atomically, with the project's `atomic` helpers), its failure raised on every rank.
- `report_failure()`: the one line a failing rank leaves behind (stderr and torchrun's error file),
  naming the rank and its error.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import CleanDiftError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600.0
"""How long a collective waits for a rank that stopped answering before every rank gives up."""
TIMEOUT_ENV = "CLEANDIFT_DIST_TIMEOUT_S"
CPU = torch.device("cpu")


class BatchSizeError(CleanDiftError):
    """A global batch that cannot be split evenly over the processes."""


class RankFailed(CleanDiftError):
    """Another rank failed; this one stops too."""


PEER_STOPPED = "stopped because another rank failed"
"""How a rank that stopped for another's failure says so (the launcher reports the other)."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = CPU

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process: gradients and losses are reduced over the group."""
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _ray_local_rank() -> int | None:
    """The local rank Ray Train gave this worker, or None outside a Ray Train worker."""
    if "ray" not in sys.modules:
        return None
    try:
        import ray.train

        return int(ray.train.get_context().get_local_rank())
    except Exception:  # not inside a Ray Train worker
        return None


def pick_device(name: str, local_rank: int, size: int) -> torch.device:
    """`auto`: CUDA when visible (device = local rank), else CPU; `cuda` under several ranks
    always means `cuda:<local rank>`, one device per process."""
    cuda = torch.cuda.is_available()
    if name.startswith("cuda") and not cuda:
        raise CleanDiftError("--device cuda was asked for but no CUDA GPU is visible: use cpu")
    if name == "auto":
        name = "cuda" if cuda else "cpu"
    if name.startswith("cuda") and (size > 1 or name == "cuda"):
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(name)


def timeout() -> timedelta:
    """The collective timeout: `CLEANDIFT_DIST_TIMEOUT_S` seconds, 600 by default."""
    return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))


def init(device: str = "auto") -> World:
    """Join the process group of this job (torchrun's environment or Ray Train's group) or, for
    a single process, none. gloo on the CPU, NCCL on CUDA."""
    if dist.is_available() and dist.is_initialized():  # Ray Train (or the caller) made it
        rank, size = dist.get_rank(), dist.get_world_size()
        local = _ray_local_rank()
        local = _env_int("LOCAL_RANK", rank) if local is None else local
        return World(rank, size, local, pick_device(device, local, size))
    rank, size, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    world = World(rank, size, local, pick_device(device, local, size))
    if size > 1:
        if world.device.type == "cuda":
            torch.cuda.set_device(world.device)
        backend = "nccl" if world.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timeout())
    return world


def teardown(world: World) -> None:
    """Leave the process group this module joined (a no-op for one process)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def failure_line(world: World, err: BaseException) -> str:
    """`rank R: <error>`: a toolkit error as its message, anything else with its type."""
    text = str(err) if isinstance(err, CleanDiftError) else f"{type(err).__name__}: {err}"
    lines = text.strip().splitlines() or [type(err).__name__]
    return f"rank {world.rank}: {lines[0]}"


def report_failure(world: World, err: BaseException) -> str:
    """Write the one-line failure of this rank into torchrun's error file (the launcher and
    torchrun's summary show it) and return it."""
    line = failure_line(world, err)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path and not os.path.exists(path):
        stamp = str(int(time.time()))
        data = {"message": {"message": line, "extraInfo": {"py_callstack": "", "timestamp": stamp}}}
        with contextlib.suppress(OSError), open(path, "w") as file:
            json.dump(data, file)
    return line


PEER_FAILURE_SIGNS = ("closed by peer", "Connection reset", "NCCL communicator was aborted")


def _peer_failed(err: BaseException) -> bool:
    """A collective that failed because another rank went away (not this rank's own error)."""
    dist_error = getattr(dist, "DistNetworkError", ())
    return isinstance(err, dist_error) or any(s in str(err) for s in PEER_FAILURE_SIGNS)


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[World]:
    """`init()`, then `teardown()` however the block ends. Under several ranks a failure leaves
    one line naming the rank: a toolkit error is re-raised as `rank R: message` (the CLI prints
    it, exit 2), anything else is printed as that line before it propagates."""
    world = init(device)
    try:
        yield world
    except Exception as err:
        if not world.distributed:
            raise
        if _peer_failed(err):
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            err = RankFailed(f"{PEER_STOPPED} ({first[:200]})")
        line = report_failure(world, err)
        if isinstance(err, CleanDiftError):
            raise CleanDiftError(line) from None
        print(line, file=sys.stderr, flush=True)
        raise
    finally:
        teardown(world)


def nearest_valid(batch: int, parts: int) -> tuple[int, ...]:
    """The multiples of `parts` closest to `batch` (one below, one above; at least `parts`)."""
    below = (batch // parts) * parts
    above = below + parts
    return tuple(v for v in (below, above) if v >= parts)


def split_batch(batch: int, world_size: int, what: str = "--batch-size") -> int:
    """The per-rank share of a global batch; refused with the nearest valid values when the
    processes cannot get equal shares (unequal shares would weight samples unequally)."""
    if batch < 1 or world_size < 1:
        raise BatchSizeError(f"{what} and the process count must be at least 1")
    if batch % world_size:
        valid = " or ".join(str(v) for v in nearest_valid(batch, world_size))
        raise BatchSizeError(
            f"{what} {batch} is the global batch and cannot be split evenly over "
            f"{world_size} processes: use {valid}"
        )
    return batch // world_size


def rank_positions(cursor: int, global_batch: int, world: World) -> range:
    """This rank's slice of the global batch that starts at stream position `cursor`."""
    local = split_batch(global_batch, world.size)
    start = cursor + world.rank * local
    return range(start, start + local)


def sample_seed(seed: int, index: int, step: int) -> int:
    """A 63-bit seed that depends on (seed, global sample index, step) only."""
    entropy = np.random.SeedSequence([seed, index, step]).generate_state(2, np.uint32)
    return (int(entropy[0]) << 31) ^ int(entropy[1])


def sample_generator(seed: int, index: int, step: int) -> torch.Generator:
    """A CPU generator for every draw of one sample at one step (draw on the CPU, then move:
    the same numbers on every device and in every process)."""
    return torch.Generator().manual_seed(sample_seed(seed, index, step))


def epoch_permutation(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch, a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)


class RankSampler(torch.utils.data.Sampler[int]):
    """A distributed sampler for epoch loops (DataLoader): every epoch is one permutation of
    (seed, epoch), padded by wrapping around to a whole number of global batches (as
    `DistributedSampler(drop_last=False)` pads; the first samples of the epoch are seen twice),
    cut into global batches, and each rank takes its contiguous slice of every global batch. So
    the global batches do not depend on the world size. Call `set_epoch` before each epoch."""

    def __init__(self, size: int, global_batch: int, world: World, seed: int = 0) -> None:
        self.size, self.global_batch, self.world, self.seed = size, global_batch, world, seed
        self.local = split_batch(global_batch, world.size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Which epoch's permutation the next iteration yields."""
        self.epoch = epoch

    @property
    def batches(self) -> int:
        """Global batches per epoch."""
        return -(-self.size // self.global_batch)

    def positions(self) -> list[int]:
        """This rank's global sample indices of the epoch (epoch * padded length + position):
        the `index` to seed `sample_generator` with."""
        padded = self.batches * self.global_batch
        return [
            self.epoch * padded + b * self.global_batch + self.world.rank * self.local + i
            for b in range(self.batches)
            for i in range(self.local)
        ]

    def __iter__(self) -> Iterator[int]:
        order = epoch_permutation(self.size, self.seed, self.epoch)
        padded = self.batches * self.global_batch
        for position in self.positions():
            yield int(order[(position - self.epoch * padded) % self.size])

    def __len__(self) -> int:
        return self.batches * self.local


def freeze_except(module: nn.Module, trainable: Sequence[nn.Parameter]) -> list[str]:
    """Set `requires_grad=False` on every parameter of `module` outside `trainable` (layers that
    never receive a gradient, e.g. the UNet after the deepest tap); return their names. DDP then
    needs no `find_unused_parameters`."""
    keep = {id(p) for p in trainable}
    frozen = []
    for name, parameter in module.named_parameters():
        if id(parameter) not in keep and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def wrap(module: nn.Module, world: World) -> nn.Module:
    """`module` under DDP (gradients averaged over ranks) when distributed, else unchanged. DDP
    broadcasts rank 0's parameters at construction, so every rank starts from the same weights;
    gradients are views into its all-reduce buckets (no extra gradient-sized copy)."""
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.device.index] if world.device.type == "cuda" else None
    # buffers are synced once at construction; constant afterwards, so not on every forward
    parameters = inspect.signature(DistributedDataParallel).parameters
    option = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    # gradients live in DDP's buckets instead of beside them: no second gradient-sized copy
    options: dict[str, Any] = {option: False, "gradient_as_bucket_view": True}
    return DistributedDataParallel(module, device_ids=device_ids, **options)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP wrapper (or the module itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def accumulate(
    model: nn.Module, micro_batches: int
) -> Iterator[contextlib.AbstractContextManager[Any]]:
    """One context per micro-batch: gradients are synchronised only in the last one (`no_sync`
    before). Divide each micro-batch loss by `micro_batches` and read a new batch every time."""
    for index in range(micro_batches):
        no_sync = getattr(model, "no_sync", None)
        last = index == micro_batches - 1
        yield contextlib.nullcontext() if last or no_sync is None else no_sync()


def mean_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of `values` over all ranks (a detached copy; one all-reduce)."""
    out = values.detach().clone()
    if world.distributed:
        moved = out.to(world.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        out = moved.to(values.device) / world.size
    return out


def barrier(world: World) -> None:
    """Wait for every rank (no-op alone)."""
    if world.distributed:
        dist.barrier()


def _all_ok(ok: bool, world: World) -> bool:
    flag = torch.tensor([0.0 if ok else 1.0], device=world.device)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return bool(flag.item() == 0)


def on_main(world: World, write: Callable[[], T]) -> T | None:
    """Run `write` on rank 0 only (checkpoints, plots, history); every rank waits for it, and when
    it fails every rank raises, so no rank trains on past a checkpoint that was not written."""
    if not world.distributed:
        return write()
    result: T | None = None
    error: BaseException | None = None
    if world.main:
        try:
            result = write()
        except Exception as err:
            error = err
    if not _all_ok(error is None, world):
        if error is not None:
            raise error
        raise RankFailed("rank 0 could not write the checkpoint; see its error")
    return result


def even_slice(items: Sequence[T], world: World) -> list[T]:
    """This rank's contiguous share of `items`, sizes differing by at most one (a short last
    batch of an epoch; a rank may get none). Pair with `global_sum` for exact global losses."""
    base, extra = divmod(len(items), world.size)
    start = world.rank * base + min(world.rank, extra)
    return list(items[start : start + base + (world.rank < extra)])


def global_sum(local: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of `local` over ranks, differentiable in this rank's own term only (the others
    enter as constants). Build a loss from such sums (e.g. a mean over all valid pixels of the
    global batch, or a variance), backpropagate, then `sum_gradients`: the result is the exact
    gradient of the global loss, however the batch was split."""
    if not world.distributed:
        return local
    total = mean_over_ranks(local.detach(), world) * world.size
    return local + (total.to(local) - local.detach())


def sum_gradients(parameters: Sequence[nn.Parameter], world: World) -> None:
    """Add up the gradients of `parameters` over ranks in one all-reduce (a rank that had no
    samples contributes zeros). For losses built with `global_sum`; DDP is the tool otherwise."""
    if not world.distributed:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(world.device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for parameter in parameters:
        count = parameter.numel()
        parameter.grad = flat[offset : offset + count].view_as(parameter).to(parameter).clone()
        offset += count
