"""`flowc monitor` (being built: issue 5)."""

from __future__ import annotations

import click


@click.command("monitor")
def monitor_command() -> None:
    """Show pages' health, message counts and flow statistics."""
    raise click.ClickException("not built yet")
