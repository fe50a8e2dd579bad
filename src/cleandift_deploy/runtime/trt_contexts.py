"""Execution contexts and CUDA graphs for the TensorRT backend: the bookkeeping, with no TensorRT
or CUDA in it, so it is unit-tested on machines without a GPU (tests/test_trt_contexts.py).

The rules it enforces, each from TensorRT's or PyTorch's documented constraints:

* One execution context per (lane, input shapes), each with its own captured CUDA graph. A graph
  captured on a context must not be replayed after that context was re-bound to other shapes
  (NVIDIA/TensorRT#3798), so contexts are never re-bound once captured.
* A lane is what one caller holds for a whole run: a dedicated CUDA stream, one scratch buffer
  shared by all its contexts (user-managed device memory: the lane's runs are serialised on its
  stream, so its contexts never execute at the same time), and at most `shapes_per_lane`
  contexts (least recently used evicted). At most `lanes` lanes exist: threads beyond that wait,
  so memory stays bounded however many threads call.
* Captures and context creation take a readers-writer lock exclusively; replays and eager runs
  take it shared. No other run of this backend launches work while a capture is under way.
* A capture that yields no graph (``CaptureInvalidated``, an expected outcome: see
  cuda_graphs.py, which captures through the CUDA runtime with no PyTorch pool) drops the
  context it used; the backend turns graph-less for good and runs eagerly, like trtexec. The
  lane keeps its stream.
* Nothing is allocated while work is being put on a lane's stream (``launching``): buffers come
  from the caller's stream, and the lane waits for it (``join``) before its next launch. So no
  block of PyTorch's allocator belongs to, or records a use on, a lane stream.
* A lane's stream lives as long as the lane, and a lane is torn down in one order only
  (``close_lane``): wait for its stream, destroy its graphs and drop its contexts, drop its
  scratch memory, then destroy the stream. Eviction likewise waits before it destroys.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import CleanDiftError
from .cuda_graphs import CaptureInvalidated

ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]
"""The input shapes a context is bound to: sorted (name, shape) pairs."""
ADDRESS_ALIGNMENT = 256
"""TensorRT requires every I/O tensor address to be 256-byte aligned."""


def shape_key(inputs: Mapping[str, torch.Tensor]) -> ShapeKey:
    """The key of the context that runs these inputs."""
    return tuple(sorted((name, tuple(tensor.shape)) for name, tensor in inputs.items()))


def is_aligned(address: int) -> bool:
    """Whether a device address meets TensorRT's 256-byte alignment."""
    return address % ADDRESS_ALIGNMENT == 0


def check(ok: bool, what: str) -> None:
    """Turn a TensorRT call's False into a one-line error (TensorRT logs the detail)."""
    if not ok:
        raise CleanDiftError(f"TensorRT refused to {what} (see the TensorRT log above)")


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers, so captures are not
    starved by a steady stream of replays."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Held while a run executes or replays."""
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held while a context is created or a graph captured."""
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writer and not self._readers)
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Graph(Protocol):
    """An instantiated CUDA graph (``cuda_graphs.RuntimeGraph``, or a fake in tests)."""

    def replay(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Slot:
    """One execution context bound to one set of input shapes, with its graph if captured."""

    context: Any
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    graph: Graph | None = None


@dataclass
class Lane:
    """What one caller holds during a run: a stream, a scratch buffer, contexts by shape.

    `release` destroys the stream (None for a stream someone else owns). A lane refers to
    nothing of its backend, so a finaliser can tear lanes down after the backend is gone.
    """

    index: int
    stream: Any
    memory: Any
    slots: OrderedDict[ShapeKey, Slot] = field(default_factory=OrderedDict)
    release: Callable[[], object] | None = None


def drop_slot(slot: Slot) -> None:
    """Destroy a slot's graph (its lane's stream must be idle); the context goes with the slot."""
    if slot.graph is not None:
        slot.graph.close()
        slot.graph = None


def close_lane(lane: Lane) -> None:
    """Tear a lane down in order: wait for its stream, destroy graphs and drop contexts, drop
    the scratch memory, and only then destroy the stream (once; later calls do nothing)."""
    if lane.stream is None:
        return
    lane.stream.synchronize()
    while lane.slots:
        drop_slot(lane.slots.popitem(last=False)[1])
    lane.memory = None
    release, lane.release, lane.stream = lane.release, None, None
    if release is not None:
        release()


def close_lanes(lanes: list[Lane]) -> None:
    """``close_lane`` for each lane (a backend's finaliser: never raises, it may run at exit)."""
    for lane in lanes:
        try:
            close_lane(lane)
        except Exception as exc:  # at interpreter exit CUDA may already be torn down
            warnings.warn(f"could not close a TensorRT lane: {exc}", RuntimeWarning, stacklevel=2)


class EngineOps(Protocol):
    """What the pool needs from an engine (``cuda_lanes.CudaLanes``, or a fake in tests)."""

    def new_lane(self, index: int) -> Lane:
        """A lane with a dedicated stream and a scratch buffer of the engine's size."""
        ...

    def new_context(self, lane: Lane) -> Any:
        """An execution context on the lane's scratch buffer (user-managed memory)."""
        ...

    def bind(
        self, context: Any, lane: Lane, inputs: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Set shapes and addresses for `inputs`; allocate, bind and return the outputs
        (called outside ``launching``: allocations belong to the caller's stream)."""
        ...

    def join(self, lane: Lane) -> None:
        """Order the lane's stream after the caller's current stream (before each launch)."""
        ...

    def launching(self, lane: Lane) -> AbstractContextManager[object]:
        """Make the lane's stream current for kernel launches (no allocation inside)."""
        ...

    def execute(self, context: Any, lane: Lane) -> None:
        """Enqueue one execution on the lane's stream."""
        ...

    def synchronize(self, lane: Lane) -> None:
        """Wait for the lane's stream."""
        ...

    def capture(self, context: Any, lane: Lane) -> Graph:
        """Capture one execution on the lane's stream; raise ``CaptureInvalidated`` if none."""
        ...


class ContextPool:
    """Lanes, their contexts and graphs, and the locking between them (see the module doc)."""

    def __init__(
        self, ops: EngineOps, *, lanes: int = 2, shapes_per_lane: int = 4, cuda_graphs: bool = True
    ) -> None:
        if lanes < 1 or shapes_per_lane < 1:
            raise CleanDiftError("lanes and shapes_per_lane must be at least 1")
        self.ops = ops
        self.max_lanes = lanes
        self.shapes_per_lane = shapes_per_lane
        self.cuda_graphs = cuda_graphs
        self.graph_failure: str | None = None
        self.closed = False
        self.lock = ReadWriteLock()
        self.all_lanes: list[Lane] = []
        """Every lane created (the list a backend's finaliser closes; it refers to no backend)."""
        self._free: list[Lane] = []
        self._created = 0
        self._lanes_cond = threading.Condition()

    @property
    def lanes(self) -> list[Lane]:
        """Every lane created so far (at most `max_lanes`)."""
        return list(self.all_lanes)

    @contextmanager
    def lane(self) -> Iterator[Lane]:
        """Hold a lane for one run: a free one, a new one while under the bound, else wait."""
        lane = self._take()
        try:
            yield lane
        finally:
            with self._lanes_cond:
                self._free.append(lane)
                self._lanes_cond.notify()

    def _take(self) -> Lane:
        if self.closed:
            raise CleanDiftError("this TensorRT backend was closed")
        with self._lanes_cond:
            self._lanes_cond.wait_for(lambda: self._free or self._created < self.max_lanes)
            if self._free:
                return self._free.pop()
            index = self._created
            self._created += 1
        try:
            with self.lock.exclusive():
                lane = self.ops.new_lane(index)
        except BaseException:
            with self._lanes_cond:
                self._created -= 1
                self._lanes_cond.notify()
            raise
        with self._lanes_cond:
            self.all_lanes.append(lane)
        return lane

    def close(self) -> None:
        """Tear every lane down in order (``close_lane``); call with no run in flight."""
        with self.lock.exclusive():
            self.closed = True
            close_lanes(self.all_lanes)

    def execute(
        self, lane: Lane, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], bool]:
        """Run `inputs` on the lane's context for their shapes: replay its graph (capturing it
        the first time), or run eagerly. Returns the outputs and whether they are the slot's
        own buffers, which the lane's next replay overwrites: read those (order the reads
        before the lane's next launch) before the lane is released."""
        key = shape_key(inputs)
        slot = self._slot(lane, key, inputs)
        if self.cuda_graphs and slot.graph is None:
            self._capture(lane, key, slot)
            slot = self._slot(lane, key, inputs)
        with self.lock.shared():
            if self.cuda_graphs and slot.graph is not None:
                self.ops.join(lane)
                with self.ops.launching(lane):
                    for name, tensor in inputs.items():
                        slot.inputs[name].copy_(tensor)
                slot.graph.replay()
                return slot.outputs, True
            outputs = self.ops.bind(slot.context, lane, inputs)
            self.ops.join(lane)
            self.ops.execute(slot.context, lane)
            return outputs, False

    def _slot(self, lane: Lane, key: ShapeKey, inputs: Mapping[str, torch.Tensor]) -> Slot:
        slot = lane.slots.get(key)
        if slot is not None:
            lane.slots.move_to_end(key)
            return slot
        with self.lock.exclusive():
            if len(lane.slots) >= self.shapes_per_lane:
                self.ops.synchronize(lane)  # the evicted graph and buffers may still be in use
                drop_slot(lane.slots.popitem(last=False)[1])
            slot = Slot(self.ops.new_context(lane))
            if self.cuda_graphs:
                slot.inputs = {name: tensor.clone() for name, tensor in inputs.items()}
                slot.outputs = self.ops.bind(slot.context, lane, slot.inputs)
                self.ops.join(lane)
                self.ops.execute(slot.context, lane)  # TensorRT finishes its set-up here
                self.ops.synchronize(lane)
            lane.slots[key] = slot
        return slot

    def _capture(self, lane: Lane, key: ShapeKey, slot: Slot) -> None:
        with self.lock.exclusive():
            if not self.cuda_graphs:
                return  # another thread's capture failed meanwhile
            try:
                slot.graph = self.ops.capture(slot.context, lane)
            except CaptureInvalidated as exc:
                self._give_up_graphs(lane, key, exc)

    def _give_up_graphs(self, lane: Lane, key: ShapeKey, exc: Exception) -> None:
        """Run eagerly from now on; drop the context the failed capture used."""
        self.cuda_graphs = False
        self.graph_failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        warnings.warn(
            f"CUDA graph capture failed ({self.graph_failure}); running TensorRT without graphs",
            RuntimeWarning,
            stacklevel=4,
        )
        self.ops.synchronize(lane)
        drop_slot(lane.slots.pop(key))
