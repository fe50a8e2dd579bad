"""CLI verbs of this subpackage, registered by `cleandift_deploy.cli`: export, build, compare."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from ..errors import CleanDiftError
from ..export.recipes import with_recipe
from ..methods.catalog import RECIPES
from ..models.graph_options import PRECISIONS, ExportOptions
from ..models.taps import DEFAULT_TAP
from .lazy_choice import LazyChoice
from .options import (
    given_options,
    image_size_option,
    method_option,
    model_source_options,
    noise_options,
    output_option,
    parse_batch,
    parse_size_range,
    renamed_to_method,
    split_taps,
    taps_option,
)

if TYPE_CHECKING:
    from ..export.agreement import TapAgreement
    from ..manifest import Manifest
    from ..models.probe_heads import ProbeFile

console = Console(stderr=True)


def parse_head(text: str) -> ProbeFile:
    """`--head depth=PATH` / `segmentation=PATH`: the probe, checked against the task."""
    from ..models.probe_heads import TASKS, load_probe

    task, sep, path = text.partition("=")
    if not sep or task not in TASKS or not path:
        raise CleanDiftError(f"--head {text!r}: write depth=PROBE.safetensors or segmentation=...")
    probe = load_probe(Path(path))
    if probe.info.task != task:
        raise CleanDiftError(f"--head {text}: {path} is a {probe.info.task} probe, not {task}")
    return probe


def agreement_table(title: str, agreement: dict[str, TapAgreement]) -> Table:
    """Per-output agreement as a rich table."""
    table = Table(title=title)
    columns = ("output", "cos mean", "cos min", "rel L2", "max abs", "NaN/Inf", "NN match")
    for column in columns:
        table.add_column(column)
    for tap, a in agreement.items():
        table.add_row(
            tap,
            f"{a.cosine_mean:.7f}",
            f"{a.cosine_min:.7f}",
            f"{a.relative_l2:.2e}",
            f"{a.max_abs:.2e}",
            str(a.nonfinite),
            f"{a.match_agreement:.1%}",
        )
    return table


def print_agreement(manifest: Manifest) -> None:
    """The agreement an export measured (if any) as a table, and every threshold it missed."""
    from ..export.agreement import TapAgreement

    if manifest.agreement:
        taps_record = {t: TapAgreement(**v) for t, v in manifest.agreement["taps"].items()}
        console.print(agreement_table("ONNX Runtime vs PyTorch fp32", taps_record))
        for line in manifest.agreement["failures"]:
            console.print(f"[red]below threshold[/red] {line}")


@click.command()
@model_source_options
@method_option(RECIPES, "Method whose export recipe fills the defaults (options given win).")
@output_option()
@taps_option("Taps to export.", default=(DEFAULT_TAP,))
@click.option("--timestep", type=float, help="Default: learned (*_full checkpoint), else 261.")
@click.option(
    "--prompt",
    default="",
    help="Prompt whose embedding is baked in (default: empty; with --head: the probe's).",
)
@click.option("--prompt-input", is_flag=True, help="Take encoder_hidden_states as an input.")
@click.option("--no-vae", is_flag=True, help="Take latents [B,4,h,w] instead of images.")
@image_size_option("Optimisation size (px):")
@click.option("--batch", default="1", show_default=True, help="MIN:OPT:MAX batch range.")
@click.option("--size-range", nargs=2, metavar="HMINxWMIN HMAXxWMAX", help="Dynamic size range.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--calibration-images",
    type=click.Path(path_type=Path),
    help="Real images: nodes whose fp32 activations pass 512 stay fp32 in an fp16 graph.",
)
@click.option("--no-agreement", is_flag=True, help="Skip the ONNX Runtime agreement check.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option(
    "--head",
    metavar="TASK=PROBE",
    help="Append a probe: depth=PROBE.safetensors or segmentation=PROBE.safetensors.",
)
@noise_options
def export(
    source: str | None,
    arch: str | None,
    random_init: bool,
    seed: int,
    method: str | None,
    out: Path,
    taps: tuple[str, ...],
    timestep: float | None,
    prompt: str,
    prompt_input: bool,
    no_vae: bool,
    image_size: tuple[int, int] | None,
    batch: str,
    size_range: tuple[str, str] | None,
    opset: int,
    precision: str,
    calibration_images: Path | None,
    no_agreement: bool,
    force: bool,
    head: str | None,
    **recipe_args: Any,
) -> None:
    """Export a UNet (+ VAE encoder) to ONNX: images in, one output per tap.

    `--method dift|sd-dino|geoaware|cleandift` fills the method's taps, noise, FreeU, size and
    prompt from the catalog (options given explicitly win); `--noise-timestep T` exports noisy
    (DIFT-style) features.
    """
    from ..export.exporter import export_onnx
    from ..models.loading import resolve_source

    options = ExportOptions(
        taps=split_taps(taps) or (DEFAULT_TAP,),
        timestep=timestep,
        prompt=prompt,
        prompt_input=prompt_input,
        vae=not no_vae,
        image_size=image_size or (None, None),
        batch=parse_batch(batch),
        size_range=parse_size_range(size_range),
        opset=opset,
        precision=precision,
        force=force,
        calibration_images=calibration_images,
        random_init=random_init,
        check_agreement=not no_agreement,
    )
    method = renamed_to_method("--recipe", recipe_args.pop("recipe"), method)
    recipe = None if method is None else RECIPES[method]
    ctx = click.get_current_context()
    options = with_recipe(options, recipe, given_options(ctx), **recipe_args)
    options.method = method
    loaded = resolve_source(source, arch=arch, random_init=random_init, seed=seed)
    spec = None
    if head is not None:
        from ..models.probe_graph import probe_prompt, probe_spec

        probe = parse_head(head)
        if ctx.get_parameter_source("prompt") == click.core.ParameterSource.DEFAULT:
            options.prompt = probe_prompt(probe)
        spec = probe_spec(loaded, probe, options)
    with console.status(f"exporting {loaded.arch} ({precision}) to {out}"):
        manifest = export_onnx(loaded, out, options, spec)
    build = manifest.build
    console.print(
        f"wrote {out}: nodes {build['nodes_traced']} traced -> {build['nodes_cleaned']} after "
        f"folding, {len(build['fp32_keep_list'])} calibrated fp32 nodes, "
        f"external data: {build['external_data']}, {build['export_seconds']} s"
    )
    print_agreement(manifest)


@click.command()
@click.argument("onnx_path", type=click.Path(path_type=Path))
@output_option()
@click.option(
    "--target",
    type=LazyChoice("cleandift_deploy.export.tensorrt_build:TARGETS"),
    default=None,
    help="Default: tensorrt where the full TensorRT is installed (engines Triton loads), "
    "else tensorrt-rtx; the choice is printed.",
)
@click.option(
    "--compute-capability", multiple=True, help="RTX target GPUs, e.g. 8.0 8.6 (repeatable)."
)
@click.option("--opt-level", type=click.IntRange(0, 5), help="Builder optimisation level.")
@click.option("--workspace", type=float, default=4.0, show_default=True, help="GB.")
@click.option("--timing-cache", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing engine.")
@click.option(
    "--hardware-compatible",
    is_flag=True,
    help="--target tensorrt: run on any Ampere or newer GPU, not only the build GPU's kind.",
)
def build(
    onnx_path: Path,
    out: Path,
    target: str | None,
    compute_capability: tuple[str, ...],
    opt_level: int | None,
    workspace: float,
    timing_cache: Path | None,
    force: bool,
    hardware_compatible: bool,
) -> None:
    """Build a TensorRT (or TensorRT-RTX) engine from an exported ONNX graph."""
    from ..export.tensorrt_build import BuildOptions, build_engine, default_target

    if not onnx_path.is_file():
        raise CleanDiftError(f"{onnx_path} does not exist: export a model first")
    chosen = ""
    if target is None:
        target = default_target()
        why = "TensorRT is installed" if target == "tensorrt" else "no full TensorRT here"
        chosen = f"; --target {target} ({why}; give --target to choose)"
    options = BuildOptions(target, compute_capability, opt_level, workspace, timing_cache, force)
    options.hardware_compatible = hardware_compatible
    with console.status(f"building {out} with {target}"):
        manifest = build_engine(onnx_path, out, options)
    size = out.stat().st_size / 1e6
    seconds = manifest.build["build_seconds"]
    console.print(f"wrote {out} ({size:.1f} MB) in {seconds} s{chosen}")


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--reference", help="Reference checkpoint (default: the manifest's source).")
@click.option("--save-golden", type=click.Path(path_type=Path), help="Save inputs and outputs.")
@click.option("--golden", type=click.Path(path_type=Path), help="Compare with saved outputs.")
@click.option(
    "--runtime",
    "--backend",
    "runtime",
    type=click.Choice(["onnxruntime", "openvino", "openvino-bf16"]),
    default="onnxruntime",
    show_default=True,
    help="Runs an ONNX graph (engines run in TensorRT).",
)
def compare(
    artifact: Path,
    reference: str | None,
    save_golden: Path | None,
    golden: Path | None,
    runtime: str,
) -> None:
    """Compare an artifact with the fp32 PyTorch reference; exit 1 below the thresholds."""
    from ..export.compare import compare_artifact

    with console.status(f"comparing {artifact}"):
        result = compare_artifact(artifact, reference, save_golden, golden, runtime)
    Console().print(
        agreement_table(f"{artifact} ({result.precision}) vs reference", result.agreement)
    )
    if result.failures:
        for line in result.failures:
            console.print(f"[red]below threshold[/red] {line}")
        raise SystemExit(1)  # click's non-standalone mode would swallow click.exceptions.Exit
    console.print("[green]all outputs within the thresholds[/green]")


COMMANDS: list[click.Command] = [export, build, compare]
