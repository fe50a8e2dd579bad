"""ONNX export with graph clean-up and mixed fp16, TensorRT builds, and agreement checks.

The names are imported on first use (torch and onnx are heavy), as in `cleandift_deploy.models`.

May import: runtime (to run what it exported), descriptors, models (graph building lives
there), kernels, manifest, atomic, values, errors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..models.graph_options import ExportOptions
    from .agreement import TapAgreement, compare_outputs, tap_agreement
    from .compare import Comparison, compare_artifact
    from .exporter import export_onnx
    from .tensorrt_build import BuildOptions, build_engine

_HOMES = {
    ".agreement": ("TapAgreement", "compare_outputs", "tap_agreement"),
    ".compare": ("Comparison", "compare_artifact"),
    ".exporter": ("export_onnx",),
    "..models.graph_options": ("ExportOptions",),
    ".tensorrt_build": ("BuildOptions", "build_engine"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "BuildOptions",
    "Comparison",
    "ExportOptions",
    "TapAgreement",
    "build_engine",
    "compare_artifact",
    "compare_outputs",
    "export_onnx",
    "tap_agreement",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
