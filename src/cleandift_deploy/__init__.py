"""cleandift-deploy: CleanDIFT diffusion features from PyTorch to ONNX, TensorRT and matching."""

__version__ = "0.1.0"
