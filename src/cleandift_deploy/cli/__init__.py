"""The `cleandift-deploy` command line: click verbs, one module per verb group (registered here),
and `options` (the shared option parsers). Bad input ends in one line on stderr and exit status 2.

The top layer and the ONLY package that imports click; may import every package below it.
Keep module-level imports light (`--help` must not import torch): heavy work is imported inside
each command.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import CleanDiftError
from .bench import COMMANDS as BENCH_COMMANDS
from .dinov2 import COMMANDS as DINOV2_COMMANDS
from .eval import COMMANDS as EVAL_COMMANDS
from .eval import eval_group
from .export import COMMANDS as EXPORT_COMMANDS
from .extract import COMMANDS as RUNTIME_COMMANDS
from .fusion import COMMANDS as FUSION_COMMANDS
from .hyperfeatures import COMMANDS as HYPERFEATURE_COMMANDS
from .methods import COMMANDS as METHOD_COMMANDS
from .models import COMMANDS as MODEL_COMMANDS
from .options import join_image_sizes
from .probe import COMMANDS as PROBE_COMMANDS
from .probe import EVAL_SUBCOMMANDS
from .serve import COMMANDS as SERVE_COMMANDS
from .train import COMMANDS as TRAIN_COMMANDS
from .triton import COMMANDS as TRITON_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cleandift-deploy")
def cli() -> None:
    """CleanDIFT diffusion features: export, build, run and match."""


for command in (
    *MODEL_COMMANDS,
    *METHOD_COMMANDS,
    *EXPORT_COMMANDS,
    *DINOV2_COMMANDS,
    *RUNTIME_COMMANDS,
    *FUSION_COMMANDS,
    *TRAIN_COMMANDS,
    *HYPERFEATURE_COMMANDS,
    *EVAL_COMMANDS,
    *PROBE_COMMANDS,
    *TRITON_COMMANDS,
    *BENCH_COMMANDS,
    *SERVE_COMMANDS,
):
    cli.add_command(command)
for command in EVAL_SUBCOMMANDS:
    eval_group.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning toolkit errors into one line and a non-zero exit."""
    try:
        args = join_image_sizes(sys.argv[1:] if argv is None else list(argv))
        cli.main(args=args, prog_name="cleandift-deploy", standalone_mode=False)
    except CleanDiftError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
