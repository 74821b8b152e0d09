"""What the master and worker commands share: turning the project's errors into an exit."""

from __future__ import annotations

import sys

import click

from common.errors import PkgfarmError


def run(group: click.Group, prog: str) -> None:
    """Run a click command group; a PkgfarmError prints its message and exits with 1."""
    try:
        group(prog_name=prog, standalone_mode=True)
    except PkgfarmError as exc:
        click.echo(f"{prog}: error: {exc.message}", err=True)
        sys.exit(1)
