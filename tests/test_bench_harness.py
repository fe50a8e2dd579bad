"""The benchmark harness (benchmarks/harness): the machine description, results per machine, the
timing protocol on a fake clock, the index from two fake machines, no typed CPU names, and docs
figures backed by results files. No benchmark runs here (speed figures are not tests)."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from harness.index import Planned, docs_nav, docs_pages, index_markdown  # noqa: E402
from harness.render import markdown  # noqa: E402
from harness.results import SCHEMA, load_results, validate  # noqa: E402
from harness.run import Benchmark  # noqa: E402
from harness.timing import Protocol, Timing, measure, measure_interleaved  # noqa: E402

from cleandift_deploy.runtime.machine import (  # noqa: E402
    Gpu,
    MachineDescription,
    cpu_description,
    describe_machine,
)

CPU_NAMES = re.compile(
    r"\b(EPYC|Xeon|Ryzen|Threadripper|Opteron|Graviton|Neoverse|Core\(TM\)|Intel\(R\))", re.I
)
"""CPU brand names that must never be typed into a benchmark or a results writer."""
WRITERS = [
    *sorted((REPO / "benchmarks").glob("*.py")),
    *sorted((REPO / "benchmarks").glob("*.sh")),
    *sorted((REPO / "benchmarks" / "harness").glob("*.py")),
    REPO / "src/cleandift_deploy/runtime/machine.py",
    REPO / "src/cleandift_deploy/runtime/bench_report.py",
]
RESULTS_PATH = re.compile(r"benchmarks/results/[A-Za-z0-9_.{},/<>*-]+")


def fake_context(model: str, features: tuple[str, ...], fp32: float) -> dict[str, Any]:
    machine = MachineDescription(
        cpu_model=model,
        cpu_features=features,
        physical_cores=2,
        logical_cores=2,
        usable_cores=2,
        memory_gib=16.0,
        gpus=(),
        system="Linux test x86_64",
    )
    ceilings = {"fp32_gemm_gflops": fp32, "bf16_gemm_gflops": 2 * fp32, "memory_gbps": 10.0}
    return {"machine": machine.to_dict(), "software": {"torch": "x"}, "ceilings": ceilings}


def write_fake(root: Path, context: dict[str, Any], seconds: float, quick: bool = False) -> Path:
    bench = Benchmark(
        "matching", "Matching", quick=quick, root=root, argv=["b.py"], context=context
    )
    bench.timing_figure(
        "dense",
        Timing.from_samples([seconds, seconds * 1.1], 1, (0, 0, 0), (0, 0, 0)),
        label="dense 9216",
        work=2e11,
        ceiling="fp32_gemm",
    )
    bench.figure("memory", 1.5, "GiB")
    bench.table("rows", ["a", "b"], [[1, 2.5]])
    return bench.write()[0]


def test_machine_description_is_read_from_this_machine() -> None:
    machine = describe_machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        if names:
            assert machine.cpu_model == names[0]
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
        assert ("avx2" in machine.cpu_features) == (" avx2" in flags)
    assert 1 <= machine.physical_cores <= machine.logical_cores
    assert machine.memory_gib > 0
    assert machine.machine_id() == describe_machine().machine_id()  # stable across reads
    assert re.fullmatch(r"[a-z0-9-]+", machine.machine_id())
    assert machine.cpu_model in cpu_description()
    record = machine.to_dict()
    assert record["id"] == machine.machine_id() and record["summary"] == machine.summary()


def test_machine_id_separates_machines_and_ignores_what_changes() -> None:
    amx = MachineDescription("Some CPU @ 2.0GHz", ("amx_bf16", "avx2"), 2, 2, 2, 16.0, (), "x")
    no_amx = MachineDescription("Some CPU @ 2.0GHz", ("avx2",), 2, 2, 2, 16.0, (), "x")
    bigger = MachineDescription("Some CPU @ 2.0GHz", ("amx_bf16", "avx2"), 4, 4, 4, 16.0, (), "x")
    gpu = Gpu("Some GPU", "90", 80.0, "570.1")
    with_gpu = MachineDescription(
        "Some CPU @ 2.0GHz", ("amx_bf16", "avx2"), 2, 2, 2, 16, (gpu,), "x"
    )
    ids = {m.machine_id() for m in (amx, no_amx, bigger, with_gpu)}
    assert len(ids) == 4
    assert amx.machine_id().startswith("some-2c-")
    assert "some-gpu" in with_gpu.machine_id()
    more_memory_free = MachineDescription(
        "Some CPU @ 2.0GHz", ("amx_bf16", "avx2"), 2, 2, 1, 15.9, (), "y"
    )
    assert more_memory_free.machine_id() == amx.machine_id()


def test_results_go_to_each_machines_folder_and_never_overwrite_another(tmp_path: Path) -> None:
    first = fake_context("Alpha CPU", ("avx2",), 100.0)
    second = fake_context("Beta CPU", ("avx512f", "avx2"), 200.0)
    a = write_fake(tmp_path, first, 2.0)
    b = write_fake(tmp_path, second, 1.0)
    quick = write_fake(tmp_path, first, 0.5, quick=True)
    assert a.parent.name == first["machine"]["id"] and b.parent.name == second["machine"]["id"]
    assert a.parent != b.parent and a.name == b.name == "matching.json"
    assert quick == a.parent / "matching-quick.json"
    assert json.loads(a.read_text())["figures"][0]["value"] == pytest.approx(2.1)  # untouched
    for suffix in (".md",):
        assert a.with_suffix(suffix).exists()
    record = validate(json.loads(a.read_text()))
    assert record["schema"] == SCHEMA and record["run"]["command"] == "python b.py"
    rate = record["figures"][0]["rate"]
    assert rate["value"] == pytest.approx(2e11 / 2.1 / 1e9)
    assert rate["ratio"] == pytest.approx(rate["value"] / 100.0)


def test_timing_protocol_on_a_fake_clock() -> None:
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0, 30.0, 30.5])
    calls: list[int] = []
    timing = measure(
        lambda: calls.append(1),
        Protocol(warmup=2, repeats=4),
        clock=lambda: next(ticks),
        load=lambda: (0.1, 0.1, 0.1),
        own_threads=2,
    )
    assert len(calls) == 6  # two warm-up runs, untimed, then four timed
    assert timing.samples == (1.0, 3.0, 2.0, 0.5)
    assert timing.minimum == 0.5 and timing.median == 1.5
    assert timing.spread == pytest.approx((3.0 - 0.5) / 1.5)
    assert not timing.busy

    ticks = iter([0.0, 4.0, 4.0, 9.0, 9.0, 10.0])
    loads = iter([(1.5, 1.0, 1.0), (1.6, 1.0, 1.0)])
    capped = measure(
        lambda: None,
        Protocol(warmup=0, repeats=10, max_seconds=8.0),
        clock=lambda: next(ticks),
        load=lambda: next(loads),
        own_threads=2,
    )
    assert capped.samples == (4.0, 5.0)  # stopped once 8 s of timed runs had passed
    assert capped.busy and capped.load_before == (1.5, 1.0, 1.0)
    assert Timing.from_dict(json.loads(json.dumps(capped.to_dict()))) == capped


def test_interleaved_protocol_alternates_cases_on_a_fake_clock() -> None:
    order: list[str] = []
    ticks = iter(float(t) for t in [0, 1, 1, 3, 3, 4, 4, 7])
    timings = measure_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        Protocol(warmup=1, repeats=2),
        clock=lambda: next(ticks),
        load=lambda: (0.0, 0.0, 0.0),
        own_threads=1,
    )
    assert order == ["a", "b", "a", "b", "a", "b"]  # warm-up round, then A B A B
    assert timings["a"].samples == (1.0, 1.0) and timings["b"].samples == (2.0, 3.0)


def test_index_puts_two_machines_side_by_side_with_ceiling_ratios(tmp_path: Path) -> None:
    first = fake_context("Alpha CPU", ("avx2",), 100.0)
    second = fake_context("Beta CPU", ("avx512f", "avx2"), 200.0)
    write_fake(tmp_path, first, 2.0)
    write_fake(tmp_path, second, 1.0)
    skipped = Benchmark("gpu_check", "GPU", root=tmp_path, argv=["g.py"], context=second)
    skipped.skip("needs a CUDA GPU; this machine has none")
    skipped.write()
    planned = [Planned("matching", "Matching"), Planned("probes", "Probes", needs_gpu=True)]
    text = index_markdown(tmp_path, planned)
    a, b = first["machine"]["id"], second["machine"]["id"]
    header = next(line for line in text.splitlines() if line.startswith("| figure |"))
    assert header == f"| figure | {a} | {b} |"
    row = next(line for line in text.splitlines() if line.startswith("| dense 9216 |"))
    assert "2.1 s (95.24 GFLOP/s, 95% of fp32_gemm_gflops)" in row
    assert "1.05 s (190.5 GFLOP/s, 95% of fp32_gemm_gflops)" in row
    assert "not run: needs a CUDA GPU" in text
    assert "| probes | Probes | needs a CUDA GPU" in text
    assert f"[json]({a}/matching.json)" in text
    pages = docs_pages(tmp_path, planned)
    assert {"index.md", "matching.md", "gpu_check.md"} <= set(pages)
    assert f"benchmarks/results/{b}/matching.json" in pages["matching.md"]


def test_no_cpu_name_is_typed_into_benchmarks_or_results_writers() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in WRITERS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if CPU_NAMES.search(line)
    ]
    assert not offenders, "CPU names typed by hand (use runtime.machine):\n" + "\n".join(offenders)


def _expand(path: str) -> list[str]:
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [p for option in match.group(1).split(",") for p in _expand(head + option + tail)]


def test_every_docs_figure_has_a_results_file_behind_it() -> None:
    documents = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    missing = []
    for document in documents:
        if not document.exists():
            continue
        for mention in RESULTS_PATH.findall(document.read_text()):
            mention = mention.rstrip(".,")
            if any(c in mention for c in "<>*") or "NAME" in mention:
                continue  # a pattern, not a file
            missing += [
                f"{document.relative_to(REPO)}: {p}"
                for p in _expand(mention)
                if not (REPO / p).exists()
            ]
    assert not missing, "docs quote results files that do not exist:\n" + "\n".join(missing)


def test_index_and_docs_pages_are_regenerated_from_the_results() -> None:
    from suite import DOCS, MKDOCS, PLANNED

    root = REPO / "benchmarks" / "results"
    assert load_results(root) or (root / "README.md").exists()
    for record in load_results(root):
        path = root / record.pop("_path")
        assert path.with_suffix(".md").read_text() == markdown(record), f"{path}: make bench-index"
    current = (root / "README.md").read_text()
    assert current == index_markdown(root, PLANNED), "run `make bench-index`"
    if DOCS.is_dir():
        for name, text in docs_pages(root, PLANNED).items():
            assert (DOCS / name).read_text() == text, f"docs/performance/{name}: make bench-index"
        assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(docs_pages(root, PLANNED))
    if MKDOCS.is_file():
        assert MKDOCS.read_text() == docs_nav(MKDOCS.read_text(), root), "nav: make bench-index"


def test_a_record_without_a_machine_is_refused() -> None:
    record = copy.deepcopy(
        {"schema": SCHEMA, "name": "x", "title": "x", "status": "ok", "run": {}, "figures": []}
    )
    with pytest.raises(ValueError, match="missing machine"):
        validate(record)
