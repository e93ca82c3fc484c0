"""The server's `flowc` commands: `flowc serve` and `flowc page`."""

from __future__ import annotations

import click

from server.emucli import EMULATOR_COMMANDS
from server.pagecli import page_group
from server.serve import serve_command

#: The commands `flowc` adds for the server.
SERVER_COMMANDS: list[click.Command] = [
    serve_command,
    page_group,
    *EMULATOR_COMMANDS,
]
