"""Benchmark the matching kernels against the procedures they replace, in one run.

Every case runs in a fresh child process that builds the same seeded inputs, measures the extra
peak memory of its first call (peak RSS minus RSS before the call; CUDA: max allocated) and the
median wall time over repeats. The parent compares outputs for agreement and writes
benchmarks/results/matching.{json,md,png}.

    python benchmarks/bench_matching.py            # full run (several minutes, ~10 GB peak)
    python benchmarks/bench_matching.py --quick    # small sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch
from harness.results import machine_folder

from cleandift_deploy.kernels import match_dense, match_points
from cleandift_deploy.kernels.api import choose_dense_impl
from cleandift_deploy.kernels.cpu_features import bf16_gemm_speedup, has_bf16_gemm_isa
from cleandift_deploy.kernels.reference import reference_match_dense, reference_match_points

RESULTS = machine_folder()  # benchmarks/results/<machine-id>/
SEED = 0


def point_inputs(spec: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """Seeded SD2.1-style maps [C, h, w] and K points in the source image."""
    g = torch.Generator().manual_seed(SEED)
    c, h, w = spec["map"]
    src = torch.randn(c, h, w, generator=g)
    tgt = torch.randn(c, h, w, generator=g)
    sh, sw = spec["src_size"]
    k = spec["k"]
    pts = torch.stack(
        [torch.rand(k, generator=g) * (sw - 1), torch.rand(k, generator=g) * (sh - 1)]
    )
    return src, tgt, pts.T.contiguous()


def dense_inputs(spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded [N, C] and [M, C] float32 rows."""
    g = torch.Generator().manual_seed(SEED)
    return torch.randn(spec["n"], spec["c"], generator=g), torch.randn(
        spec["n"], spec["c"], generator=g
    )


def faiss_knn(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss-cpu exact inner-product search on L2-normalised rows."""
    import faiss

    an = torch.nn.functional.normalize(a, dim=1).numpy()
    bn = torch.nn.functional.normalize(b, dim=1).numpy()
    dist, idx = faiss.knn(an, bn, 1, metric=faiss.METRIC_INNER_PRODUCT)
    return torch.from_numpy(idx).long(), torch.from_numpy(dist)


def make_call(spec: dict[str, Any]) -> Callable[[], tuple[torch.Tensor, ...]]:
    """The function to time for one (case, implementation) and what it returns to compare."""
    kind, impl = spec["kind"], spec["impl"]
    if kind == "points":
        src, tgt, pts = point_inputs(spec)
        fn = reference_match_points if impl == "reference" else match_points
        args = (src, tgt, pts, tuple(spec["src_size"]), tuple(spec["tgt_size"]))
        return lambda: tuple(fn(*args))
    if kind == "dense":
        a, b = dense_inputs(spec)
        if spec.get("device") == "cuda":
            a, b = a.cuda().half(), b.cuda().half()
        fns = {
            "ours": lambda: tuple(match_dense(a, b)),
            "prefilter": lambda: tuple(match_dense(a, b, impl="prefilter")),
            "blocked": lambda: tuple(match_dense(a, b, impl="blocked")),
            "reference": lambda: tuple(reference_match_dense(a, b)),
            "faiss": lambda: faiss_knn(a, b),
        }
        return fns[impl]
    if kind == "gemm":
        n, dtype = spec["n"], getattr(torch, spec["dtype"])
        x = torch.randn(n, n, device=spec.get("device", "cpu")).to(dtype)
        return lambda: (x @ x,)
    raise ValueError(f"unknown case kind {kind!r}")


def _sync(spec: dict[str, Any]) -> None:
    if spec.get("device") == "cuda":
        torch.cuda.synchronize()


def warm_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A tiny version of a case, run first so thread pools and lazy buffers exist before the
    memory baseline is taken."""
    small = {"map": [spec.get("map", [8])[0], 4, 4], "src_size": [16, 16], "tgt_size": [16, 16]}
    return {**spec, **small, "k": 2, "n": 64, "c": spec.get("c", 8)}


def auto_choice(spec: dict[str, Any]) -> dict[str, Any]:
    """For impl=auto dense cases: the path auto takes here, and the bf16/fp32 GEMM probe."""
    if spec["kind"] != "dense" or spec["impl"] != "ours":
        return {}
    a, b = dense_inputs(spec)
    if spec.get("device") == "cuda":
        a, b = a.cuda(), b.cuda()
    probe = bf16_gemm_speedup() if has_bf16_gemm_isa() else None
    return {"auto_impl": choose_dense_impl(a, b), "bf16_probe_speedup": probe}


def run_child(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run one case in this process: extra peak memory of the first call, median time."""
    choice = auto_choice(spec)
    make_call(warm_spec(spec))()
    call = make_call(spec)
    cuda = spec.get("device") == "cuda"
    rss0 = psutil.Process().memory_info().rss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    times = []
    for _ in range(spec["repeats"]):
        _sync(spec)
        t0 = time.perf_counter()
        result = call()
        _sync(spec)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    extra = (torch.cuda.max_memory_allocated() - mem0) if cuda else max(peak - rss0, 0)
    if spec.get("save"):
        torch.save([r.cpu() for r in result], out)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "extra_peak_bytes": extra,
        **choice,
    }


def run_case(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one case in a fresh child process and return its measurements."""
    out = workdir / f"{spec['name']}.{spec['impl']}.pt"
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec['name']}/{spec['impl']} failed:\n{proc.stderr[-3000:]}")
    return {**spec, **json.loads(proc.stdout.strip().splitlines()[-1]), "output": str(out)}


def points_agreement(ours: Path, ref: Path) -> dict[str, float]:
    """Share of identical matches, and score differences where they differ and overall."""
    (p1, s1), (p2, s2) = torch.load(ours), torch.load(ref)
    same = (p1 == p2).all(dim=1)
    diff = (s1 - s2).abs()
    return {
        "identical": float(same.float().mean()),
        "max_score_diff": float(diff.max()),
        "max_score_diff_where_different": float(diff[~same].max()) if (~same).any() else 0.0,
    }


def dense_agreement(ours: Path, ref: Path) -> dict[str, float]:
    """Share of identical nearest-neighbour indices and the largest score difference."""
    (i1, s1), (i2, s2) = torch.load(ours), torch.load(ref)
    return {
        "identical": float((i1.flatten() == i2.flatten()).float().mean()),
        "max_score_diff": float((s1.flatten().float() - s2.flatten().float()).abs().max()),
    }


def plan(quick: bool) -> list[dict[str, Any]]:
    """All cases of the run, in order."""
    c = 64 if quick else 1280
    cases: list[dict[str, Any]] = [
        {
            "kind": "gemm",
            "name": "sgemm",
            "n": 1024 if quick else 4096,
            "dtype": "float32",
            "impl": "torch",
            "repeats": 5,
        },
        {
            "kind": "gemm",
            "name": "bf16gemm",
            "n": 1024 if quick else 4096,
            "dtype": "bfloat16",
            "impl": "torch",
            "repeats": 5,
        },
    ]
    for tgt_size in [(96, 96)] if quick else [(768, 768), (500, 375)]:
        for k in (1, 1000):
            base = {
                "kind": "points",
                "name": f"points_{tgt_size[0]}x{tgt_size[1]}_K{k}",
                "map": [c, 12, 12] if quick else [c, 48, 48],
                "src_size": [96, 96] if quick else [768, 768],
                "tgt_size": list(tgt_size),
                "k": k,
                "save": True,
            }
            cases += [
                {**base, "impl": "ours", "repeats": 5},
                {**base, "impl": "reference", "repeats": 3},
            ]
    for n in [256, 1024] if quick else [2304, 9216]:
        for ch in [64] if quick else [1280, 640]:
            base = {"kind": "dense", "name": f"dense_N{n}_C{ch}", "n": n, "c": ch, "save": True}
            cases += [
                {**base, "impl": impl, "repeats": 5}
                for impl in ("ours", "prefilter", "blocked", "reference", "faiss")
            ]
    if torch.cuda.is_available():
        cases.append(
            {
                "kind": "gemm",
                "name": "hgemm_cuda",
                "n": 8192,
                "dtype": "float16",
                "impl": "torch",
                "repeats": 10,
                "device": "cuda",
            }
        )
        base = {
            "kind": "dense",
            "name": "dense_cuda_N9216_C1280",
            "n": 9216,
            "c": 1280,
            "device": "cuda",
            "save": True,
        }
        cases += [{**base, "impl": impl, "repeats": 10} for impl in ("ours", "reference")]
    return cases


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Pair up implementations per case: ratios, rates, agreement, target checks."""
    by = {(r["name"], r["impl"]): r for r in results}
    sgemm = by[("sgemm", "torch")]
    sgemm_rate = 2 * sgemm["n"] ** 3 / sgemm["median_s"] / 1e9
    rows: list[dict[str, Any]] = []
    for name in dict.fromkeys(r["name"] for r in results if r["kind"] != "gemm"):
        ours, ref = by[(name, "ours")], by[(name, "reference")]
        row: dict[str, Any] = {
            "case": name,
            "ours_s": ours["median_s"],
            "reference_s": ref["median_s"],
            "speedup_vs_reference": ref["median_s"] / ours["median_s"],
            "ours_extra_mb": ours["extra_peak_bytes"] / 2**20,
            "reference_extra_mb": ref["extra_peak_bytes"] / 2**20,
        }
        row["memory_ratio"] = ref["extra_peak_bytes"] / max(ours["extra_peak_bytes"], 1)
        if ours["kind"] == "points":
            row["agreement"] = points_agreement(Path(ours["output"]), Path(ref["output"]))
        else:
            row["agreement"] = dense_agreement(Path(ours["output"]), Path(ref["output"]))
            flops = 2 * ours["n"] ** 2 * ours["c"]
            row["ours_gflops"] = flops / ours["median_s"] / 1e9
            row["auto_impl"] = ours["auto_impl"]
            row["bf16_probe_speedup"] = ours["bf16_probe_speedup"]
            if (name, "faiss") in by:
                faiss = by[(name, "faiss")]
                row["faiss_s"] = faiss["median_s"]
                row["speedup_vs_faiss"] = faiss["median_s"] / ours["median_s"]
                row["faiss_agreement"] = dense_agreement(
                    Path(ours["output"]), Path(faiss["output"])
                )
                row["fraction_of_sgemm"] = row["ours_gflops"] / sgemm_rate
            for impl in ("prefilter", "blocked"):
                if (name, impl) in by:
                    row[f"{impl}_s"] = by[(name, impl)]["median_s"]
                    row[f"{impl}_extra_mb"] = by[(name, impl)]["extra_peak_bytes"] / 2**20
        rows.append(row)
    summary = {"sgemm_gflops": sgemm_rate, "rows": rows, "torch_threads": torch.get_num_threads()}
    if ("bf16gemm", "torch") in by:
        g = by[("bf16gemm", "torch")]
        summary["bf16gemm_gflops"] = 2 * g["n"] ** 3 / g["median_s"] / 1e9
    if ("hgemm_cuda", "torch") in by:
        h = by[("hgemm_cuda", "torch")]
        summary["hgemm_tflops"] = 2 * h["n"] ** 3 / h["median_s"] / 1e12
    summary["targets"] = check_targets(summary)
    return summary


def check_targets(summary: dict[str, Any]) -> dict[str, bool]:
    """The issue's speed and memory targets, evaluated on this run."""
    rows = {r["case"]: r for r in summary["rows"]}
    out: dict[str, bool] = {}
    q = rows.get("points_768x768_K1000")
    if q:
        out["points_768_K1000_speedup_ge_50"] = q["speedup_vs_reference"] >= 50
        out["points_768_K1000_memory_ratio_ge_100"] = q["memory_ratio"] >= 100
        out["points_768_K1000_identical_ge_99.9pct"] = q["agreement"]["identical"] >= 0.999
    d = rows.get("dense_N9216_C1280")
    if d:
        out["dense_9216_speedup_vs_reference_ge_1.2"] = d["speedup_vs_reference"] >= 1.2
        out["dense_9216_faster_than_faiss"] = d["speedup_vs_faiss"] > 1
        out["dense_9216_ge_80pct_sgemm"] = d["fraction_of_sgemm"] >= 0.8
        out["dense_9216_extra_memory_le_5pct"] = (
            d["ours_extra_mb"] <= 0.05 * d["reference_extra_mb"]
        )
    g = rows.get("dense_cuda_N9216_C1280")
    if g and "hgemm_tflops" in summary:
        out["gpu_ge_60pct_hgemm"] = g["ours_gflops"] / 1e3 >= 0.6 * summary["hgemm_tflops"]
        out["gpu_speedup_vs_reference_ge_2"] = g["speedup_vs_reference"] >= 2
    return out


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    """A short table of the run."""
    lines = [
        "# Matching benchmark",
        "",
        f"CPU sgemm (4096^3, {summary['torch_threads']} threads): "
        f"{summary['sgemm_gflops']:.0f} GFLOP/s. Times are medians; memory is the extra peak RSS "
        "of one call (after a small warm-up call).",
        "",
        "| case | ours | reference | faiss | vs ref | vs faiss | ours mem | ref mem | agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        faiss = f"{r['faiss_s'] * 1e3:.0f} ms" if "faiss_s" in r else "-"
        vs_faiss = f"{r['speedup_vs_faiss']:.2f}x" if "speedup_vs_faiss" in r else "-"
        a = r["agreement"]
        agree = f"{100 * a['identical']:.2f}% identical, max dscore {a['max_score_diff']:.1e}"
        lines.append(
            f"| {r['case']} | {r['ours_s'] * 1e3:.1f} ms | {r['reference_s'] * 1e3:.0f} ms "
            f"| {faiss} "
            f"| {r['speedup_vs_reference']:.1f}x | {vs_faiss} | {r['ours_extra_mb']:.1f} MB "
            f"| {r['reference_extra_mb']:.0f} MB | {agree} |"
        )
    dense = [r for r in summary["rows"] if "fraction_of_sgemm" in r]
    if "bf16gemm_gflops" in summary:
        lines += ["", f"CPU bf16 GEMM (4096^3): {summary['bf16gemm_gflops']:.0f} GFLOP/s."]
    paths = [r for r in dense if "prefilter_s" in r]
    if paths:
        lines += [
            "",
            'Dense CPU paths ("ours" is impl=auto: the bf16 prefilter from 4096x4096 pairs '
            "where bf16 GEMM is faster than fp32 (AMX or AVX512_BF16, and a one-time probe), "
            "else the blocked path): "
            + ", ".join(
                f"{r['case']} auto = {r['auto_impl']}"
                + (
                    f" (probe: bf16 {r['bf16_probe_speedup']:.1f}x fp32)"
                    if r["bf16_probe_speedup"]
                    else ""
                )
                + f"; prefilter {r['prefilter_s'] * 1e3:.0f} ms "
                f"({r['prefilter_extra_mb']:.1f} MB), blocked fp32 {r['blocked_s'] * 1e3:.0f} ms "
                f"({r['blocked_extra_mb']:.1f} MB)"
                for r in paths
            ),
        ]
    if dense:
        lines += [
            "",
            "Dense rate: "
            + ", ".join(
                f"{r['case']} {r['ours_gflops']:.0f} GFLOP/s "
                f"({100 * r['fraction_of_sgemm']:.0f}% of sgemm)"
                for r in dense
            ),
        ]
    lines += [
        "",
        "Targets: "
        + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in summary["targets"].items()),
    ]
    if "hgemm_tflops" not in summary:
        lines += ["", "GPU: not measured (no CUDA device in this run)."]
    path.write_text("\n".join(lines) + "\n")


def write_plot(summary: dict[str, Any], path: Path) -> None:
    """Bar chart of times (log scale), ours against the references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.bar([i - 0.27 for i in x], [r["ours_s"] for r in rows], 0.27, label="ours")
    ax.bar(list(x), [r["reference_s"] for r in rows], 0.27, label="torch reference")
    ax.bar([i + 0.27 for i in x], [r.get("faiss_s", 0) for r in rows], 0.27, label="faiss-cpu")
    ax.set_yscale("log")
    ax.set_ylabel("median time (s)")
    ax.set_xticks(list(x), [r["case"] for r in rows], rotation=25, ha="right", fontsize=8)
    ax.legend()
    ax.set_title("Cosine matching: fused/blocked kernels vs references")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child), Path(args.out))))
        return
    from rich.progress import Progress

    cases = plan(args.quick)
    results = []
    with tempfile.TemporaryDirectory() as tmp, Progress() as progress:
        task = progress.add_task("matching benchmark", total=len(cases))
        for spec in cases:
            progress.update(task, description=f"{spec['name']} / {spec['impl']}")
            results.append(run_case(spec, Path(tmp)))
            progress.advance(task)
        summary = summarise(results)
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.pop("output")
    (RESULTS / f"matching{suffix}.json").write_text(
        json.dumps({"summary": summary, "runs": results}, indent=2)
    )
    write_markdown(summary, RESULTS / f"matching{suffix}.md")
    write_plot(summary, RESULTS / f"matching{suffix}.png")
    print((RESULTS / f"matching{suffix}.md").read_text())


if __name__ == "__main__":
    main()
