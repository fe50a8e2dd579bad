"""Methods: what each correspondence method is (the catalog) and its implementation.

`registry` builds an evaluation method by name; `features` (one artifact, one tap),
`descriptor` (SD / DINOv2 descriptor presets), `hedlin/` and `hyperfeatures/` implement them.
May import every package below it (eval, train, export, runtime, descriptors, models, kernels,
errors/atomic/manifest); never serve or cli. Nothing heavy is imported here.
"""
