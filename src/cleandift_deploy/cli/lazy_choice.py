"""A click choice whose values live in a heavy module, imported only when the values are needed.

Every command module is imported to list the commands, so a `click.Choice(RESIZE_POLICIES)` at
module level would import torch (or onnx) for `cleandift-deploy --help`. `LazyChoice` reads the
values the first time a command parses its options or prints its own help.
"""

from __future__ import annotations

import importlib
from typing import Any

import click


class LazyChoice(click.Choice[str]):
    """`click.Choice` over the values at `module:attribute`
    (e.g. `cleandift_deploy.runtime.preprocess:RESIZE_POLICIES`)."""

    def __init__(self, target: str, case_sensitive: bool = True) -> None:
        self.target = target
        self.case_sensitive = case_sensitive

    def __getattr__(self, name: str) -> Any:
        if name != "choices":
            raise AttributeError(name)
        module, attribute = self.target.split(":")
        self.choices = tuple(getattr(importlib.import_module(module), attribute))
        return self.choices
