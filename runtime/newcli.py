"""`flowc new`: start a bot from commented example flows, with their transcript tests.

The examples are package data in runtime/scaffolds/. Each template is complete on its own (it
compiles and its tests pass without the others): flows lead to each other through payloads
(`sends "PRICING"`), not flow names, so a missing flow never breaks the ones present. `all`
adds page.flow (menu, ice breakers) and page.transcript, the tests of the flows together.

Files that exist are never replaced without `--force`; when one would be, nothing at all is
written, so a folder never ends up with half of a template."""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import click

#: The files of each template, in the order they are written.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "welcome": ("welcome.flow", "welcome.transcript"),
    "lead_generation": ("lead_generation.flow", "lead_generation.transcript"),
    "customer_service": ("customer_service.flow", "customer_service.transcript"),
}
#: `flowc new all`: every template, and the page that ties them together.
ALL = "all"
_PAGE_FILES = ("page.flow", "page.transcript")

#: The templates whose flows a template's buttons lead to (through payloads).
_LINKS: dict[str, tuple[str, ...]] = {
    "welcome": ("lead_generation", "customer_service"),
    "lead_generation": ("customer_service",),
}


class ScaffoldError(Exception):
    """The files could not be written; the message says why, in one line."""


@dataclass(frozen=True)
class Written:
    """One file `write_scaffold` wrote; `replaced` when it overwrote an existing file."""

    path: Path
    replaced: bool


def template_files(template: str) -> tuple[str, ...]:
    """The file names `template` writes (a template name, or "all")."""
    if template == ALL:
        return tuple(name for files in TEMPLATES.values() for name in files) + _PAGE_FILES
    return TEMPLATES[template]


def scaffold_text(name: str) -> str:
    """The text of one scaffold file, from the package data."""
    return resources.files("runtime").joinpath("scaffolds", name).read_text(encoding="utf-8")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def write_scaffold(template: str, directory: Path, *, force: bool = False) -> list[Written]:
    """Write the files of `template` into `directory` (created when missing).

    Without `force`, raises `ScaffoldError` and writes nothing when any of the files exists.
    Every file is written to a temporary file first and renamed into place at the end, so
    an error (a full disk) leaves no half-written files either."""
    names = template_files(template)
    texts = {name: scaffold_text(name) for name in names}
    if directory.exists() and not directory.is_dir():
        raise ScaffoldError(f"{directory} is a file, not a folder: choose another --dir")
    targets = [directory / name for name in names]
    folders = [str(p) for p in targets if p.is_dir()]
    if folders:
        raise ScaffoldError(f"{_and(folders)} is a folder: nothing was written")
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ScaffoldError(
            f"{_and([str(p) for p in existing])} already {verb}: nothing was written "
            "(add --force to replace them)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScaffoldError(f"cannot create the folder {directory}: {e.strerror or e}") from None
    temporary: list[tuple[str, Path]] = []
    try:
        for name in names:
            handle, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
            temporary.append((tmp, directory / name))
            with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
                out.write(texts[name])
        replaced = {p for p in targets if p.exists()}
        for tmp, target in temporary:
            os.replace(tmp, target)
    except OSError as e:
        for tmp, _ in temporary:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise ScaffoldError(f"cannot write into {directory}: {e.strerror or e}") from None
    return [Written(target, target in replaced) for target in targets]


@click.command("new")
@click.argument("template", type=click.Choice([*TEMPLATES, ALL]))
@click.option(
    "--dir",
    "directory",
    default="flows",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder to write the files into (created when missing).",
)
@click.option("--force", is_flag=True, help="Replace files that already exist.")
def new_command(template: str, directory: Path, force: bool) -> None:
    """Start a bot from a commented example flow, with its tests.

    TEMPLATE is welcome, lead_generation, customer_service, or all (the three, plus
    page.flow with the Get Started button, menu and ice breakers). Each .flow file comes
    with a .transcript file: conversations that `flowc test` plays to check the flow.
    Files that already exist are never replaced without --force.

    \b
    flowc new all                     # flows/ with every example
    flowc new welcome --dir my_bot    # just the welcome flow, in my_bot/
    """
    try:
        written = write_scaffold(template, directory, force=force)
    except ScaffoldError as e:
        raise click.ClickException(str(e)) from None
    where = shlex.quote(str(directory))
    for item in written:
        click.echo(f"{'Replaced' if item.replaced else 'Created'} {item.path}")
    missing = [t for t in _LINKS.get(template, ()) if not (directory / f"{t}.flow").exists()]
    if missing:
        # The template works alone; say what its payload buttons are waiting for.
        click.echo("\nSome of its buttons lead to flows that are not written yet. Add them with:")
        for name in missing:
            click.echo(f"  flowc new {name} --dir {where}")
    click.echo("\nNext:")
    click.echo(f"  flowc check {where}    finds mistakes and explains how to fix them")
    click.echo(f"  flowc test {where}     plays the conversations in the .transcript files")
    click.echo(f"  flowc chat {where}     talk to the bot in your terminal")
