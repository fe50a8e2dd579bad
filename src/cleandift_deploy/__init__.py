"""cleandift-deploy: CleanDIFT diffusion features from PyTorch to ONNX, TensorRT and matching.

Layers, lowest first (each package imports only from those before it; `make lint` checks it):
errors < atomic, values < manifest < kernels < models < descriptors < runtime < export < train
< eval < methods < serve < cli (< demo).
"""

__version__ = "0.1.0"
