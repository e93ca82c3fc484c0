"""The server's `flowc` commands: `serve`, `page`, `webhook`, `monitor` and the emulator's."""

from __future__ import annotations

import click

from server.emucli import EMULATOR_COMMANDS
from server.monitorcli import monitor_command
from server.pagecli import page_group
from server.serve import serve_command
from server.webhookcli import webhook_group

#: The commands `flowc` adds for the server.
SERVER_COMMANDS: list[click.Command] = [
    serve_command,
    page_group,
    webhook_group,
    monitor_command,
    *EMULATOR_COMMANDS,
]
