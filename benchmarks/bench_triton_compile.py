"""Compile every autotune config of the Triton matching kernel for A100 (sm80) and H100 (sm90)
without a GPU and tabulate registers, spills, shared memory (against each architecture's limit)
and 32-bit pointer offsets: benchmarks/results/<machine-id>/triton_compile.{json,md}.

    python benchmarks/bench_triton_compile.py            # ~1-2 min on 2 cores; no GPU needed
    python benchmarks/bench_triton_compile.py --quick    # fp16 on sm80 only

Each (dtype, arch) runs `python -m cleandift_deploy.kernels.triton_offline` in a child process
with TRITON_INTERPRET unset (the interpreter cannot compile).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from harness.run import Benchmark
from harness.timing import Protocol, measure
from rich.progress import track

JOBS = [(dtype, arch) for dtype in ("fp16", "bf16", "fp32") for arch in (80, 90)]


def compile_reports(dtype: str, arch: int) -> list[dict[str, Any]]:
    """Every config of one dtype on one architecture, both mutual modes."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    args = ["--arch", str(arch), "--dtype", dtype, "--columns", "both"]
    command = [sys.executable, "-m", "cleandift_deploy.kernels.triton_offline", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line]


def report(bench: Benchmark, rows: list[dict[str, Any]]) -> None:
    """The table (one row per arch, dtype, mutual, config) and the counts as figures."""
    bench.table(
        "Every autotune config",
        [
            "arch",
            "dtype",
            "mutual",
            "config (BLOCK_M-BLOCK_C-stages-warps)",
            "registers",
            "spill stores / loads (B)",
            "shared (KB)",
            "limit (KB)",
            "i32 offsets",
        ],
        [
            [
                f"sm{r['arch']}",
                r["dtype"],
                r["columns"],
                r["config"],
                r["registers"],
                f"{r['spill_stores']} / {r['spill_loads']}",
                f"{r['shared_bytes'] / 1024:.0f}",
                f"{r['shared_limit'] / 1024:.0f}",
                f"{r['i32_pointer_offsets']} + {r['i32_tensor_products']}",
            ]
            for r in rows
        ],
    )
    spills = sum(1 for r in rows if r["spill_stores"] or r["spill_loads"])
    over = sum(1 for r in rows if r["shared_bytes"] > r["shared_limit"])
    bench.figure("compilations", len(rows), "configs", better="higher")
    bench.figure("with spills", spills, "configs")
    bench.figure("over shared memory", over, "configs")
    bench.note(
        "BLOCK_N = 128. Shared memory limit per block: sm80 163 KB, sm90 227 KB. `i32 offsets` "
        "counts `tt.addptr` with 32-bit offsets and int32 element-wise products in the TTIR "
        f"(both must be 0). {len(rows)} compilations: {spills} with spills, {over} over shared "
        "memory. Compiled with the triton version in the software record (its bundled ptxas)."
    )


def main() -> None:
    """Compile, then write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fp16 on sm80 only")
    args = parser.parse_args()
    jobs = JOBS[:1] if args.quick else JOBS
    with Benchmark(
        "triton_compile", "Triton matching kernel compiled offline", args.quick
    ) as bench:
        rows = []
        for dtype, arch in track(jobs, description="compiling"):
            timing = measure(
                lambda d=dtype, a=arch: rows.extend(compile_reports(d, a)),
                Protocol(warmup=0, repeats=1),
            )
            bench.timing_figure(f"compile {dtype} sm{arch}", timing)
        report(bench, rows)
        bench.results = {"rows": rows}


if __name__ == "__main__":
    main()
