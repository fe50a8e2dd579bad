"""Compile the Triton matching kernel for a GPU architecture on a machine without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 80, 32))`` runs the whole pipeline
(TTIR, TTGIR, LLVM IR, PTX, and ptxas from the triton wheel) with no driver. From each compiled
config this module reads what decides whether it can run well: registers, spill bytes (ptxas's
``-v`` log), shared memory against the architecture's per-block limit, and whether any pointer
offset in the TTIR is 32-bit or computed by an int32 element-wise product (either would wrap
past 2^31 elements).

Run it in a process where ``TRITON_INTERPRET`` is unset before triton is imported (the tests
start ``python -m cleandift_deploy.kernels.triton_offline``; the interpreter cannot compile).
Output: one JSON line per config.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import tempfile
from dataclasses import asdict, dataclass

SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
"""Largest dynamic shared memory one block may use (bytes): A100 163 KB, H100 227 KB."""
DTYPES = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
PTXAS_USAGE = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
TENSOR_I32_PRODUCT = re.compile(r"arith\.muli .*: tensor<[^>]*xi32>")
ADDPTR = re.compile(r"tt\.addptr .*: (?:tensor<[^>]*x)?!tt\.ptr<[^>]*>>?, (?:tensor<[^>]*x)?(i\d+)")


@dataclass(frozen=True)
class CompileReport:
    """What one (config, dtype, arch, mode) compiled to."""

    arch: int
    dtype: str
    columns: bool
    config: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    shared_limit: int
    i32_pointer_offsets: int
    i32_tensor_products: int
    seconds: float


def _signature(dtype: str) -> dict[str, str]:
    pointer = DTYPES[dtype]
    signature = {"a_ptr": pointer, "b_ptr": pointer}
    for name in ("inv_a_ptr", "inv_b_ptr", "row_val_ptr"):
        signature[name] = "*fp32"
    signature["row_idx_ptr"] = "*i32"
    signature["col_key_ptr"] = "*i64"
    for name in ("N", "M", "C", "stride_a", "stride_b", "cols_per_split", "N_BUCKET", "M_BUCKET"):
        signature[name] = "i32"
    for name in ("BLOCK_N", "BLOCK_M", "BLOCK_C", "COLUMNS", "PRECISION"):
        signature[name] = "constexpr"
    return signature


def _divisible(signature: dict[str, str]) -> dict[tuple[int, ...], list[list[object]]]:
    """The specialisation triton gives at run time to 16-byte aligned pointers and to integers
    divisible by 16 (C = 1280, its strides, the buckets): what makes loads vectorised."""
    aligned = {"a_ptr", "b_ptr", "inv_a_ptr", "inv_b_ptr", "C", "stride_a", "stride_b"}
    aligned |= {"cols_per_split", "N_BUCKET", "M_BUCKET"}
    return {
        (index,): [["tt.divisibility", 16]]
        for index, name in enumerate(signature)
        if name in aligned
    }


def pointer_offset_widths(ttir: str) -> list[str]:
    """The integer type of every ``tt.addptr`` offset in a TTIR listing ("i32", "i64")."""
    return [match.group(1) for match in ADDPTR.finditer(ttir)]


def tensor_i32_products(ttir: str) -> int:
    """How many element-wise int32 multiplications a TTIR listing has: an offset such as
    ``rows * stride`` computed in int32 wraps before any later widening can help."""
    return len(TENSOR_I32_PRODUCT.findall(ttir))


def ptxas_usage(log: str) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from ptxas's ``-v`` log."""
    registers = PTXAS_USAGE.search(log)
    spills = PTXAS_SPILLS.search(log)
    if registers is None or spills is None:
        raise ValueError(f"no register report in the ptxas log: {log[:200]!r}")
    return int(registers.group(1)), int(spills.group(1)), int(spills.group(2))


def compile_config(config: object, dtype: str, arch: int, columns: bool) -> CompileReport:
    """Compile one autotune config (a ``triton.Config``) for `arch` and report on it."""
    import time

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .triton_dense import _cosine_argmax_kernel

    if triton.knobs.runtime.interpret:
        raise RuntimeError("unset TRITON_INTERPRET before triton is imported to compile offline")
    assert isinstance(config, triton.Config)
    precision = "tf32x3" if dtype == "fp32" else "tf32"
    signature = _signature(dtype)
    constants = {**config.kwargs, "COLUMNS": columns, "PRECISION": precision}
    source = ASTSource(_cosine_argmax_kernel, signature, constants, _divisible(signature))
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    triton.knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    registers, stores, loads = ptxas_usage(log.getvalue())
    widths = pointer_offset_widths(compiled.asm["ttir"])
    if not widths:
        raise ValueError("no tt.addptr found in the TTIR: the offset check would prove nothing")
    return CompileReport(
        arch=arch,
        dtype=dtype,
        columns=columns,
        config=f"M{config.kwargs['BLOCK_M']}-C{config.kwargs['BLOCK_C']}"
        f"-s{config.num_stages}-w{config.num_warps}",
        registers=registers,
        spill_stores=stores,
        spill_loads=loads,
        shared_bytes=int(compiled.metadata.shared),
        shared_limit=SHARED_LIMIT[arch],
        i32_pointer_offsets=widths.count("i32"),
        i32_tensor_products=tensor_i32_products(compiled.asm["ttir"]),
        seconds=round(time.perf_counter() - started, 2),
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m cleandift_deploy.kernels.triton_offline --arch 80 90 --dtype fp16 ...``"""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=sorted(DTYPES))
    parser.add_argument("--columns", choices=("yes", "no", "both"), default="both")
    parser.add_argument("--configs", type=int, nargs="*", help="config indices (default all)")
    args = parser.parse_args(argv)
    import torch

    from .triton_dense import gpu_configs

    modes = {"yes": [True], "no": [False], "both": [False, True]}[args.columns]
    torch_dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    with tempfile.TemporaryDirectory() as cache:
        import triton

        triton.knobs.cache.dir = cache  # a fresh cache: ptxas runs, so its log is there to read
        for dtype in args.dtype:
            configs = gpu_configs(torch_dtypes[dtype])
            picked = args.configs if args.configs else range(len(configs))
            for arch in args.arch:
                for columns in modes:
                    for index in picked:
                        report = compile_config(configs[index], dtype, arch, columns)
                        print(json.dumps(asdict(report)), flush=True)


if __name__ == "__main__":
    main()
