"""Serving: Triton model repositories, a Ray Serve endpoint, Ray Data batch extraction."""
