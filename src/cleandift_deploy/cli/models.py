"""CLI verbs about models: `info`, and the SOURCE options every model-reading verb shares."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from ..models.configs import default_image_size
from ..models.shapes import check_image_size
from ..models.taps import tap_specs
from .options import image_size_option, model_source_options


def _print_source(console: Console, source: str) -> bool:
    """Print what `source` resolved to (configs and headers only); True when that is all there
    is to say (DINOv2: size and tap from its config), False when the UNet is to be loaded."""
    from ..models.source_info import dino_rows, summarise_source
    from ..models.sources import resolve_source_files

    resolved = resolve_source_files(source)
    summary = summarise_source(resolved)
    rows = summary.rows + (dino_rows(resolved, summary.arch) if summary.kind == "dinov2" else [])
    for label, value in rows:
        console.print(f"{label:<13} {value}", soft_wrap=True)
    return summary.kind == "dinov2"


@click.command()
@model_source_options
@image_size_option("Image size for the tap shapes (default: the architecture's):")
def info(
    source: str | None,
    arch: str | None,
    random_init: bool,
    seed: int,
    image_size: tuple[int, int] | None,
) -> None:
    """What SOURCE resolves to (files, layout, architecture, hashes), told before any weights
    load; then the parameter count and taps (channels, stride, shape) of the model."""
    from ..models.loading import resolve_source

    console = Console()
    if source is not None and not random_init and _print_source(console, source):
        return
    loaded = resolve_source(source, arch=arch, random_init=random_init, seed=seed, device="meta")
    if source is None:
        console.print(f"source        {loaded.source}")
        console.print(f"architecture  {loaded.arch}")
    config = loaded.unet.config
    default = default_image_size(loaded.arch)
    height, width = image_size or (default, default)
    check_image_size(height, width)
    params = sum(p.numel() for p in loaded.unet.parameters())
    console.print(f"UNet params   {params / 1e6:.1f}M ({params:,})")
    console.print(f"cross-attn    {config.cross_attention_dim}")
    console.print(
        f"timestep      {loaded.timestep:g}"
        + (" (learned)" if loaded.learned_timestep is not None else "")
    )
    table = Table(title=f"taps at {height}x{width} px")
    for column in ("tap", "channels", "stride", "shape (C,h,w)"):
        table.add_column(column)
    for name, spec in tap_specs(config).items():
        shape = f"{spec.channels}x{height // spec.stride}x{width // spec.stride}"
        table.add_row(name, str(spec.channels), str(spec.stride), shape)
    console.print(table)


COMMANDS: list[click.Command] = [info]
