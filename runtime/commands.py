"""The runtime's `flowc` commands (`flowc chat`, and the other runtime commands when present).

`flowlang/cli.py` adds every command in `COMMANDS` to `flowc`. `python -m runtime.commands`
runs them without the compiler's CLI (handy while it is being changed)."""

from __future__ import annotations

import importlib
import random
import sys
import time
from typing import Any

import click

from flowlang.load import compile_paths, find_flow_files
from flowlang.render import render
from runtime.chat import (
    DEFAULT_EMAIL,
    DEFAULT_PHONE,
    DEFAULT_PROFILE,
    ChatSession,
    run_interactive,
    run_json,
)
from runtime.program import ProgramView


def _read_line(prompt: str) -> str | None:
    click.echo(prompt, nl=False)
    line = sys.stdin.readline()
    if line and not sys.stdin.isatty():
        click.echo(line.rstrip("\r\n"))  # show piped input, so the output reads as a dialogue
    return line if line else None


@click.command("chat")
@click.argument("flows", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Scriptable mode: read one input per line from stdin, print one JSON line per bot "
    "message (the Send API request body). Nothing is slept.",
)
@click.option(
    "--actions",
    is_flag=True,
    help="With --json, also print typing indicators and hand-over requests.",
)
@click.option(
    "--first-name",
    default=DEFAULT_PROFILE["first_name"],
    show_default=True,
    help="The user's first name, {{ user.first_name }} in texts.",
)
@click.option(
    "--last-name",
    default=DEFAULT_PROFILE["last_name"],
    show_default=True,
    help="{{ user.last_name }}.",
)
@click.option(
    "--locale", default=DEFAULT_PROFILE["locale"], show_default=True, help="{{ user.locale }}."
)
@click.option(
    "--timezone",
    default=DEFAULT_PROFILE["timezone"],
    type=float,
    show_default=True,
    help="{{ user.timezone }}: hours from UTC.",
)
@click.option("--gender", default=DEFAULT_PROFILE["gender"], help="{{ user.gender }}.")
@click.option(
    "--profile-pic", default=DEFAULT_PROFILE["profile_pic"], help="{{ user.profile_pic }}."
)
@click.option(
    "--email",
    default=DEFAULT_EMAIL,
    show_default=True,
    help="What the 'share your email' quick reply sends.",
)
@click.option(
    "--phone",
    default=DEFAULT_PHONE,
    show_default=True,
    help="What the 'share your phone number' quick reply sends.",
)
@click.option("--psid", default="chat-user", show_default=True, help="The simulated user's id.")
@click.option("--page-id", default="chat-page", show_default=True)
@click.option("--seed", type=int, default=None, help="Pick the same text variations every run.")
@click.option("--fast", is_flag=True, help="Do not wait during pauses and typing.")
def chat_command(
    flows: tuple[str, ...],
    as_json: bool,
    actions: bool,
    first_name: str,
    last_name: str,
    locale: str,
    timezone: float,
    gender: str,
    profile_pic: str,
    email: str,
    phone: str,
    psid: str,
    page_id: str,
    seed: int | None,
    fast: bool,
) -> None:
    """Talk to your flows in the terminal, as a Messenger user would.

    FLOWS are .flow files or folders. Buttons and quick replies are numbered: type the
    number to tap one. Type /help inside the chat for everything you can type.

    \b
    Scripted:  printf 'pricing\\nAda\\n' | flowc chat flows/ --json
    """
    if not find_flow_files(flows):
        raise click.UsageError(f"no .flow files found in {', '.join(flows)}")
    result = compile_paths(flows)
    if result.diagnostics:
        click.echo(render(result.diagnostics, result.sources, "short"), err=True)
    if result.program is None:
        click.echo("chat: the flows have errors; fix them first (flowc check)", err=True)
        raise SystemExit(1)
    profile: dict[str, Any] = {
        "first_name": first_name,
        "last_name": last_name,
        "locale": locale,
        "timezone": int(timezone) if float(timezone).is_integer() else timezone,
        "gender": gender,
        "profile_pic": profile_pic,
    }
    session = ChatSession(
        ProgramView(result.program),
        page_id=page_id,
        psid=psid,
        profile=profile,
        email=email,
        phone=phone,
        rng=random.Random(seed) if seed is not None else None,
    )

    def out(text: str) -> None:
        click.echo(text)

    def err(text: str) -> None:
        click.echo(text, err=True)

    if as_json:
        run_json(session, sys.stdin, out, err, actions=actions)
    else:
        run_interactive(session, _read_line, out, err, sleep=None if fast else time.sleep)


def _optional(module: str, name: str) -> list[click.Command]:
    """A command from another runtime module, when that module is installed and loads."""
    try:
        command = getattr(importlib.import_module(module), name)
    except Exception:  # a missing or broken optional command must not take `chat` down
        return []
    return [command] if isinstance(command, click.Command) else []


def _optional_list(module: str, name: str) -> list[click.Command]:
    """A list of commands from another package (the server's), when it is installed and loads.
    Imported by name: the runtime does not depend on the server."""
    try:
        commands = getattr(importlib.import_module(module), name)
    except Exception:  # a missing or broken server must not take the runtime commands down
        return []
    return [c for c in commands if isinstance(c, click.Command)]


#: The commands `flowc` adds: chat, plus `test`, `db` and the server's (`serve`, `page`)
#: when their modules are present.
COMMANDS: list[click.Command] = [
    chat_command,
    *_optional("runtime.testcli", "test_command"),
    *_optional("runtime.dbcli", "db_group"),
    *_optional("runtime.usercli", "user_group"),
    *_optional("runtime.newcli", "new_command"),
    *_optional_list("server.commands", "SERVER_COMMANDS"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Flowlang runtime commands."""


for _command in COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()
