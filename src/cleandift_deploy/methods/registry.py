"""The evaluation methods by name: an explicit mapping of factories, each importing its
implementation only when called (so listing the names stays cheap)."""

from __future__ import annotations

from ..errors import CleanDiftError
from ..eval.protocol import Method, MethodFactory, MethodOptions


def _features(options: MethodOptions) -> Method:
    from .features import FeaturesMethod

    return FeaturesMethod(options)


def _descriptor(options: MethodOptions) -> Method:
    from .descriptor import DescriptorMethod

    return DescriptorMethod(options)


def _hedlin(options: MethodOptions) -> Method:
    from .hedlin.method import HedlinMethod

    return HedlinMethod(options)


def _hyperfeatures(options: MethodOptions) -> Method:
    from .hyperfeatures.method import build

    return build(options)


METHODS: dict[str, MethodFactory] = {
    "features": _features,  # one artifact, one tap
    "descriptor": _descriptor,  # presets over SD (+ DINOv2)
    "hedlin": _hedlin,  # prompt-optimised attention (Hedlin et al.)
    "hyperfeatures": _hyperfeatures,  # Diffusion Hyperfeatures
}
"""`eval pck --method NAME` -> the factory that builds it."""


def register_method(name: str, factory: MethodFactory) -> None:
    """Make `factory` available as `--method NAME` (tests and plug-ins; replaces an earlier one)."""
    METHODS[name] = factory


def check_method(name: str) -> str:
    """`name` when a method has it; otherwise one line listing the methods."""
    if name not in METHODS:
        known = ", ".join(sorted(METHODS)) or "none"
        raise CleanDiftError(f"unknown method {name!r}: choose one of {known}")
    return name


def build_method(name: str, options: MethodOptions) -> Method:
    """The method registered as `name`, built with `options`."""
    return METHODS[check_method(name)](options)
