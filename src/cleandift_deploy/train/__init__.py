"""Training: CleanDIFT distillation (data, noising, heads, loop, resumable state) and turning a
trained student into a deployable checkpoint.

May import: export, runtime, descriptors, models, kernels, manifest, atomic, values, errors.
"""

WARMUP_STEPS = 2000
"""CleanDIFT's linear learning-rate warm-up (its training config); `train` clamps it to --steps."""
