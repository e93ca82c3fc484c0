"""`flowc webhook`: check and manage the Messenger webhook (being built: issue 5)."""

from __future__ import annotations

import click


@click.group("webhook")
def webhook_group() -> None:
    """Check and manage the Messenger webhook."""
