"""CLI verbs for the DINOv2 backbone: `export-dinov2` and `convert-dinov2`.

A verb of its own rather than `export --backbone dinov2`: none of `export`'s UNet options (taps,
timestep, prompt, VAE) applies to DINOv2, and its sizes follow another rule (multiples of 14).
The built artifact goes through the usual `build` and `compare` verbs.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from .options import image_size_option, output_option, source_argument

console = Console(stderr=True)
DINO_ARCH_NAMES = (
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "dinov2_vitg14",
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
    "dinov2_vitl14_reg",
    "dinov2_vitg14_reg",
    "dinov2_tiny",
    "dinov2_tiny_reg",
)
"""The names of `models.dinov2.DINO_ARCHS`, listed here so `--help` needs no torch import."""


@click.command("export-dinov2")
@source_argument
@click.option("--arch", type=click.Choice(DINO_ARCH_NAMES), help="Size of bare weights / random.")
@click.option("--random-init", is_flag=True, help="Random weights for --arch (tests, speed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init.")
@output_option()
@click.option("--layer", type=int, help="Block whose output is taken (default: the last).")
@image_size_option("Optimisation size (default 840x840):")
@click.option("--size-range", nargs=2, metavar="HMINxWMIN HMAXxWMAX", help="Dynamic size range.")
@click.option("--batch", default="1", show_default=True, help="MIN:OPT:MAX batch range.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--precision", type=click.Choice(("fp32", "fp16")), default="fp32", show_default=True)
@click.option("--no-agreement", is_flag=True, help="Skip the ONNX Runtime agreement check.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def export_dinov2_command(
    source: str | None,
    arch: str | None,
    random_init: bool,
    seed: int,
    out: Path,
    layer: int | None,
    image_size: tuple[int, int] | None,
    size_range: tuple[str, str] | None,
    batch: str,
    opset: int,
    precision: str,
    no_agreement: bool,
    force: bool,
) -> None:
    """Export DINOv2 to ONNX: uint8 images in, the token grid `dino` [B,C,H/14,W/14] out."""
    from ..export.agreement import TapAgreement
    from ..export.dinov2_export import DinoExportOptions, export_dinov2
    from ..models.dinov2 import resolve_dino
    from .export import agreement_table
    from .options import parse_batch, parse_size_range

    options = DinoExportOptions(
        layer=layer,
        image_size=image_size,
        size_range=parse_size_range(size_range),
        batch=parse_batch(batch),
        opset=opset,
        precision=precision,
        force=force,
        check_agreement=not no_agreement,
    )
    loaded = resolve_dino(source, arch=arch, random_init=random_init, seed=seed)
    with console.status(f"exporting {loaded.arch} ({precision}) to {out}"):
        manifest = export_dinov2(loaded, out, options)
    console.print(
        f"wrote {out}: layer {manifest.build['layer']}, {manifest.height.opt}x"
        f"{manifest.width.opt} px, {manifest.build['export_seconds']} s"
    )
    if manifest.agreement:
        record = {t: TapAgreement(**v) for t, v in manifest.agreement["taps"].items()}
        console.print(agreement_table("ONNX Runtime vs PyTorch fp32", record))
        for line in manifest.agreement["failures"]:
            console.print(f"[red]below threshold[/red] {line}")


@click.command("convert-dinov2")
@click.argument("pth", type=click.Path(path_type=Path))
@output_option()
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def convert_dinov2_command(pth: Path, out: Path, force: bool) -> None:
    """Convert an official DINOv2 .pth (read weights-only) to safetensors for transformers."""
    from ..models.dinov2_convert import convert_official

    count = convert_official(pth, out, force)
    console.print(f"wrote {out} ({count} tensors)")


COMMANDS: list[click.Command] = [export_dinov2_command, convert_dinov2_command]
