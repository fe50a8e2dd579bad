"""What machine a measurement was taken on: a speed figure belongs to its CPU or GPU.

This is the project's ONE machine description. It is read from the machine itself (``/proc``,
``os``, the CUDA driver), never typed: `cleandift-deploy bench` titles its tables with it and the
benchmark harness (``benchmarks/harness``) stores it in every results file and derives the results
folder's name from it (`MachineDescription.machine_id`), so two machines never share a folder.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

from ..kernels.cpu_features import cpu_flags

CPU_FEATURES = ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "fma", "neon", "asimd")
"""Flags that decide which fast paths a CPU has (matrix units, bf16 and vector widths)."""
LIBRARIES = (
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "diffusers",
    "transformers",
    "tensorrt",
    "tensorrt-rtx-cu12",
    "triton",
    "faiss-cpu",
    "ray",
)
"""Libraries whose version changes the figures; those not installed are left out."""
CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
_NOISE = re.compile(r"\((R|TM|tm|r)\)|\bCPU\b|\bProcessor\b|@.*$|\b\d+-Core\b", re.IGNORECASE)


@dataclass(frozen=True)
class Gpu:
    """One CUDA device: name, compute capability, memory and the driver serving it."""

    name: str
    capability: str
    memory_gib: float
    driver: str | None


@dataclass(frozen=True)
class MachineDescription:
    """The hardware a figure was measured on (what stays the same between runs on one machine)."""

    cpu_model: str
    cpu_features: tuple[str, ...]
    physical_cores: int
    logical_cores: int
    usable_cores: int
    memory_gib: float
    gpus: tuple[Gpu, ...]
    system: str

    @property
    def has_amx(self) -> bool:
        """Whether the CPU has AMX bf16 tiles."""
        return "amx_bf16" in self.cpu_features

    def cpu_summary(self) -> str:
        """The CPU in one phrase: model, cores and the features that matter here."""
        features = [f.upper() for f in self.cpu_features if f not in ("fma", "asimd")]
        if not self.has_amx and platform.machine() in ("x86_64", "AMD64"):
            features.append("no AMX")
        cores = f"{self.physical_cores} physical / {self.logical_cores} logical cores"
        return f"{self.cpu_model}, {cores}, {', '.join(features) or 'no AVX2'}"

    def summary(self) -> str:
        """The whole machine in one line (CPU, memory, GPUs)."""
        gpus = "; ".join(
            f"{g.name} (sm{g.capability}, {g.memory_gib:.0f} GiB, driver {g.driver or '?'})"
            for g in self.gpus
        )
        return f"{self.cpu_summary()}, {self.memory_gib:.0f} GiB" + (f"; {gpus}" if gpus else "")

    def machine_id(self) -> str:
        """A folder name for this machine's results: readable, and the same on every run here.

        Built from what does not change between runs (CPU model, its features, cores, GPUs), never
        from library versions or free memory; a short hash keeps two machines apart whose model
        names agree but whose features (a hypervisor may hide AMX) or core counts differ."""
        words = _NOISE.sub(" ", self.cpu_model)
        slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-") or "cpu"
        parts = [slug, f"{self.logical_cores}c"]
        parts += [re.sub(r"[^a-z0-9]+", "-", g.name.lower()).strip("-") for g in self.gpus[:1]]
        key = "|".join(
            [self.cpu_model, ",".join(self.cpu_features), str(self.logical_cores)]
            + [f"{g.name}:{g.capability}" for g in self.gpus]
        )
        return "-".join([*parts, hashlib.sha256(key.encode()).hexdigest()[:6]])

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values, with the id and the one-line summary."""
        found = asdict(self)
        found["id"] = self.machine_id()
        found["summary"] = self.summary()
        return found


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical processor (empty where it cannot be read)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return []
    blocks = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields.get("processor") is not None:
            blocks.append(fields)
    return blocks


def _physical_cores(blocks: list[dict[str, str]]) -> int:
    cores = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    return len(cores) or os.cpu_count() or 1


def _memory_gib() -> float:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def _drivers() -> list[str]:
    """The NVIDIA driver version per GPU from nvidia-smi, when it is installed."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _gpus() -> tuple[Gpu, ...]:
    if not torch.cuda.is_available():
        return ()
    drivers = _drivers()
    found = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        found.append(
            Gpu(
                name=properties.name,
                capability=f"{properties.major}{properties.minor}",
                memory_gib=round(properties.total_memory / 2**30, 1),
                driver=drivers[index] if index < len(drivers) else None,
            )
        )
    return tuple(found)


def describe_machine() -> MachineDescription:
    """Read this machine's description (about a millisecond without a GPU)."""
    blocks = _cpuinfo()
    first = blocks[0] if blocks else {}
    model = first.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = cpu_flags()
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    return MachineDescription(
        cpu_model=model,
        cpu_features=tuple(f for f in CPU_FEATURES if f in flags),
        physical_cores=_physical_cores(blocks),
        logical_cores=logical,
        usable_cores=usable,
        memory_gib=_memory_gib(),
        gpus=_gpus(),
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
    )


def library_versions() -> dict[str, str]:
    """Python's and the installed libraries' versions (what a rerun must match)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return versions


def cpu_description() -> str:
    """Model name, cores and the matrix/vector features that matter here."""
    return describe_machine().cpu_summary()


def device_description(device: str) -> str:
    """The GPU's name and compute capability for CUDA devices, else the CPU's description."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} (sm{major}{minor})"
    return cpu_description()
