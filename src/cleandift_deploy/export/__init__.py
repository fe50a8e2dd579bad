"""ONNX export with graph clean-up and mixed fp16, TensorRT builds, and agreement checks."""

from .agreement import TapAgreement, compare_outputs, tap_agreement
from .compare import Comparison, compare_artifact
from .exporter import export_onnx
from .options import ExportOptions
from .tensorrt_build import BuildOptions, build_engine

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
