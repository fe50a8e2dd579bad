"""The `cleandift-deploy` command line. Bad input ends in one line on stderr and exit status 2."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import CleanDiftError
from .eval.commands import COMMANDS as EVAL_COMMANDS
from .eval.commands import eval_group
from .eval.probe_commands import COMMANDS as PROBE_COMMANDS
from .eval.probe_commands import EVAL_SUBCOMMANDS
from .export.commands import COMMANDS as EXPORT_COMMANDS
from .export.dinov2_commands import COMMANDS as DINOV2_COMMANDS
from .hyperfeatures.commands import COMMANDS as HYPERFEATURE_COMMANDS
from .models.commands import COMMANDS as MODEL_COMMANDS
from .runtime.bench_commands import COMMANDS as BENCH_COMMANDS
from .runtime.commands import COMMANDS as RUNTIME_COMMANDS
from .runtime.fusion_commands import COMMANDS as FUSION_COMMANDS
from .serve.commands import COMMANDS as SERVE_COMMANDS
from .serve.triton_commands import COMMANDS as TRITON_COMMANDS
from .train.commands import COMMANDS as TRAIN_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cleandift-deploy")
def cli() -> None:
    """CleanDIFT diffusion features: export, build, run and match."""


for command in (
    *MODEL_COMMANDS,
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
        cli.main(args=argv, prog_name="cleandift-deploy", standalone_mode=False)
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
