"""Shapes of an export: the tracing shape, the dynamic ranges, and sample inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import CleanDiftError
from ..manifest import ShapeRange
from . import check_image_size
from .configs import default_image_size
from .graph_options import ExportOptions
from .prompt import PROMPT_LENGTH
from .taps import LATENT_STRIDE


@dataclass(frozen=True)
class ShapePlan:
    """Batch, height and width ranges (image pixels) of one export."""

    batch: ShapeRange
    height: ShapeRange
    width: ShapeRange

    @property
    def dynamic(self) -> dict[str, bool]:
        """Which of batch, height and width vary."""
        return {
            name: r.min != r.max
            for name, r in (("batch", self.batch), ("height", self.height), ("width", self.width))
        }


def plan_shapes(arch: str, options: ExportOptions) -> ShapePlan:
    """The shape ranges for these options; sizes are checked to be multiples of 64."""
    default = default_image_size(arch)
    height, width = (default if s is None else int(s) for s in options.image_size)
    explicit = options.image_size != (None, None)
    return plan_ranges(
        (height, width), options.size_range, explicit, options.batch, check_image_size
    )


def plan_ranges(
    size: tuple[int, int],
    size_range: tuple[tuple[int, int], tuple[int, int]] | None,
    explicit_size: bool,
    batch: tuple[int, int, int],
    check_size: Callable[[int, int], None],
) -> ShapePlan:
    """Ranges from an optimisation `size` and an optional size range (whose maximum is the
    optimisation size unless one was given explicitly); every size passes `check_size`."""
    height, width = size
    if size_range is None:
        (h_min, w_min), (h_max, w_max) = (height, width), (height, width)
    else:
        (h_min, w_min), (h_max, w_max) = size_range
        if not explicit_size:
            height, width = h_max, w_max
    refused = []  # every bad size in one line: fixing one should not reveal the next
    for h, w in dict.fromkeys(((h_min, w_min), (h_max, w_max), (height, width))):
        try:
            check_size(h, w)
        except CleanDiftError as err:
            refused.append(str(err))
    if refused:
        raise CleanDiftError("; ".join(refused))
    if not (h_min <= height <= h_max and w_min <= width <= w_max):
        raise CleanDiftError(
            f"image size {height}x{width} lies outside the size range "
            f"{h_min}x{w_min}..{h_max}x{w_max}: choose an --image-size inside it"
        )
    low, opt, high = batch
    return ShapePlan(
        ShapeRange(low, opt, high),
        ShapeRange(h_min, height, h_max),
        ShapeRange(w_min, width, w_max),
    )


def sample_inputs(
    plan: ShapePlan,
    vae: bool,
    prompt_input: bool,
    cross_attention_dim: int,
    batch: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """Fresh random graph inputs at the optimisation shape (or another batch size)."""
    n = plan.batch.opt if batch is None else batch
    h, w = plan.height.opt, plan.width.opt
    if vae:
        first = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=generator)
    else:
        first = torch.randn(n, 4, h // LATENT_STRIDE, w // LATENT_STRIDE, generator=generator)
    if not prompt_input:
        return (first,)
    context = torch.randn(n, PROMPT_LENGTH, cross_attention_dim, generator=generator)
    return first, context


def dynamic_axes(
    plan: ShapePlan, input_names: list[str], output_names: tuple[str, ...]
) -> dict[str, dict[int, str]]:
    """`torch.onnx.export` dynamic axes: batch, height and width where their ranges vary."""
    dynamic = plan.dynamic
    spatial = {}
    if dynamic["batch"]:
        spatial[0] = "batch"
    axes: dict[str, dict[int, str]] = {}
    for index, name in enumerate(input_names):
        entry = dict(spatial)
        if index == 0:
            if dynamic["height"]:
                entry[2] = "height"
            if dynamic["width"]:
                entry[3] = "width"
        if entry:
            axes[name] = entry
    for name in output_names:
        entry = dict(spatial)
        if dynamic["height"]:
            entry[2] = f"{name}_height"
        if dynamic["width"]:
            entry[3] = f"{name}_width"
        if entry:
            axes[name] = entry
    return axes
