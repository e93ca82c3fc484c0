"""`flowc db`: create or upgrade the runtime's database, and show which revision it is at."""

from __future__ import annotations

import click

from runtime import db

_URL_OPTION = click.option(
    "--database-url",
    envvar="FLOW_DATABASE_URL",
    default=db.DEFAULT_DATABASE_URL,
    show_default=True,
    help="SQLite file (sqlite:///path or just a path) or PostgreSQL URL "
    "(postgresql://user:pass@host/db). Default from FLOW_DATABASE_URL.",
)


@click.group("db")
def db_group() -> None:
    """Create, upgrade and inspect the database the runtime keeps conversations in."""


@db_group.command("upgrade")
@_URL_OPTION
def upgrade_command(database_url: str) -> None:
    """Create the tables, or migrate them to this Flowlang's newest schema."""
    where = db.display_url(database_url)
    try:
        before, after = db.upgrade(database_url)
    except db.DbError as e:
        raise click.ClickException(str(e)) from e
    if before == after:
        click.echo(f"{where} is up to date (revision {after}).")
    elif before is None:
        click.echo(f"Created the tables in {where} (revision {after}).")
    else:
        click.echo(f"Upgraded {where} from revision {before} to {after}.")


@db_group.command("current")
@_URL_OPTION
def current_command(database_url: str) -> None:
    """Show the database's schema revision and whether it needs `flowc db upgrade`."""
    where = db.display_url(database_url)
    try:
        current = db.current_revision(database_url)
        head = db.head_revision()
    except db.DbError as e:
        raise click.ClickException(str(e)) from e
    if current is None:
        click.echo(f"{where} has no Flowlang tables yet: run `flowc db upgrade`.")
    elif current == head:
        click.echo(f"{where} is at revision {current} (up to date).")
    else:
        click.echo(f"{where} is at revision {current}; run `flowc db upgrade` for {head}.")
