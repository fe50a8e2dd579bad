"""The evaluation methods by name: an explicit mapping of factories, each importing its
implementation only when called (so listing the names stays cheap)."""

from __future__ import annotations

from dataclasses import replace

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
    "descriptor": _descriptor,  # the descriptor presets (cleandift, dift, sd-dino, geoaware)
    "hedlin": _hedlin,  # prompt-optimised attention (Hedlin et al.)
    "hyperfeatures": _hyperfeatures,  # Diffusion Hyperfeatures
}
"""Evaluation factories by key (a catalog entry's `evaluation` names one)."""


def register_method(name: str, factory: MethodFactory) -> None:
    """Make `factory` available as `--method NAME` (tests and plug-ins; replaces an earlier one)."""
    METHODS[name] = factory


def method_names() -> tuple[str, ...]:
    """What `eval pck --method` accepts: the catalog's methods, then any other registered
    factory (plug-ins and tests); the catalog's evaluation keys themselves stay internal."""
    from .catalog import CATALOG

    internal = {entry.evaluation for entry in CATALOG.values()} - set(CATALOG)
    return (*CATALOG, *(n for n in METHODS if n not in CATALOG and n not in internal))


def check_method(name: str) -> str:
    """`name` when a method has it; otherwise one line listing the methods."""
    if name not in METHODS and name not in method_names():
        raise CleanDiftError(f"unknown method {name!r}: choose one of {', '.join(method_names())}")
    return name


def build_method(name: str, options: MethodOptions) -> Method:
    """The method `name` built with `options`: a catalog entry builds its evaluation factory
    with the entry's own descriptor preset; any other name is a registered factory."""
    from .catalog import CATALOG

    entry = CATALOG.get(check_method(name))
    if entry is None:
        return METHODS[name](options)
    if entry.descriptor is not None:
        options = replace(options, descriptor=entry.descriptor.name)
    return METHODS[entry.evaluation](options)
