"""The options and parsers every verb shares: ONE parser per concept.

Image sizes (`HxW` or one number), tap lists (comma-separated and/or repeated), batch ranges and
batch lists, the model SOURCE options, and the noise / FreeU options of `export`. The text parsing
itself lives in `cleandift_deploy.values` (the HTTP server parses the same values); this module
turns it into click options and click errors. Import nothing heavy here: every verb imports it
to list its options.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ..errors import CleanDiftError
from ..methods.catalog import RECIPES
from ..models.configs import ARCHS
from ..runtime.precision import PrecisionRequest
from ..values import parse_batch_range, parse_positive_ints, split_list
from ..values import parse_size as _parse_size

F = TypeVar("F", bound=Callable[..., Any])


def parse_size(text: str) -> tuple[int, int]:
    """`HxW` (or one number for a square) as (H, W)."""
    return _parse_size(text)


def parse_size_range(
    texts: tuple[str, str] | None,
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """`--size-range HMINxWMIN HMAXxWMAX` as two (H, W) pairs, or None when not given."""
    return None if texts is None else (parse_size(texts[0]), parse_size(texts[1]))


def parse_batch(text: str) -> tuple[int, int, int]:
    """`--batch MIN:OPT:MAX` (or one number for a static batch) as three ints."""
    return parse_batch_range(text)


def parse_batch_sizes(value: str | None) -> tuple[int, ...]:
    """Comma-separated positive batch sizes (`1,2,4,8`); () when not given."""
    if not value:
        return ()
    try:
        return parse_positive_ints(value)
    except CleanDiftError as err:
        raise click.BadParameter(str(err)) from None


def split_taps(values: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Taps as typed: `us3,us6`, a repeated `--taps`, or both; None when none were given."""
    if values is None:
        return None
    taps = split_list(values)
    return taps or None


def given_options(ctx: click.Context) -> set[str]:
    """The parameters of the running command that the user typed (not defaults)."""
    return {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)
    }


SOURCE_HELP = (
    "a model folder, a .safetensors file, or a Hugging Face repo id ORG/NAME[:FILE][@REVISION] "
    "read offline from the local cache"
)
"""What every SOURCE accepts (`models.sources`; docs/model-sources.md)."""


def check_model_source(_ctx: click.Context, _param: click.Parameter, value: Any) -> str | None:
    """Resolve a SOURCE when the command line is parsed (`models.sources`: configs and headers
    only, no network), so a missing path, repo, revision or file fails in one line before any
    heavy import. The loaders resolve the same text again."""
    if value is None:
        return None
    from ..models.sources import resolve_source_files

    resolve_source_files(str(value))
    return str(value)


def source_option(*names: str, help: str) -> Callable[[F], F]:
    """An option taking a model SOURCE (`--source`, `--teacher`), checked like the argument."""
    return click.option(
        *names, callback=check_model_source, metavar="SOURCE", help=f"{help} ({SOURCE_HELP})."
    )


def source_argument(func: F) -> F:
    """The optional SOURCE argument, checked when parsed (see `check_model_source`)."""
    return click.argument("source", required=False, callback=check_model_source)(func)


def model_source_options(func: F) -> F:
    """SOURCE plus `--arch` and `--random-init`, shared by every verb that reads a model."""
    decorators = [
        source_argument,
        click.option(
            "--arch",
            type=click.Choice(list(ARCHS)),
            help="Architecture of a bare checkpoint, or of --random-init.",
        ),
        click.option(
            "--random-init", is_flag=True, help="Random weights for --arch (size and speed work)."
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Seed for --random-init."
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def noise_options(command: F) -> F:
    """The noise and FreeU options of `export` (read by `recipes.with_recipe`), and `--recipe`,
    the old spelling of `--method`."""
    options = [
        click.option(
            "--recipe",
            callback=method_callback(tuple(RECIPES)),
            hidden=True,
            help="Old spelling of --method.",
        ),
        click.option("--noise-timestep", type=int, help="Noisy features at this t (DIFT: 261)."),
        click.option("--ensemble", type=int, help="Noise draws averaged in the graph [1]."),
        click.option("--noise-seed", type=int, help="Seed of the fixed noise [0]."),
        click.option(
            "--latent",
            type=click.Choice(["sample", "mean"]),
            help="Posterior sample per copy or its mean [sample with noise].",
        ),
        click.option(
            "--random-noise", is_flag=True, help="Fresh noise on every call (no agreement)."
        ),
        click.option("--freeu/--no-freeu", default=None, help="FreeU in up blocks 0 and 1."),
        click.option(
            "--freeu-factors",
            nargs=4,
            type=float,
            metavar="B1 B2 S1 S2",
            help="FreeU factors [GeoAware's 1.2 1.4 0.9 0.2].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def precision_options(func: F) -> F:
    """`--precision fp32|bf16`, `--calibration-images DIR`, `--min-agreement`: bf16 on the CPU
    behind the fidelity gate, shared by every verb that runs a model."""
    decorators = [
        click.option(
            "--precision",
            type=click.Choice(["fp32", "bf16"]),
            default="fp32",
            show_default=True,
            help="bf16 (AMX / AVX512_BF16) runs only where it keeps --min-agreement of the "
            "exact engine's matches on --calibration-images; else the exact engine runs.",
        ),
        click.option(
            "--calibration-images",
            "calibration_images",
            type=click.Path(path_type=Path),
            default=None,
            help="With --precision bf16: a folder of a few of your images (at least 2).",
        ),
        click.option(
            "--min-agreement",
            type=click.FloatRange(0.0),
            default=0.99,
            show_default=True,
            help="With --precision bf16: share of nearest-neighbour matches bf16 must keep.",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def precision_request(
    precision: str,
    calibration_images: Path | None,
    min_agreement: float,
    calibrate_on_requests: int | None = None,
) -> PrecisionRequest:
    """The parsed precision options; `calibrate_on_requests` is serve's own (None for verbs
    without it). Calibration without bf16, bf16 without calibration and both calibration
    sources at once are refused."""
    on_requests = bool(calibrate_on_requests)
    if precision == "fp32" and (calibration_images is not None or on_requests):
        given = "--calibration-images" if calibration_images else "--calibrate-on-requests"
        raise CleanDiftError(f"{given} is for --precision bf16: add it or drop {given}")
    if calibration_images is not None and on_requests:
        raise CleanDiftError("give --calibration-images or --calibrate-on-requests, not both")
    if calibrate_on_requests == 1:
        raise CleanDiftError(
            "--calibrate-on-requests needs at least 2 images: matches are measured between images"
        )
    if precision == "bf16" and calibration_images is None and not on_requests:
        serve_too = "" if calibrate_on_requests is None else " or --calibrate-on-requests N"
        raise CleanDiftError(
            "--precision bf16 needs calibration images to measure what bf16 changes: pass "
            f"--calibration-images DIR{serve_too} (a few of your own images)"
        )
    return PrecisionRequest(
        precision, calibration_images, min_agreement, calibrate_on_requests or 0
    )


def method_callback(names: Iterable[str]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that refuses a method name outside `names` in one line (exit 2), while
    the options are parsed: before any file is read."""
    known = tuple(names)

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and value not in known:
            raise CleanDiftError(f"unknown method {value!r}: choose one of {', '.join(known)}")
        return value

    return check


def method_option(names: Iterable[str], what: str) -> Callable[[F], F]:
    """`--method NAME`, its help listing the choices."""
    known = tuple(names)
    return click.option(
        "--method",
        default=None,
        metavar="NAME",
        callback=method_callback(known),
        help=f"{what} One of: {', '.join(known)} (`cleandift-deploy methods` lists them).",
    )


def renamed_to_method(old_flag: str, old: str | None, method: str | None) -> str | None:
    """`--method`, or the value of its old spelling with a one-line notice naming the new one."""
    if old is None:
        return method
    click.echo(f"note: {old_flag} is now --method: use --method {old}", err=True)
    if method is not None and method != old:
        raise CleanDiftError(f"give the method once: --method {method} or {old_flag} {old}")
    return old


def output_option(help_text: str = "Output path.", dest: str = "out") -> Callable[[F], F]:
    """`-o/--output PATH` in every verb (`--out` is accepted too)."""
    return click.option(
        "-o",
        "--output",
        "--out",
        dest,
        required=True,
        type=click.Path(path_type=Path),
        help=f"{help_text} (`--out` works too)",
    )


def _size_callback(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, int] | None:
    return None if value is None else parse_size(value)


def image_size_option(help_text: str) -> Callable[[F], F]:
    """`--image-size HxW` (or one number for a square) as (H, W); the older `--image-size H W`
    is accepted too (`join_image_sizes` rewrites it before parsing)."""
    return click.option(
        "--image-size",
        default=None,
        metavar="HxW",
        callback=_size_callback,
        help=f"{help_text} HxW, or N for a square.",
    )


def join_image_sizes(args: list[str]) -> list[str]:
    """`--image-size H W` (the older two-number form) as `--image-size HxW`."""
    joined: list[str] = []
    index = 0
    while index < len(args):
        pair = args[index + 1 : index + 3]
        if args[index] == "--image-size" and len(pair) == 2 and all(v.isdigit() for v in pair):
            joined += [args[index], f"{pair[0]}x{pair[1]}"]
            index += 3
        else:
            joined.append(args[index])
            index += 1
    return joined


def taps_option(help_text: str, default: tuple[str, ...] = ()) -> Callable[[F], F]:
    """`--taps us3,us6` or `--taps us3 --taps us6` (both work in every verb; read them with
    `split_taps`)."""
    shown = f" [default: {','.join(default)}]" if default else ""
    return click.option(
        "--taps",
        multiple=True,
        default=default,
        metavar="TAP[,TAP...]",
        help=f"{help_text} Comma-separated and/or repeated.{shown}",
    )
