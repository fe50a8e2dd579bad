"""Benchmark the matching kernels against the procedures they replace, in one run.

Every case runs in a fresh child process that builds the same seeded inputs, measures the extra
peak memory of its first call (peak RSS minus RSS before the call; CUDA: max allocated) and the
wall times over repeats (the harness's timing protocol and memory reader). The parent compares
outputs for agreement and writes benchmarks/results/<machine-id>/matching[-quick].{json,md,png};
dense rates are compared with the fp32 GEMM ceiling the harness measures in the same run.

    python benchmarks/bench_matching.py            # full run (several minutes, ~10 GB peak)
    python benchmarks/bench_matching.py --quick    # small sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness.memory import process_peak_gib, resident_gib
from harness.run import Benchmark
from harness.timing import Protocol, Timing, load_average, measure

from cleandift_deploy.kernels import match_dense, match_points
from cleandift_deploy.kernels.api import choose_dense_impl
from cleandift_deploy.kernels.cpu_features import bf16_gemm_speedup, has_bf16_gemm_isa
from cleandift_deploy.kernels.oracles import reference_match_dense, reference_match_points

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
    """Run one case in this process: extra peak memory of the first call, timed repeats."""
    choice = auto_choice(spec)
    make_call(warm_spec(spec))()
    call = make_call(spec)
    cuda = spec.get("device") == "cuda"
    rss0 = resident_gib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    result: list[tuple[torch.Tensor, ...]] = []

    def timed() -> None:
        result[:] = [call()]
        _sync(spec)

    timing = measure(timed, Protocol(warmup=0, repeats=spec["repeats"]))
    if cuda:
        extra = torch.cuda.max_memory_allocated() - mem0
    else:
        extra = max(process_peak_gib() - rss0, 0.0) * 2**30
    if spec.get("save"):
        torch.save([r.cpu() for r in result[0]], out)
    return {
        "median_s": timing.median,
        "times_s": list(timing.samples),
        "extra_peak_bytes": extra,
        **choice,
    }


def run_case(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one case in a fresh child process and return its measurements."""
    out = workdir / f"{spec['name']}.{spec['impl']}.pt"
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--out", str(out)]
    before = load_average()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec['name']}/{spec['impl']} failed:\n{proc.stderr[-3000:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    timing = Timing.from_samples(
        found["times_s"], 0, before, load_average(), torch.get_num_threads()
    )
    return {**spec, **found, "timing": timing, "output": str(out)}


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
    cases: list[dict[str, Any]] = []  # the fp32 / bf16 GEMM rates are the harness's ceilings
    for tgt_size in [(96, 96)] if quick else [(768, 768), (500, 375)]:
        for k in (1000,) if quick else (1, 1000):
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
    for n in [1024] if quick else [2304, 9216]:
        for ch in [64] if quick else [1280, 640]:
            base = {"kind": "dense", "name": f"dense_N{n}_C{ch}", "n": n, "c": ch, "save": True}
            cases += [
                {**base, "impl": impl, "repeats": 5}
                for impl in ("ours", "prefilter", "blocked", "reference", "faiss")
                if not quick or impl not in ("prefilter", "blocked")
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


def summarise(results: list[dict[str, Any]], ceilings: dict[str, Any]) -> dict[str, Any]:
    """Pair up implementations per case: ratios, rates, agreement, target checks."""
    by = {(r["name"], r["impl"]): r for r in results}
    sgemm_rate = float(ceilings.get("fp32_gemm_gflops") or "nan")
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
    summary["bf16gemm_gflops"] = ceilings.get("bf16_gemm_gflops")
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


def report(bench: Benchmark, summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Figures (every case's timing; dense rates against the fp32 GEMM ceiling), the summary
    table, the dense paths and targets, and a bar chart."""
    for r in results:
        work = 2 * r["n"] ** 2 * r["c"] if r["kind"] == "dense" else None
        bench.timing_figure(
            f"{r['name']} {r['impl']}",
            r["timing"],
            work=work,
            ceiling="fp32_gemm" if work else None,
        )
    rows = []
    for r in summary["rows"]:
        a = r["agreement"]
        rows.append(
            [
                r["case"],
                f"{r['ours_s'] * 1e3:.1f} ms",
                f"{r['reference_s'] * 1e3:.0f} ms",
                f"{r['faiss_s'] * 1e3:.0f} ms" if "faiss_s" in r else "-",
                f"{r['speedup_vs_reference']:.1f}x",
                f"{r['speedup_vs_faiss']:.2f}x" if "speedup_vs_faiss" in r else "-",
                f"{r['ours_extra_mb']:.1f} MB",
                f"{r['reference_extra_mb']:.0f} MB",
                f"{100 * a['identical']:.2f}% identical, max dscore {a['max_score_diff']:.1e}",
            ]
        )
    headers = ["case", "ours", "reference", "faiss", "vs ref", "vs faiss", "ours mem", "ref mem"]
    bench.table("Ours vs the references (medians)", [*headers, "agreement"], rows)
    bench.note(
        "Memory is the extra peak RSS of one call (after a small warm-up call), each case in a "
        "fresh process."
    )
    dense = [r for r in summary["rows"] if "fraction_of_sgemm" in r]
    paths = [r for r in dense if "prefilter_s" in r]
    if paths:
        bench.table(
            "Dense CPU paths (ours = impl=auto)",
            ["case", "auto", "bf16 probe", "prefilter", "blocked fp32", "rate", "of fp32 GEMM"],
            [
                [
                    r["case"],
                    r["auto_impl"],
                    f"{r['bf16_probe_speedup']:.1f}x" if r["bf16_probe_speedup"] else "-",
                    f"{r['prefilter_s'] * 1e3:.0f} ms ({r['prefilter_extra_mb']:.1f} MB)",
                    f"{r['blocked_s'] * 1e3:.0f} ms ({r['blocked_extra_mb']:.1f} MB)",
                    f"{r['ours_gflops']:.0f} GFLOP/s",
                    f"{100 * r['fraction_of_sgemm']:.0f}%",
                ]
                for r in paths
            ],
        )
    bench.note(
        "Targets: "
        + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in summary["targets"].items())
    )
    if "hgemm_tflops" not in summary:
        bench.note("GPU: not measured (no CUDA device in this run).")
    rows_ = summary["rows"]
    bench.bar_plot(
        "Cosine matching: fused/blocked kernels vs references",
        "median time (s)",
        [r["case"] for r in rows_],
        {
            "ours": [r["ours_s"] for r in rows_],
            "torch reference": [r["reference_s"] for r in rows_],
            "faiss-cpu": [r.get("faiss_s") for r in rows_],
        },
        logy=True,
    )


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
    with Benchmark("matching", "Matching kernels vs references and faiss", args.quick) as bench:
        with tempfile.TemporaryDirectory() as tmp, Progress() as progress:
            task = progress.add_task("matching benchmark", total=len(cases))
            for spec in cases:
                progress.update(task, description=f"{spec['name']} / {spec['impl']}")
                results.append(run_case(spec, Path(tmp)))
                progress.advance(task)
            summary = summarise(results, bench.ceilings)
        report(bench, summary, results)
        for r in results:
            r.pop("output")
            r["timing"] = r["timing"].to_dict()
        bench.results = {"summary": summary, "runs": results}


if __name__ == "__main__":
    main()
