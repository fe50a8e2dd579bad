"""Fused cosine nearest-neighbour kernel for the GPU (Triton).

Program (i, j) owns ``BLOCK_N`` rows of ``a`` and sweeps the j-th slice of ``b``'s rows in
``BLOCK_M``-column tiles (the slices give enough programs to fill the GPU): ``tl.dot``
accumulates raw dot products in float32, the epilogue multiplies by the two inverse norms
(float32, precomputed in one cheap pass) and folds the tile into the row maximum and argmax held
in registers, written once per slice. With ``COLUMNS`` set (mutual matching) each program also
writes its tiles' column maximum and argmax to a [row blocks, M] partial buffer. A small
deterministic second pass reduces the partials. Ties resolve to the first index everywhere (left
tie-break inside a tile, strictly greater across tiles, smallest index among equal partials),
like ``torch.argmax``.

Import this module only with CUDA tensors or with ``TRITON_INTERPRET=1`` set before triton is
first imported: without a GPU driver, triton refuses to launch anything.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .cosine import inverse_norms
from .types import MutualMatches, NearestNeighbours, mutual_from_argmax

GPU_BLOCK_N = 128
SPLIT_ALIGN = 256
INTERPRETER_BLOCKS = {"BLOCK_N": 32, "BLOCK_M": 32, "BLOCK_C": 32}


def interpreting() -> bool:
    """True when triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _cosine_argmax_kernel(
    a_ptr,
    b_ptr,
    inv_a_ptr,
    inv_b_ptr,
    row_val_ptr,
    row_idx_ptr,
    col_val_ptr,
    col_idx_ptr,
    N,
    M,
    C,
    stride_a,
    stride_b,
    cols_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    COLUMNS: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    inv_a = tl.load(inv_a_ptr + rows, mask=row_ok, other=0.0)
    best_val = tl.full([BLOCK_N], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    offs_c = tl.arange(0, BLOCK_C)
    m_end = tl.minimum(M, (split + 1) * cols_per_split)
    for m0 in range(split * cols_per_split, m_end, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)
        col_ok = cols < m_end
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + offs_c
            c_ok = cc < C
            x = tl.load(
                a_ptr + rows[:, None] * stride_a + cc[None, :],
                mask=row_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            y = tl.load(
                b_ptr + cols[None, :] * stride_b + cc[:, None],
                mask=col_ok[None, :] & c_ok[:, None],
                other=0.0,
            )
            acc = tl.dot(x, y, acc, input_precision="ieee") if IEEE else tl.dot(x, y, acc)
        inv_b = tl.load(inv_b_ptr + cols, mask=col_ok, other=0.0)
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
            tl.store(col_val_ptr + pid * M + cols, cval, mask=col_ok)
            tl.store(col_idx_ptr + pid * M + cols, pid * BLOCK_N + carg, mask=col_ok)
    tl.store(row_val_ptr + split * N + rows, best_val, mask=row_ok)
    tl.store(row_idx_ptr + split * N + rows, best_idx, mask=row_ok)


def _gpu_configs() -> list[triton.Config]:
    """Tile shapes that suit A100 (sm80) and H100 (sm90); BLOCK_N is fixed so the column
    partial buffer has one shape whichever config wins."""
    shapes = [(128, 32, 4, 4), (128, 64, 4, 8), (256, 64, 3, 8), (64, 64, 4, 4), (128, 32, 3, 8)]
    return [
        triton.Config(
            {"BLOCK_N": GPU_BLOCK_N, "BLOCK_M": m, "BLOCK_C": c}, num_stages=s, num_warps=w
        )
        for m, c, s, w in shapes
    ]


_autotuned = triton.autotune(configs=_gpu_configs(), key=["M", "C", "COLUMNS", "IEEE"])(
    _cosine_argmax_kernel
)


def _reduce_partials(val: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax over dim 0 of partial (value, index) pairs: highest value, then smallest index."""
    best = val.max(dim=0).values
    return best, torch.where(val == best, idx, torch.iinfo(idx.dtype).max).min(dim=0).values


def _column_slices(n_blocks: int, m: int, device: torch.device) -> int:
    """Rows of b per slice (a multiple of every BLOCK_M) so the GPU has ~4 programs per SM.

    The interpreter uses two small slices, so the tests cross slice borders too.
    """
    if interpreting():
        align = 2 * INTERPRETER_BLOCKS["BLOCK_M"]
        return triton.cdiv(triton.cdiv(m, 2), align) * align
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    slices = max(1, min(triton.cdiv(m, SPLIT_ALIGN), triton.cdiv(4 * sms, n_blocks)))
    return triton.cdiv(triton.cdiv(m, slices), SPLIT_ALIGN) * SPLIT_ALIGN


def triton_match_dense(
    a: torch.Tensor, b: torch.Tensor, *, mutual: bool = False
) -> NearestNeighbours | MutualMatches:
    """Top-1 cosine neighbours (or mutual neighbours) with the fused kernel.

    Under the interpreter bfloat16 is upcast to float32: the interpreter has no bfloat16
    arithmetic (its ``tl.dot`` would multiply bit patterns).
    """
    if interpreting() and torch.bfloat16 in (a.dtype, b.dtype):
        a, b = a.float(), b.float()
    if a.dtype != b.dtype:
        a, b = a.float(), b.float()
    a, b = a.contiguous(), b.contiguous()
    (n, c), m = a.shape, b.shape[0]
    block_n = INTERPRETER_BLOCKS["BLOCK_N"] if interpreting() else GPU_BLOCK_N
    n_blocks = triton.cdiv(n, block_n)
    per_split = _column_slices(n_blocks, m, a.device)
    splits = triton.cdiv(m, per_split)
    row_val = torch.empty((splits, n), device=a.device)
    row_idx = torch.empty((splits, n), device=a.device, dtype=torch.int32)
    col_val = torch.empty((n_blocks, m) if mutual else (1,), device=a.device)
    col_idx = torch.empty((n_blocks, m) if mutual else (1,), device=a.device, dtype=torch.int32)
    args = (a, b, inverse_norms(a), inverse_norms(b), row_val, row_idx, col_val, col_idx)
    flags = {"COLUMNS": mutual, "IEEE": a.dtype == torch.float32}
    grid = (n_blocks, splits)
    if interpreting():
        _cosine_argmax_kernel[grid](*args, n, m, c, c, c, per_split, **INTERPRETER_BLOCKS, **flags)
    else:
        _autotuned[grid](*args, n, m, c, c, c, per_split, **flags)
    best, first = _reduce_partials(row_val, row_idx)
    if not mutual:
        return NearestNeighbours(first.long()[:, None], best[:, None])
    return mutual_from_argmax(first.long(), best, _reduce_partials(col_val, col_idx)[1].long())
