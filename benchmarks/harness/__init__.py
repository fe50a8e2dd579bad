"""The benchmark harness: one machine description, one timing protocol, one peak-memory reader,
one results schema and layout, one index (see benchmarks/README.md).

Why a small in-repo module rather than pytest-benchmark or asv: the benchmarks here are scripts
that run fresh child processes per case (peak memory of one step, serving load tests, a UNet per
process), record agreement and memory beside time, and must carry the machine's ceilings measured
in the same run. pytest-benchmark times functions inside a pytest session and describes the CPU by
its brand string only; asv builds one environment per commit (torch alone is 1.2 GB, on a shared
2-core machine) and names machines by hand (`asv machine`). Neither measures ceilings or keeps a
per-machine results folder derived from the measured hardware. This module is ~600 lines.

Scripts import the submodules they need (`from harness.run import Benchmark`): this package
itself imports nothing, so a GPU image without the CPU stack can still use `harness.results`.
"""
