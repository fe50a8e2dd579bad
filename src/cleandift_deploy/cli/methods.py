"""`cleandift-deploy methods`: the catalog of methods as a table, or as JSON with `--json`."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..methods.catalog import TABLE_COLUMNS, as_records, table_rows


@click.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Every entry as JSON (all its fields).")
def methods_command(as_json: bool) -> None:
    """The methods this toolkit deploys: backbones, taps, timestep, ensemble, size and the SPair
    PCK@0.1 their papers report. `export --method NAME` and `eval pck --method NAME` use them."""
    if as_json:
        click.echo(json.dumps(as_records(), indent=2))
        return
    table = Table(title="methods (methods/catalog.py)")
    for column in TABLE_COLUMNS:
        table.add_column(column)
    for row in table_rows():
        table.add_row(*row)
    Console().print(table)


COMMANDS: list[click.Command] = [methods_command]
