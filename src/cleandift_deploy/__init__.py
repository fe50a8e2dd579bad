"""cleandift-deploy: CleanDIFT diffusion features from PyTorch to ONNX, TensorRT and fused matching."""

__version__ = "0.1.0"
