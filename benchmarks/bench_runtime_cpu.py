"""CPU speed and memory of image -> us6: ONNX Runtime (tuned, attention fused) vs PyTorch.

For the full SD2.1 architecture with random weights, batch 1, fp32, at 512 and 768 px:
- timing: one process holds every case, ONNX Runtime with a fresh session per size (measured: a
  session that ran 512 px first ran 768 px 20-30% slower; a deployment serves one size);
  repeats are interleaved (case A, B, C, A, B, C, ...) on the same input, so a noisy, shared
  machine slows all cases alike; medians and the ratio to PyTorch eager fp32 are reported, with
  each case's agreement against PyTorch fp32;
- memory: each case is built and run three times in a fresh subprocess that reports its peak
  resident memory (`VmHWM`), compared with the size of the graph's weights.

Cases: `torch-fp32` (eager, the reference), `torch-bf16` (eager under bf16 autocast: AMX where the
CPU has it), `ort-plain` (the standard graph, ONNX Runtime defaults, memory run only: it
materialises attention), `ort-fast` (`create_session`: attention fused, tuned options), `ov-f32`
and `ov-bf16` (the runtime's OpenVINO model: IR converted once into the work folder, static shape,
`INFERENCE_PRECISION_HINT` f32 / bf16); `ov-f32-onnx` (memory run only: OpenVINO reading the ONNX
file itself instead of the IR, to show what the IR's mapped weights save). Every case also
reports how many nearest-neighbour matches (every us6 cell of a second image against the first)
agree with fp32 PyTorch.

    flock /tmp/cpu-heavy.lock python benchmarks/bench_runtime_cpu.py --workdir /tmp/ort/bench

Results: benchmarks/results/<machine-id>/runtime_cpu.{json,md,png} (benchmarks/harness; the
interleaved repeats are the harness's `measure_interleaved`, peak memory its `process_peak_gib`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from harness.memory import process_peak_gib, resident_gib
from harness.run import Benchmark
from harness.timing import Protocol, measure, measure_interleaved

NAME = "runtime_cpu"
TIMED_CASES = ("torch-fp32", "torch-bf16", "ort-fast", "ov-f32", "ov-bf16")
MEMORY_CASES = (
    "torch-fp32",
    "torch-bf16",
    "ort-plain",
    "ort-fast",
    "ov-f32",
    "ov-bf16",
    "ov-f32-onnx",
)
Runner = Callable[[np.ndarray], np.ndarray]


def reference_module(arch: str) -> object:
    """`uint8 image [B,3,H,W] -> us6` in PyTorch: random weights, seeded, eval mode."""
    import torch

    from cleandift_deploy.models import (
        FeatureUNet,
        ImageFeatureModel,
        VAEEncoder,
        load_vae,
        random_prompt_embedding,
        random_unet,
    )

    class Uint8Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            unet = random_unet(arch, seed=0).unet
            vae = load_vae(None, arch, random_init=True)
            features = FeatureUNet(unet, taps=("us6",))
            prompt = random_prompt_embedding(arch)
            self.model = ImageFeatureModel(VAEEncoder(vae), features, prompt)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.model(image.to(torch.float32) / 127.5 - 1.0)["us6"]

    return Uint8Features().eval().requires_grad_(False)


def export_graph(arch: str, path: Path) -> Path:
    """Export the reference module once (dynamic batch and size), weights in one external file.

    Everything is written in a staging folder and moved into place weights first, so an existing
    `path` always has complete weights beside it.
    """
    if path.is_file():
        return path
    import onnx
    import torch

    module = reference_module(arch)
    image = torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8)
    staging = path.parent / f".staging-{path.stem}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "us6": {0: "batch", 2: "h", 3: "w"}}
    traced = staging / "traced.onnx"
    torch.onnx.export(
        module,
        (image,),
        str(traced),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["us6"],
        dynamic_axes=axes,
    )
    data = path.name + ".data"
    onnx.save(
        onnx.load(str(traced)),
        str(staging / path.name),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
    )
    os.replace(staging / data, path.with_name(data))
    os.replace(staging / path.name, path)
    shutil.rmtree(staging)
    return path


def weight_bytes(path: Path) -> int:
    """Bytes of the graph's initializers (the weights' size in memory, fp32)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        total += count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return total


def make_runner(case: str, arch: str, graph: Path, module: object | None) -> Runner:
    """A function image -> us6 for one case."""
    if case == "ov-f32-onnx":
        import openvino as ov

        from cleandift_deploy.runtime.openvino_backend import PRECISIONS
        from cleandift_deploy.runtime.ort_session import physical_cores

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS["fp32"]}
        config["INFERENCE_NUM_THREADS"] = physical_cores()
        compiled: dict[tuple[int, ...], object] = {}

        def run_onnx(image: np.ndarray) -> np.ndarray:
            if image.shape not in compiled:
                model = core.read_model(str(graph))
                model.reshape({"image": image.shape})
                compiled[image.shape] = core.compile_model(model, "CPU", config)
            return compiled[image.shape]([image])[0]  # type: ignore[operator]

        return run_onnx
    if case.startswith("ov"):
        from cleandift_deploy.runtime.openvino_backend import OpenVINOModel

        precision = "bf16" if case == "ov-bf16" else "fp32"
        model = OpenVINOModel(graph, precision, cache_dir=graph.parent / "openvino-cache")
        return lambda image: model.run([image])[0]
    if case.startswith("ort"):
        import onnxruntime as ort

        from cleandift_deploy.runtime.ort_session import create_session

        if case == "ort-plain":
            session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        else:
            session = create_session(graph)
        return lambda image: session.run(None, {"image": image})[0]
    import torch

    model = module if module is not None else reference_module(arch)
    bf16 = case == "torch-bf16"

    def run(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return model(torch.from_numpy(image)).float().numpy()  # type: ignore[operator]

    return run


def agreement(out: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Cosine similarity, max abs error and max error relative to the reference's largest value."""
    a, b = out.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    error = float(np.abs(a - b).max())
    return {
        "cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
        "max_abs": error,
        "max_rel": error / float(np.abs(b).max()),
    }


def match_agreement(pair: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Share of nearest-neighbour matches (each cell of image 2 -> image 1, cosine) that equal
    the reference's."""
    import torch

    from cleandift_deploy.kernels import match_dense

    def matches(maps: list[np.ndarray]) -> torch.Tensor:
        a, b = (torch.from_numpy(m[0].reshape(m.shape[1], -1).T.copy()).float() for m in maps)
        return match_dense(b, a, impl="blocked").indices.flatten()

    return float((matches(pair) == matches(reference)).float().mean())


def timing(
    arch: str, graph: Path, sizes: list[int], repeats: int, cases: tuple[str, ...] = TIMED_CASES
) -> dict[str, Any]:
    """Interleaved repeats of every timed case at every size, in this process (the first run of
    each case, on the image and a second image, is the warm-up and gives the agreement)."""
    module = reference_module(arch)
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    for size in sizes:
        gc.collect()
        runners = {case: make_runner(case, arch, graph, module) for case in cases}
        image = rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8)
        second = rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8)
        outputs, pairs = {}, {}
        for case, run in runners.items():
            outputs[case] = run(image)
            pairs[case] = [outputs[case], run(second)]
        calls = {case: (lambda run=run, image=image: run(image)) for case, run in runners.items()}
        timings = measure_interleaved(calls, Protocol(warmup=0, repeats=repeats))
        reference = outputs["torch-fp32"]
        eager = timings["torch-fp32"].median
        results[str(size)] = {
            case: {
                "timing": timings[case],
                "median_s": round(timings[case].median, 3),
                "speedup_vs_torch_fp32": round(eager / timings[case].median, 3),
                "agreement_vs_torch_fp32": agreement(outputs[case], reference),
                "match_agreement_vs_torch_fp32": match_agreement(pairs[case], pairs["torch-fp32"]),
            }
            for case in runners
        }
        print(f"timed {size} px", flush=True)
    return results


def memory_case(case: str, arch: str, graph: Path, size: int) -> dict[str, float]:
    """Build one case and run it three times in this (fresh) process: set-up, first run, peak RSS.

    Three runs, because ONNX Runtime plans its memory pattern on the first run and allocates the
    planned block from the second on.
    """
    image = np.random.default_rng(1).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    started = time.perf_counter()
    run = make_runner(case, arch, graph, None)
    setup = time.perf_counter() - started
    first = measure(lambda: run(image), Protocol(warmup=0, repeats=1)).median
    for _ in range(2):
        run(image)
    return {
        "setup_s": setup,
        "first_run_s": first,
        "peak_rss_gib": process_peak_gib(),
        "rss_after_gib": resident_gib(),
    }


def memory(arch: str, graph: Path, sizes: list[int], cases: tuple[str, ...]) -> dict[str, Any]:
    """Every memory case in its own subprocess."""
    results: dict[str, dict[str, object]] = {}
    for size in sizes:
        for case in cases:
            command = [sys.executable, __file__, "--arch", arch, "--graph", str(graph)]
            command += ["--memory-case", case, "--sizes", str(size)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = done.stdout.strip().splitlines()
            if done.returncode != 0 or not lines:
                found: object = {"failed": done.stderr.strip().splitlines()[-1:]}
            else:
                found = json.loads(lines[-1])
            results.setdefault(str(size), {})[case] = found
            print(f"memory {case} {size}: {found}", flush=True)
    return results


def graph_flops(graph: Path, sizes: list[int]) -> dict[str, float]:
    """FLOPs of one image -> us6 run per size, counted in the graph (the `bench` verb's count)."""
    from contextlib import chdir

    from cleandift_deploy.runtime.flops import count_flops

    graph = graph.resolve()
    with chdir(graph.parent):  # ONNX's checker finds external weights from the working directory
        return {
            str(size): float(sum(count_flops(graph, {"image": [1, 3, size, size]}).values()))
            for size in sizes
        }


def default_cases() -> tuple[str, ...]:
    """Every timed case, less the bf16 ones where the CPU has no bf16 units (emulated bf16 is
    several times slower than fp32: measuring it would only take the machine's time)."""
    from cleandift_deploy.kernels.cpu_features import has_bf16_gemm_isa

    if has_bf16_gemm_isa():
        return TIMED_CASES
    return tuple(case for case in TIMED_CASES if "bf16" not in case)


def report(
    bench: Benchmark,
    timing_rows: dict[str, Any],
    memory_rows: dict[str, Any],
    flops: dict[str, float] | None = None,
) -> None:
    """Figures per case and size, the table (time, speed-up, agreement, memory), a bar chart."""
    table = []
    for size in sorted(set(timing_rows) | set(memory_rows), key=int):
        for case in MEMORY_CASES:
            row = timing_rows.get(size, {}).get(case, {})
            mem = memory_rows.get(size, {}).get(case, {})
            if row:
                ceiling = "bf16_gemm" if "bf16" in case else "fp32_gemm"
                figure = bench.timing_figure(
                    f"{size} {case}",
                    row["timing"],
                    label=f"{size} px {case}",
                    work=(flops or {}).get(size),
                    ceiling=ceiling if flops else None,
                )
                rate = figure.get("rate") or {}
            if "peak_rss_gib" in mem:
                bench.figure(f"{size} {case} peak", mem["peak_rss_gib"], "GiB")
            agree = row.get("agreement_vs_torch_fp32", {})
            matched = row.get("match_agreement_vs_torch_fp32")
            table.append(
                [
                    size,
                    case,
                    row.get("median_s", f"{float(mem.get('first_run_s', 0)):.2f} (first run)"),
                    f"{row['speedup_vs_torch_fp32']}x" if row else "-",
                    f"{agree['cosine']:.7f}" if agree else "-",
                    f"{agree['max_abs']:.2e}" if agree else "-",
                    f"{100 * float(matched):.2f}%" if matched is not None else "-",
                    mem.get("peak_rss_gib"),
                    mem.get("rss_after_gib"),
                    _rate_cell(rate) if row else "-",
                ]
            )
    headers = ["size", "case", "median s", "vs torch fp32", "cosine vs fp32", "max abs"]
    headers += ["NN match", "peak RSS GiB", "RSS after GiB", "achieved / GEMM ceiling"]
    bench.table("image -> us6, batch 1", headers, table)
    sizes = sorted(timing_rows, key=int)
    bench.bar_plot(
        "image -> us6, batch 1",
        "median seconds",
        [f"{s} px" for s in sizes],
        {case: [timing_rows[s][case]["median_s"] for s in sizes] for case in timing_rows[sizes[0]]},
    )


def _rate_cell(rate: dict[str, Any]) -> str:
    if not rate:
        return "-"
    ratio = rate.get("ratio")
    share = f" ({100 * ratio:.0f}% of {rate['ceiling']})" if ratio else ""
    return f"{rate['value']:.0f} {rate['unit']}{share}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd21")
    parser.add_argument("--sizes", default="512,768")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ort/bench"))
    parser.add_argument("--graph", type=Path, help="an exported image -> us6 graph to use")
    parser.add_argument("--memory-case", choices=MEMORY_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="", help="comma list of memory cases to skip")
    parser.add_argument(
        "--cases",
        default=None,
        help=f"comma list of timed cases (default: {','.join(TIMED_CASES)}, less the bf16 ones "
        "on a CPU without AMX or AVX512_BF16)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    graph = args.graph or export_graph(args.arch, args.workdir / args.arch / "model.onnx")
    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case, args.arch, graph, sizes[0])))
        return
    skipped = set(args.skip.split(","))
    bench = Benchmark(NAME, "Image to us6 on the CPU: torch, ONNX Runtime, OpenVINO")
    make_runner("ov-f32", args.arch, graph, None)  # converts the graph to IR once, before timing
    weights = weight_bytes(graph) / 2**30
    cases_timed = tuple(args.cases.split(",")) if args.cases else default_cases()
    if set(cases_timed) - set(TIMED_CASES):
        parser.error(f"--cases: choose from {', '.join(TIMED_CASES)}")
    if cases_timed != TIMED_CASES and not args.cases:
        bench.note("bf16 cases not timed: this CPU has no AMX or AVX512_BF16 (bf16 is emulated).")
    timed = timing(args.arch, graph, sizes, args.repeats, cases_timed)
    gc.collect()
    no_bf16 = "torch-bf16" not in default_cases()
    cases = tuple(
        case
        for case in MEMORY_CASES
        if case not in skipped and not (no_bf16 and "bf16" in case and case not in cases_timed)
    )
    memory_rows = memory(args.arch, graph, sizes, cases)
    report(bench, timed, memory_rows, graph_flops(graph, sizes))
    bench.note(
        f"{args.arch}, fp32 weights {weights:.2f} GiB; peak RSS target {1.5 * weights:.2f} GiB "
        "(1.5x weights). Timed cases interleaved in one process; each memory case in a fresh "
        "process, built and run three times."
    )
    for per_size in timed.values():
        for case in per_size.values():
            case["timing"] = case["timing"].to_dict()
    bench.results = {
        "arch": args.arch,
        "graph": str(graph),
        "weights_gib": weights,
        "timing": timed,
        "memory": memory_rows,
    }
    for path in bench.write():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
