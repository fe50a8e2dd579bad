"""The Triton matching kernel compiled offline for A100 (sm80) and H100 (sm90), no GPU needed:
shared memory within each architecture's limit, 64-bit pointer offsets in the TTIR, no register
spills (fp16/bf16 on sm90 as required, and every shipped config on both). Compilation runs in a
subprocess with TRITON_INTERPRET unset (tests/conftest.py sets it for the interpreter tests).
The full table, both mutual modes, is benchmarks/bench_triton_compile.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cleandift_deploy.kernels.triton_offline import (
    SHARED_LIMIT,
    CompileReport,
    pointer_offset_widths,
    ptxas_usage,
    tensor_i32_products,
)

TTIR = """\
    %x_61 = tt.addptr %x_60, %x_59 : tensor<128x64x!tt.ptr<f16>>, tensor<128x64xi64> loc(#l)
    %y = tt.addptr %b, %off : tensor<64x64x!tt.ptr<f16>>, tensor<64x64xi32> loc(#l)
    %s = tt.addptr %p, %i : !tt.ptr<f32>, i32 loc(#l)
    %x_6 = arith.muli %x_4, %x_5 : tensor<128x1xi32> loc(#l)
    %x_7 = arith.muli %x_2, %x_3 : tensor<128x1xi64> loc(#l)
    %rows = arith.muli %pid, %c128_i32 : i32 loc(#l)
"""
PTXAS_LOG = """\
ptxas info    : Compiling entry function '_cosine_argmax_kernel' for 'sm_80'
ptxas info    : Function properties for _cosine_argmax_kernel
    8 bytes stack frame, 148 bytes spill stores, 140 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 400 bytes cmem[0]
"""


def test_ttir_and_ptxas_readers() -> None:
    assert pointer_offset_widths(TTIR) == ["i64", "i32", "i32"]
    assert tensor_i32_products(TTIR) == 1
    assert ptxas_usage(PTXAS_LOG) == (255, 148, 140)
    with pytest.raises(ValueError, match="no register report"):
        ptxas_usage("ptxas info : nothing")


def _start(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    command = [sys.executable, "-m", "cleandift_deploy.kernels.triton_offline", *args]
    pipe = subprocess.PIPE
    return subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True, env=env)


def _reports(process: subprocess.Popen[str]) -> list[CompileReport]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return [CompileReport(**json.loads(line)) for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def reports() -> list[CompileReport]:
    """Every shipped config with mutual columns (the larger variant): fp16 and bf16 on sm90,
    fp16 and fp32 on sm80 (bf16 tiles take the same shared memory as fp16); two processes."""
    hopper = _start("--arch", "90", "--dtype", "fp16", "bf16", "--columns", "yes")
    ampere = _start("--arch", "80", "--dtype", "fp16", "fp32", "--columns", "yes")
    return _reports(hopper) + _reports(ampere)


def test_every_config_was_compiled(reports: list[CompileReport]) -> None:
    from cleandift_deploy.kernels.triton_dense import FLOAT_SHAPES, HALF_SHAPES

    counts = {(r.arch, r.dtype): 0 for r in reports}
    for report in reports:
        counts[report.arch, report.dtype] += 1
    assert counts == {
        (90, "fp16"): len(HALF_SHAPES),
        (90, "bf16"): len(HALF_SHAPES),
        (80, "fp16"): len(HALF_SHAPES),
        (80, "fp32"): len(FLOAT_SHAPES),
    }


def test_shared_memory_fits_each_architecture(reports: list[CompileReport]) -> None:
    for report in reports:
        assert report.shared_limit == SHARED_LIMIT[report.arch]
        assert 0 < report.shared_bytes <= report.shared_limit, report


def test_pointer_offsets_are_64_bit(reports: list[CompileReport]) -> None:
    narrow = [r for r in reports if r.i32_pointer_offsets or r.i32_tensor_products]
    assert not narrow, narrow


def test_no_register_spills(reports: list[CompileReport]) -> None:
    spilled = [r for r in reports if r.spill_stores or r.spill_loads]
    assert not spilled, spilled
    assert all(0 < r.registers <= 255 for r in reports)
