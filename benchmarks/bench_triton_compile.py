"""Compile every autotune config of the Triton matching kernel for A100 (sm80) and H100 (sm90)
without a GPU and tabulate registers, spills, shared memory (against each architecture's limit)
and 32-bit pointer offsets: benchmarks/results/triton_compile.{json,md}.

    python benchmarks/bench_triton_compile.py     # ~1-2 min on 2 cores; no GPU needed

Each (dtype, arch) runs `python -m cleandift_deploy.kernels.triton_offline` in a child process
with TRITON_INTERPRET unset (the interpreter cannot compile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from harness.results import machine_folder
from rich.progress import track

from cleandift_deploy.runtime.machine import cpu_description

RESULTS = machine_folder()  # benchmarks/results/<machine-id>/
JOBS = [(dtype, arch) for dtype in ("fp16", "bf16", "fp32") for arch in (80, 90)]


def compile_reports(dtype: str, arch: int) -> list[dict[str, Any]]:
    """Every config of one dtype on one architecture, both mutual modes."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    args = ["--arch", str(arch), "--dtype", dtype, "--columns", "both"]
    command = [sys.executable, "-m", "cleandift_deploy.kernels.triton_offline", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line]


def cpu_name() -> str:
    """The CPU, from the one machine description (cleandift_deploy.runtime.machine)."""
    return cpu_description()


def markdown(rows: list[dict[str, Any]], versions: dict[str, str]) -> str:
    """The table, one row per (arch, dtype, mutual, config)."""
    lines = [
        "# Triton matching kernel compiled offline (no GPU)",
        "",
        "`python benchmarks/bench_triton_compile.py` on "
        f"{versions['cpu']}; triton {versions['triton']} (its bundled ptxas). "
        "BLOCK_N = 128. Shared memory limit per block: sm80 163 KB, sm90 227 KB. "
        "`i32 offsets` counts `tt.addptr` with 32-bit offsets and int32 element-wise products in "
        "the TTIR (both must be 0).",
        "",
        "| arch | dtype | mutual | config (BLOCK_M-BLOCK_C-stages-warps) | registers | "
        "spill stores / loads (B) | shared (KB) | limit (KB) | i32 offsets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| sm{r['arch']} | {r['dtype']} | {'yes' if r['columns'] else 'no'} | "
            f"{r['config']} | {r['registers']} | {r['spill_stores']} / {r['spill_loads']} | "
            f"{r['shared_bytes'] / 1024:.0f} | {r['shared_limit'] / 1024:.0f} | "
            f"{r['i32_pointer_offsets']} + {r['i32_tensor_products']} |"
        )
    spills = sum(1 for r in rows if r["spill_stores"] or r["spill_loads"])
    over = sum(1 for r in rows if r["shared_bytes"] > r["shared_limit"])
    lines += ["", f"{len(rows)} compilations: {spills} with spills, {over} over shared memory."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Compile, then write the JSON and the Markdown table."""
    import triton

    rows = []
    for dtype, arch in track(JOBS, description="compiling"):
        rows += compile_reports(dtype, arch)
    versions = {"triton": triton.__version__, "cpu": cpu_name()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "triton_compile.json").write_text(
        json.dumps({"versions": versions, "rows": rows}, indent=1)
    )
    (RESULTS / "triton_compile.md").write_text(markdown(rows, versions))
    print(markdown(rows, versions))


if __name__ == "__main__":
    main()
