"""The one timing protocol of the benchmarks: warm-up runs, timed repeats, min / median / spread,
and whether the machine was busy (its load average before and after).

A benchmark never writes its own timing loop: it calls `measure` (in-process work) or
`Timing.from_samples` (seconds its child processes measured, one per fresh process). The clock and
the load-average reader are parameters so that the protocol is tested on a fake clock.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Clock = Callable[[], float]
LoadReader = Callable[[], tuple[float, float, float]]

BUSY_LOAD = 0.5
"""One-minute load average (beyond the benchmark's own threads) above which a figure is marked as
measured on a busy machine: half a core of someone else's work changes 2-core timings visibly."""


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (zeros where the OS has none)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def is_busy(before: Sequence[float], after: Sequence[float], own_threads: int) -> bool:
    """Whether other work ran: load before we started, or load after beyond our own threads."""
    return before[0] >= BUSY_LOAD or after[0] - own_threads >= BUSY_LOAD


@dataclass(frozen=True)
class Protocol:
    """How a case is timed: `warmup` untimed runs (the first run at a shape grows arenas and picks
    kernels), then `repeats` timed runs, stopping early once `max_seconds` of timed runs have
    passed (at least one timed run always happens)."""

    warmup: int = 1
    repeats: int = 5
    max_seconds: float | None = None


@dataclass(frozen=True)
class Timing:
    """Seconds of the timed runs and their summary; the load average around them."""

    samples: tuple[float, ...]
    warmup: int
    load_before: tuple[float, ...] = (0.0, 0.0, 0.0)
    load_after: tuple[float, ...] = (0.0, 0.0, 0.0)
    busy: bool = False
    minimum: float = field(init=False)
    median: float = field(init=False)
    spread: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a timing needs at least one timed run")
        low, high = min(self.samples), max(self.samples)
        middle = statistics.median(self.samples)
        object.__setattr__(self, "minimum", low)
        object.__setattr__(self, "median", middle)
        object.__setattr__(self, "spread", (high - low) / middle if middle > 0 else 0.0)

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[float],
        warmup: int = 0,
        load_before: Sequence[float] | None = None,
        load_after: Sequence[float] | None = None,
        own_threads: int = 1,
    ) -> Timing:
        """Seconds measured elsewhere (child processes) under the same summary."""
        before = tuple(load_before) if load_before is not None else load_average()
        after = tuple(load_after) if load_after is not None else load_average()
        return cls(
            samples=tuple(float(s) for s in samples),
            warmup=warmup,
            load_before=before,
            load_after=after,
            busy=is_busy(before, after, own_threads),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (seconds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, found: dict[str, Any]) -> Timing:
        """A timing read back from a results file (`to_dict`'s output)."""
        return cls(
            samples=tuple(found["samples"]),
            warmup=int(found["warmup"]),
            load_before=tuple(found["load_before"]),
            load_after=tuple(found["load_after"]),
            busy=bool(found["busy"]),
        )


def measure(
    run: Callable[[], object],
    protocol: Protocol | None = None,
    clock: Clock = time.perf_counter,
    load: LoadReader = load_average,
    own_threads: int | None = None,
) -> Timing:
    """Time `run` with the protocol: warm-up, then repeats (or until `max_seconds`)."""
    protocol = protocol or Protocol()
    before = load()
    for _ in range(protocol.warmup):
        run()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max(protocol.repeats, 1):
        started = clock()
        run()
        samples.append(clock() - started)
        spent += samples[-1]
        if protocol.max_seconds is not None and spent >= protocol.max_seconds:
            break
    after = load()
    threads = own_threads if own_threads is not None else _torch_threads()
    return Timing(
        samples=tuple(samples),
        warmup=protocol.warmup,
        load_before=before,
        load_after=after,
        busy=is_busy(before, after, threads),
    )


def measure_interleaved(
    runs: dict[str, Callable[[], object]],
    protocol: Protocol | None = None,
    clock: Clock = time.perf_counter,
    load: LoadReader = load_average,
    own_threads: int | None = None,
) -> dict[str, Timing]:
    """The same protocol for several cases at once, repeats interleaved (A, B, C, A, B, C, ...)
    so that a noisy, shared machine slows every case alike and their ratios hold."""
    protocol = protocol or Protocol()
    before = load()
    for _ in range(protocol.warmup):
        for run in runs.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(protocol.repeats, 1)):
        for name, run in runs.items():
            started = clock()
            run()
            samples[name].append(clock() - started)
    after = load()
    busy = is_busy(before, after, own_threads if own_threads is not None else _torch_threads())
    return {
        name: Timing(tuple(found), protocol.warmup, before, after, busy)
        for name, found in samples.items()
    }


def _torch_threads() -> int:
    try:
        import torch
    except ImportError:
        return 1
    return torch.get_num_threads()
