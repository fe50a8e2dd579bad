"""CLI verbs of this subpackage, registered by `cleandift_deploy.cli`."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
