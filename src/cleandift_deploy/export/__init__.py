"""ONNX export with graph clean-up and mixed fp16, TensorRT builds, and agreement checks."""

from .agreement import TapAgreement, compare_outputs, tap_agreement
from .exporter import export_onnx
from .options import ExportOptions

__all__ = ["ExportOptions", "TapAgreement", "compare_outputs", "export_onnx", "tap_agreement"]
