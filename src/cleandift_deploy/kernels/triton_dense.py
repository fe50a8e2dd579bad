"""Fused cosine nearest-neighbour kernel for the GPU (Triton).

Program (i, j) owns ``BLOCK_N`` rows of ``a`` and sweeps the j-th slice of ``b``'s rows in
``BLOCK_M``-column tiles (the slices give enough programs to fill the GPU): ``tl.dot``
accumulates raw dot products in float32, the epilogue multiplies by the two inverse norms
(float32, precomputed in one cheap pass) and folds the tile into the row maximum and argmax held
in registers, written once per slice. With ``COLUMNS`` set (mutual matching) each program also
folds its tiles' column maximum and argmax into one int64 key per column of ``b`` with
``atomic_max``: the key orders by score, then by the smaller row index, so the result does not
depend on the order the programs run in, and the column buffer is [M] whatever N is (a
[row blocks, M] partial buffer grows as N x M: 180 GB for 1.7M x 1.7M). Row partials are
[slices, N], and slices are few (about 4 programs per SM). A small deterministic second pass
reduces the row partials. Ties resolve to the first index everywhere (left tie-break inside a
tile, strictly greater across tiles, smallest index among equal partials or keys), like
``torch.argmax``.

GPU details: every pointer offset is computed in int64 (``rows * stride`` wraps in int32 from
2^31 elements, e.g. 1.68M rows at C=1280); launches run under the inputs' device; float32 inputs
use ``tf32x3`` (three tensor-core TF32 products, float32-level accuracy; "ieee" has no tensor
cores and spilled in every config) with their own tile configs; the autotune key buckets the
sizes to powers of two, so a new M does not re-tune. Every config is compiled offline for sm80
and sm90 by ``triton_offline`` (tests and ``benchmarks/bench_triton_compile.py``).

Import this module only with CUDA tensors or with ``TRITON_INTERPRET=1`` set before triton is
first imported: without a GPU driver, triton refuses to launch anything.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .cosine import inverse_norms
from .types import MutualMatches, NearestNeighbours, mutual_from_argmax

GPU_BLOCK_N = 128
SPLIT_ALIGN = 256
INTERPRETER_BLOCKS = {"BLOCK_N": 32, "BLOCK_M": 32, "BLOCK_C": 32}


def _interpreted_at_import() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4; older ones read the variable
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET") == "1"


INTERPRETING = _interpreted_at_import()
"""Decided once, at import, exactly as ``triton.jit`` below decides: the kernel object is either
compiled or interpreted for the life of the process, whatever the environment says later."""

HALF_SHAPES = ((64, 64, 4, 4), (128, 32, 3, 8), (128, 64, 3, 8), (64, 64, 3, 4), (128, 64, 4, 8))
"""(BLOCK_M, BLOCK_C, num_stages, num_warps) for fp16/bf16; BLOCK_N is GPU_BLOCK_N. Checked
offline: no register spills on sm80 or sm90, shared memory within A100's 163 KB."""
FLOAT_SHAPES = ((64, 32, 3, 8), (64, 16, 4, 8), (128, 16, 3, 8))
"""(BLOCK_M, BLOCK_C, num_stages, num_warps) for float32 (tf32x3): smaller tiles, since the
three-product split keeps two copies of each operand in registers."""


def interpreting() -> bool:
    """True when triton runs kernels on the CPU through its interpreter (fixed at import)."""
    return INTERPRETING


@triton.jit
def _column_key(val, row):
    """An int64 whose signed order is (score, then the SMALLER row): the float's bits made
    monotonic (negative floats get their 31 low bits flipped; -0.0 counts as +0.0), shifted
    up, with ``KEY_LOW - row`` below."""
    bits = val.to(tl.int32, bitcast=True)
    bits = tl.where(bits == -2147483648, 0, bits)
    bits = tl.where(bits < 0, bits ^ 2147483647, bits)
    return (bits.to(tl.int64) << 32) | (4294967295 - row.to(tl.int64))


@triton.jit
def _cosine_argmax_kernel(
    a_ptr,
    b_ptr,
    inv_a_ptr,
    inv_b_ptr,
    row_val_ptr,
    row_idx_ptr,
    col_key_ptr,
    N,
    M,
    C,
    stride_a,
    stride_b,
    cols_per_split,
    N_BUCKET,
    M_BUCKET,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    COLUMNS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    inv_a = tl.load(inv_a_ptr + rows64, mask=row_ok, other=0.0)
    best_val = tl.full([BLOCK_N], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    offs_c = tl.arange(0, BLOCK_C)
    m_end = tl.minimum(M, (split + 1) * cols_per_split)
    for m0 in range(split * cols_per_split, m_end, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)
        col_ok = cols < m_end
        cols64 = cols.to(tl.int64)
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cc = (c0 + offs_c).to(tl.int64)
            c_ok = cc < C
            x = tl.load(
                a_ptr + (rows64[:, None] * stride_a + cc[None, :]),
                mask=row_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            y = tl.load(
                b_ptr + (cols64[None, :] * stride_b + cc[:, None]),
                mask=col_ok[None, :] & c_ok[:, None],
                other=0.0,
            )
            acc = tl.dot(x, y, acc, input_precision=PRECISION)
        inv_b = tl.load(inv_b_ptr + cols64, mask=col_ok, other=0.0)
        sim = acc * inv_a[:, None] * inv_b[None, :]
        sim = tl.where(col_ok[None, :], sim, float("-inf"))
        val, arg = tl.max(sim, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = val > best_val
        best_val = tl.where(better, val, best_val)
        best_idx = tl.where(better, m0 + arg, best_idx)
        if COLUMNS:
            csim = tl.where(row_ok[:, None], sim, float("-inf"))
            cval, carg = tl.max(
                csim, axis=0, return_indices=True, return_indices_tie_break_left=True
            )
            key = _column_key(cval, pid * BLOCK_N + carg)
            tl.atomic_max(col_key_ptr + cols64, key, mask=col_ok, sem="relaxed")
    out = split.to(tl.int64) * N + rows64
    tl.store(row_val_ptr + out, best_val, mask=row_ok)
    tl.store(row_idx_ptr + out, best_idx, mask=row_ok)


AUTOTUNE_ENV = "CLEANDIFT_TRITON_AUTOTUNE"
"""Set to ``first`` (before this module is imported) to tune over the first config of each
dtype only: the GPU check's tests then compile a handful of kernels instead of ~100."""


def gpu_configs(dtype: torch.dtype, *, first_only: bool = False) -> list[triton.Config]:
    """The autotune configs for one input dtype (all of them, or only the first); BLOCK_N is
    fixed so the row partial buffers have one shape whichever config wins."""
    shapes: tuple[tuple[int, int, int, int], ...] = (
        FLOAT_SHAPES if dtype == torch.float32 else HALF_SHAPES
    )
    shapes = shapes[:1] if first_only else shapes
    return [
        triton.Config(
            {"BLOCK_N": GPU_BLOCK_N, "BLOCK_M": m, "BLOCK_C": c}, num_stages=s, num_warps=w
        )
        for m, c, s, w in shapes
    ]


TUNING_KEY = ["N_BUCKET", "M_BUCKET", "C", "COLUMNS", "PRECISION"]
_FIRST_ONLY = os.environ.get(AUTOTUNE_ENV, "all") == "first"
_autotuned = {
    precision: triton.autotune(
        configs=gpu_configs(dtype, first_only=_FIRST_ONLY),
        key=TUNING_KEY,
        restore_value=["col_key_ptr"],
    )(_cosine_argmax_kernel)
    for precision, dtype in (("tf32x3", torch.float32), ("tf32", torch.float16))
}
"""One autotuner per config family: float32 tunes over FLOAT_SHAPES, fp16/bf16 over HALF_SHAPES
(triton adds the tensors' dtypes to the key, so fp16 and bf16 tune apart). ``restore_value``
puts the column keys back after every timing run: ``atomic_max`` accumulates, and the keys of
a losing config must not leak into the result."""


def size_bucket(n: int) -> int:
    """The autotune bucket of a size: the next power of two, at least 256 (a multiple of 16, so
    triton's integer specialisation is the same for every bucket)."""
    return max(256, 1 << max(0, n - 1).bit_length())


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: tf32x3 for float32 (float32-level accuracy on tensor cores),
    the default for 16-bit inputs, which the tensor cores take as they are."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


KEY_LOW = (1 << 32) - 1
"""The low half of a column key holds ``KEY_LOW - row``."""
KEY_EMPTY = -(1 << 63)
"""Initial column key, below every encoded score (the kernel visits every column)."""


def key_rows(keys: torch.Tensor) -> torch.Tensor:
    """The row index each column key encodes."""
    return KEY_LOW - (keys & KEY_LOW)


def column_key_reference(val: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """``_column_key`` in torch (float32 scores, integer rows), for tests."""
    bits = val.float().view(torch.int32).long()
    bits = torch.where(bits == -(1 << 31), 0, bits)
    bits = torch.where(bits < 0, bits ^ ((1 << 31) - 1), bits)
    return (bits << 32) | (KEY_LOW - row.long())


def _reduce_partials(val: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax over dim 0 of partial (value, index) pairs: highest value, then smallest index."""
    best = val.max(dim=0).values
    return best, torch.where(val == best, idx, torch.iinfo(idx.dtype).max).min(dim=0).values


def _column_slices(n_blocks: int, m: int, device: torch.device, block_m: int) -> int:
    """Rows of b per slice (a multiple of every BLOCK_M) so the GPU has ~4 programs per SM.

    The interpreter uses up to three slices of whole tile pairs, so the tests cross slice
    borders too.
    """
    if INTERPRETING:
        align = 2 * block_m
        return triton.cdiv(triton.cdiv(m, 3), align) * align
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return gpu_column_slices(n_blocks, m, sms)


def gpu_column_slices(n_blocks: int, m: int, sms: int) -> int:
    """Rows of b per slice on a GPU with `sms` multiprocessors: about 4 programs per SM, each
    slice a multiple of SPLIT_ALIGN rows."""
    slices = max(1, min(triton.cdiv(m, SPLIT_ALIGN), triton.cdiv(4 * sms, n_blocks)))
    return triton.cdiv(triton.cdiv(m, slices), SPLIT_ALIGN) * SPLIT_ALIGN


def _device_guard(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Triton launches on the CURRENT CUDA device, not the tensors' one: switch to theirs."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


@dataclass
class Launch:
    """One prepared kernel launch: its buffers and arguments (``run`` enqueues the kernel only;
    the benchmark times it apart from the set-up and the reductions around it)."""

    args: tuple[torch.Tensor, ...]
    sizes: tuple[int, ...]
    grid: tuple[int, int]
    mutual: bool
    precision: str
    tiles: dict[str, int]

    @property
    def row_val(self) -> torch.Tensor:
        """[slices, N] row maxima per slice of b."""
        return self.args[4]

    @property
    def row_idx(self) -> torch.Tensor:
        """[slices, N] their column indices."""
        return self.args[5]

    @property
    def col_key(self) -> torch.Tensor:
        """[M] column keys (mutual matching), else one unused element."""
        return self.args[6]

    def run(self) -> None:
        """Enqueue the kernel (the autotuned one on a GPU; tiles fixed under the interpreter)."""
        extra = {"COLUMNS": self.mutual, "PRECISION": self.precision}
        if INTERPRETING:
            _cosine_argmax_kernel[self.grid](*self.args, *self.sizes, **self.tiles, **extra)
        else:
            _autotuned[self.precision][self.grid](*self.args, *self.sizes, **extra)


def prepare(
    a: torch.Tensor, b: torch.Tensor, *, mutual: bool, blocks: dict[str, int] | None = None
) -> Launch:
    """Inverse norms (one pass each), partial buffers (bounded: [slices, N] and [M]) and the
    grid for contiguous inputs of one dtype; call under the inputs' device."""
    (n, c), m = a.shape, b.shape[0]
    tiles = {**INTERPRETER_BLOCKS, **(blocks or {})}
    block_n = tiles["BLOCK_N"] if INTERPRETING else GPU_BLOCK_N
    n_blocks = triton.cdiv(n, block_n)
    per_split = _column_slices(n_blocks, m, a.device, tiles["BLOCK_M"])
    splits = triton.cdiv(m, per_split)
    row_val = torch.empty((splits, n), device=a.device, dtype=torch.float32)
    row_idx = torch.empty((splits, n), device=a.device, dtype=torch.int32)
    col_key = torch.full((m if mutual else 1,), KEY_EMPTY, device=a.device, dtype=torch.int64)
    args = (a, b, inverse_norms(a), inverse_norms(b), row_val, row_idx, col_key)
    sizes = (n, m, c, c, c, per_split, size_bucket(n), size_bucket(m))
    return Launch(args, sizes, (n_blocks, splits), mutual, dot_precision(a.dtype), tiles)


def triton_match_dense(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    mutual: bool = False,
    blocks: dict[str, int] | None = None,
) -> NearestNeighbours | MutualMatches:
    """Top-1 cosine neighbours (or mutual neighbours) with the fused kernel.

    Under the interpreter bfloat16 is upcast to float32: the interpreter has no bfloat16
    arithmetic (its ``tl.dot`` would multiply bit patterns). ``blocks`` overrides the
    interpreter's tile sizes (tests use the GPU's BLOCK_N = 128 to cross the same borders).
    """
    if INTERPRETING and torch.bfloat16 in (a.dtype, b.dtype):
        a, b = a.float(), b.float()
    if a.dtype != b.dtype:
        a, b = a.float(), b.float()
    a, b = a.contiguous(), b.contiguous()
    with _device_guard(a.device):
        launch = prepare(a, b, mutual=mutual, blocks=blocks)
        launch.run()
        best, first = _reduce_partials(launch.row_val, launch.row_idx)
    if not mutual:
        return NearestNeighbours(first.long()[:, None], best[:, None])
    return mutual_from_argmax(first.long(), best, key_rows(launch.col_key))
