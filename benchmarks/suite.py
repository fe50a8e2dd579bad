"""Run every benchmark (`make bench`) or each at one small size (`make bench-quick`), with the
machine measured once for the whole run, then regenerate the index and the docs' pages.

    python benchmarks/suite.py --quick            # a few minutes on 2 cores
    python benchmarks/suite.py                    # everything: hours on 2 cores (estimate first)
    python benchmarks/suite.py --quick --only matching,eval
    python benchmarks/suite.py --index            # only regenerate the index and docs pages

Results: benchmarks/results/<machine-id>/NAME[-quick].{json,md,png}. A benchmark that needs a GPU
is recorded as "not run: needs a CUDA GPU" on a machine without one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from harness.context import CONTEXT_ENV, QUICK_ENV, save_context
from harness.index import Planned, docs_nav, docs_pages, index_markdown
from harness.render import markdown
from harness.results import RESULTS, load_results
from harness.run import Benchmark

from cleandift_deploy.atomic import write_text_atomic

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "performance"
MKDOCS = HERE.parent / "mkdocs.yml"


@dataclass(frozen=True)
class Entry:
    """One benchmark script: its full and quick arguments and rough durations on 2 cores."""

    name: str
    title: str
    script: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = ()
    """None: not part of `make bench-quick`."""
    full_minutes: float = 10.0
    quick_seconds: float = 30.0
    needs_gpu: bool = False


Q = "--quick"
SUITE = (
    Entry("matching", "Matching kernels vs references and faiss", "bench_matching.py",
          (), (Q,), 60, 60),
    Entry("eval_matching", "Evaluator matching vs DIFT's procedure", "bench_eval.py",
          (), (Q, "--pool", "8"), 20, 40),
    Entry("runtime_cpu", "Image to us6 on the CPU: torch, ONNX Runtime, OpenVINO",
          "bench_runtime_cpu.py", (),
          ("--arch", "tiny", "--sizes", "64", "--repeats", "3", "--workdir", "/tmp/bench-quick",
           "--skip", "torch-bf16,ort-plain,ov-f32-onnx"), 90, 90),
    Entry("runtime_backends", "PyTorch fp32 vs bf16 autocast on the CPU",
          "bench_runtime_backends.py", (), ("--arch", "tiny", "--sizes", "64", "--repeats", "3"),
          30, 30),
    Entry("export", "Export and TensorRT-RTX build", "bench_export.py", (),
          ("--arch", "tiny", "--size", "64"), 10, 60),
    Entry("dift", "DIFT ensemble: VAE once vs per copy", "bench_dift.py", (),
          ("--arch", "tiny", "--size", "64", "--ensemble", "2", "--repeats", "3"), 25, 40),
    Entry("dinov2", "DINOv2 and SD + DINOv2 fusion", "bench_dinov2.py", (),
          ("--arch", "dinov2_tiny", "--size", "84", "--sd-arch", "tiny", "--sd-size", "64",
           "--parts", "dino", "fusion"), 30, 60),
    Entry("hedlin", "Hedlin et al.: batched vs one-at-a-time", "bench_hedlin.py", (),
          ("--cases", "tiny-quick"), 60, 40),
    Entry("hyperfeatures", "Diffusion Hyperfeatures training and export",
          "bench_hyperfeatures.py", (),
          ("--arch", "tiny", "--steps", "5", "--loop-steps", "3", "--repeats", "3"), 20, 40),
    Entry("train_step", "One training step", "bench_train_step.py", (),
          ("--arch", "tiny", "--latent", "8", "--repeats", "2"), 40, 90),
    Entry("triton_compile", "Triton matching kernel compiled offline", "bench_triton_compile.py",
          (), (Q,), 3, 30),
    Entry("distributed", "Distributed training: 1 vs 2 processes", "bench_distributed.py", (),
          (Q,), 8, 90),
    Entry("probes", "Probes: cached training and the fused depth graph", "bench_probes.py", (),
          (Q,), 10, 90),
    Entry("serving", "Serving: local server and Ray Serve, /similarity", "bench_serving.py", (),
          ("--levels", "1,4", "--per-level", "8", "--repeats", "1", "--similarity-clicks", "3",
           "--ray-images", "8",
           "--ray-image-size", "64"), 10, 90),
    Entry("gpu_check", "GPU matching kernels and TensorRT", "bench_gpu.py", (), (), 5, 60,
          needs_gpu=True),
)  # fmt: skip
PLANNED = tuple(Planned(e.name, e.title, e.needs_gpu) for e in SUITE)


def estimate(entries: list[Entry], quick: bool) -> str:
    """The time estimate printed before anything runs."""
    seconds = sum(e.quick_seconds if quick else e.full_minutes * 60 for e in entries)
    return (
        f"{len(entries)} benchmarks, about {seconds / 60:.0f} min on 2 cores (machine probe ~10 s)"
    )


def write_index(root: Path = RESULTS, docs: Path = DOCS, mkdocs: Path = MKDOCS) -> None:
    """Regenerate each results file's Markdown from its JSON, benchmarks/results/README.md, the
    docs' performance pages and their nav."""
    for record in load_results(root):
        path = root / record.pop("_path")
        write_text_atomic(path.with_suffix(".md"), markdown(record))
    write_text_atomic(root / "README.md", index_markdown(root, PLANNED))
    if docs.parent.is_dir():
        docs.mkdir(exist_ok=True)
        pages = docs_pages(root, PLANNED)
        for stale in set(p.name for p in docs.glob("*.md")) - set(pages):
            (docs / stale).unlink()  # a benchmark whose results are gone
        for name, text in pages.items():
            write_text_atomic(docs / name, text)
    if mkdocs.is_file():
        write_text_atomic(mkdocs, docs_nav(mkdocs.read_text(), root))


def record_skip(entry: Entry, context_file: Path, quick: bool, reason: str) -> None:
    """Write a "not run here" record so that no old figure stands as this machine's current one."""
    os.environ[CONTEXT_ENV] = str(context_file)
    bench = Benchmark(entry.name, entry.title, quick=quick, argv=[str(HERE / entry.script)])
    bench.skip(reason)
    bench.write()


def run_entry(entry: Entry, quick: bool, env: dict[str, str]) -> tuple[int, float]:
    """Run one benchmark script; its exit status and seconds."""
    args = (entry.quick or ()) if quick else entry.full
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / entry.script), *args], env=env, check=False)
    return done.returncode, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size per benchmark")
    parser.add_argument("--only", default="", help="comma list of benchmark names")
    parser.add_argument("--index", action="store_true", help="only regenerate the index")
    args = parser.parse_args()
    if args.index:
        write_index()
        return 0
    names = [n for n in args.only.split(",") if n]
    by_name = {e.name: e for e in SUITE}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"unknown benchmarks {', '.join(unknown)}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in names] if names else list(SUITE)  # --only keeps its order
    if args.quick:
        chosen = [e for e in chosen if e.quick is not None]
    print(estimate(chosen, args.quick), flush=True)
    failed = []
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as work:
        context_file = Path(work) / "context.json"
        context = save_context(context_file)
        print(f"machine: {context['machine']['summary']} -> {context['machine']['id']}")
        env = {**os.environ, CONTEXT_ENV: str(context_file)}
        if args.quick:
            env[QUICK_ENV] = "1"
        for entry in chosen:
            if entry.needs_gpu and not torch.cuda.is_available():
                record_skip(
                    entry, context_file, args.quick, "needs a CUDA GPU; this machine has none"
                )
                print(f"{entry.name}: skipped (no CUDA GPU)", flush=True)
                continue
            code, seconds = run_entry(entry, args.quick, env)
            print(f"{entry.name}: exit {code} after {seconds:.0f} s", flush=True)
            if code != 0:
                failed.append(entry.name)
    write_index()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
