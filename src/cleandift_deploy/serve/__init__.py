"""Serving: the HTTP app (local ASGI server, Ray Serve), Ray Data batch extraction and Triton
model repositories.

May import every package below it (methods, eval, train, export, runtime, descriptors, models,
kernels, manifest, atomic, values, errors); never cli.
"""
