"""Hedlin et al., "Unsupervised Semantic Correspondence Using Stable Diffusion" (NeurIPS 2023):
prompt embeddings optimised per source keypoint so that cross-attention peaks there, then read
out on the target. PyTorch only (an optimisation per query point); `--method hedlin` in eval.

Modules: `settings` (the reference's numbers), `attention` (processor capture), `geometry`
(crops, Gaussian target, argmax), `streams` (per-embedding randomness), `model` (VAE + pruned
UNet -> maps), `optimise`, `readout`, `matcher` (one pair end to end), `method` (eval plug-in).
Nothing heavy is imported here, so registering the eval method stays cheap.

Part of `methods`: may import every package below it (eval, train, export, runtime, ...).
"""
