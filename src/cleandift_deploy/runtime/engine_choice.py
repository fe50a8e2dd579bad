"""Which engine runs an artifact on the CPU, decided by measurement and kept on disk.

Two decisions are made here, both once per artifact, input shape, CPU and library versions:
- `auto` for an `.onnx` graph on the CPU times the two exact engines (ONNX Runtime and OpenVINO
  f32) on a random batch of the requested shape and keeps the faster one. Which is faster
  differs by CPU family (NOTES: within 5% on one Xeon, OpenVINO 1.4x faster on another), so no
  rule is written down; `CLEANDIFT_CPU_ENGINE=onnxruntime|openvino` pins the choice instead.
- `precision="bf16"` puts the bf16 engine behind the fidelity gate (`fidelity_gate`): it runs
  only when it keeps at least `min_agreement` of the exact engine's matches on the calibration
  images; otherwise the exact engine runs and a one-line notice gives the measured agreement.

Every extractor carries a `Selection` saying which engine runs and why, with the timings or the
agreement behind it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import write_text_atomic
from ..errors import CleanDiftError
from ..kernels.cpu_features import has_bf16_gemm_isa
from ..models.checkpoints import sha256_of
from .fidelity_gate import (
    gate_key,
    load_fidelity,
    machine_fingerprint,
    measure_fidelity,
    store_fidelity,
)

if TYPE_CHECKING:
    from .extractor import FeatureExtractor

PIN_ENV = "CLEANDIFT_CPU_ENGINE"
"""Pins `auto`'s exact CPU engine for `.onnx` graphs ("onnxruntime" or "openvino"), unmeasured."""
EXACT_CPU_ENGINES = ("onnxruntime", "openvino")
BF16_ENGINES = {"onnxruntime": "openvino-bf16", "openvino": "openvino-bf16", "torch": "torch-bf16"}
"""Exact engine -> the bf16 engine that runs the same artifact."""
TIMED_RUNS = 2
NO_BF16_UNITS = (
    "this CPU has no AMX or AVX512_BF16 (or oneDNN is capped below them), so bf16 would be "
    "emulated: OpenVINO bf16 ran SD2.1 at 512 px 7x slower than f32 on such an Intel Xeon"
)


@dataclass(frozen=True)
class Selection:
    """Which engine runs, why, and the measurements behind the choice."""

    backend: str
    reason: str
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per batch of each engine timed for `auto` (empty when nothing was timed)."""
    fidelity: dict[str, Any] | None = None
    """The bf16 gate's measurement, when bf16 was asked for."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for `extract`/`bench` output and serve's /manifest."""
        return asdict(self)


def cache_root() -> Path:
    """The per-user cache folder: `$XDG_CACHE_HOME` (or ~/.cache) / cleandift_deploy."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "cleandift_deploy"


def _choice_file() -> Path:
    return cache_root() / "engine-choice.json"


def _choice_key(path: Path, shape: Sequence[int], threads: int | None) -> str:
    parts = {
        "artifact": sha256_of([Path(path)]),
        "shape": list(shape),
        "threads": threads,
        **machine_fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read_choices() -> dict[str, Any]:
    try:
        return dict(json.loads(_choice_file().read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _seconds(extractor: FeatureExtractor, batch: list[np.ndarray]) -> float:
    extractor(batch)  # warm-up: first-run allocation and compilation
    runs = []
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        extractor(batch)
        runs.append(time.perf_counter() - start)
    return min(runs)


def _random_batch(extractor: FeatureExtractor) -> list[np.ndarray]:
    height, width = extractor.image_size
    generator = np.random.default_rng(0)
    return [generator.integers(0, 256, (height, width, 3), dtype=np.uint8)]


def choose_exact_cpu_engine(
    path: Path, build: Callable[[str], FeatureExtractor], threads: int | None
) -> tuple[FeatureExtractor, Selection]:
    """`auto` for a `.onnx` graph on the CPU: the pinned engine, the cached decision, or both
    exact engines timed now (the decision is then cached)."""
    pinned = os.environ.get(PIN_ENV)
    if pinned:
        if pinned not in EXACT_CPU_ENGINES:
            raise CleanDiftError(
                f"{PIN_ENV}={pinned!r}: use one of {', '.join(EXACT_CPU_ENGINES)}, or unset it"
            )
        return build(pinned), Selection(pinned, f"auto: pinned by {PIN_ENV}")
    first = build("onnxruntime")
    if not _openvino_installed():
        return first, Selection("onnxruntime", "auto: OpenVINO is not installed")
    key = _choice_key(path, (*first.image_size, first.batch_size), threads)
    cached = _read_choices().get(key)
    if cached and cached.get("backend") in EXACT_CPU_ENGINES:
        timings = dict(cached.get("timings", {}))
        name = cached["backend"]
        chosen = first if name == "onnxruntime" else build(name)
        return chosen, Selection(name, "auto: the faster exact engine (timed earlier)", timings)
    return _time_and_keep(first, build, key)


def _time_and_keep(
    first: FeatureExtractor, build: Callable[[str], FeatureExtractor], key: str
) -> tuple[FeatureExtractor, Selection]:
    batch = _random_batch(first)
    second = build("openvino")
    timings = {"onnxruntime": _seconds(first, batch), "openvino": _seconds(second, batch)}
    name = min(timings, key=timings.__getitem__)
    choices = _read_choices()
    choices[key] = {"backend": name, "timings": timings}
    try:
        write_text_atomic(_choice_file(), json.dumps(choices, indent=2) + "\n")
    except OSError as err:
        print(f"notice: cannot keep the engine choice ({err})", file=sys.stderr)
    chosen = first if name == "onnxruntime" else second
    return chosen, Selection(name, "auto: the faster exact engine (timed now)", timings)


def _openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def bf16_engine(exact: str) -> str:
    """The bf16 engine for an exact one; a one-line refusal where there is none."""
    if exact not in BF16_ENGINES:
        raise CleanDiftError(
            f"precision='bf16' runs on the CPU for .onnx graphs and the PyTorch reference, not "
            f"with {exact}: TensorRT engines take their precision from the export"
        )
    return BF16_ENGINES[exact]


def gate_bf16(
    path: Path,
    exact: tuple[FeatureExtractor, Selection],
    build: Callable[[str], FeatureExtractor],
    calibration: Sequence[np.ndarray],
    min_agreement: float,
) -> tuple[FeatureExtractor, Selection]:
    """The bf16 engine when it keeps at least `min_agreement` of the exact engine's matches on
    the calibration images (measured now or reused from the record beside the artifact); the
    exact engine with a notice otherwise."""
    exact_extractor, exact_selection = exact
    fast_name = bf16_engine(exact_selection.backend)
    if not has_bf16_gemm_isa():
        print(f"notice: {NO_BF16_UNITS}: running the exact engine", file=sys.stderr)
        reason = f"bf16 refused: {NO_BF16_UNITS}"
        return exact_extractor, Selection(exact_selection.backend, reason, exact_selection.timings)
    key = gate_key(
        path,
        exact_extractor.manifest_sha256,
        (exact_selection.backend, fast_name),
        calibration,
        exact_extractor.taps,
        exact_extractor.image_size,
    )
    fidelity = load_fidelity(path, key)
    fast = build(fast_name)
    if fidelity is None:
        fidelity = measure_fidelity(exact_extractor, fast, calibration)
        store_fidelity(path, key, fidelity)
    measured = asdict(fidelity) | {"min_agreement": min_agreement}
    if fidelity.agreement >= min_agreement:
        reason = f"bf16 passed the fidelity gate: {fidelity.summary()}"
        return fast, Selection(fast_name, reason, fidelity=measured)
    print(
        f"notice: bf16 kept {100 * fidelity.agreement:.2f}% of matches, below "
        f"{100 * min_agreement:.2f}%: running the exact engine ({exact_selection.backend})",
        file=sys.stderr,
    )
    reason = f"bf16 refused by the fidelity gate: {fidelity.summary()}"
    return exact_extractor, Selection(
        exact_selection.backend, reason, exact_selection.timings, fidelity=measured
    )
