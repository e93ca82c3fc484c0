"""`flowc db`: create or upgrade the runtime's database, show which revision it is at, and
delete old data (`flowc db cleanup`).

`open_engine` is how the runtime's commands reach the database: every database problem
becomes one line for the person at the terminal, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy import Engine, exc

from runtime import db
from runtime.cleanup import DEFAULT_BATCH, CleanupReport, cleanup, parse_duration

#: --database-url, for every command that opens the database.
DATABASE_URL_OPTION = click.option(
    "--database-url",
    envvar="FLOW_DATABASE_URL",
    default=db.DEFAULT_DATABASE_URL,
    show_default=True,
    help="SQLite file (sqlite:///path or just a path) or PostgreSQL URL "
    "(postgresql://user:pass@host/db). Default from FLOW_DATABASE_URL.",
)
_NO_TABLES_HINT = (
    "check --database-url / FLOW_DATABASE_URL (or create them with `flowc db upgrade`)"
)


@contextmanager
def open_engine(
    database_url: str, *, migrate: bool = False, hint: str = _NO_TABLES_HINT
) -> Iterator[Engine]:
    """An engine on the database at `database_url` at the newest schema (created or upgraded
    first when `migrate`). Any database problem (unreachable, never migrated — `hint` says
    what to do then —, an old schema, a failing statement) becomes a `click.ClickException`
    with one line that says what to do."""
    where = db.display_url(database_url)
    try:
        if migrate:
            db.upgrade(database_url)
        elif db.current_revision(database_url) is None:  # (does not create a SQLite file)
            raise click.ClickException(f"{where} has no Flowlang tables yet: {hint}")
        engine = db.create_engine_for(database_url)
    except db.DbError as e:
        raise click.ClickException(str(e)) from None
    try:
        db.require_head(engine)
        yield engine
    except db.DbError as e:
        raise click.ClickException(str(e)) from None
    except exc.SQLAlchemyError as e:
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise click.ClickException(f"database error at {where}: {detail}") from None
    finally:
        engine.dispose()


class Duration(click.ParamType):
    """A duration such as 30d, 12h, 90m or 2w."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


@click.group("db")
def db_group() -> None:
    """Create, upgrade and inspect the database the runtime keeps conversations in."""


@db_group.command("upgrade")
@DATABASE_URL_OPTION
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
@DATABASE_URL_OPTION
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


#: What `flowc db cleanup` prints beside each table's count.
_WHAT = {
    "webhook_events": "webhook events that were processed (or ignored, or failed)",
    "message_log": "messages received, sent, delivered, read or failed",
    "flow_events": "flow starts, ends, hand-overs and faults (flowc monitor's history)",
    "conversations": "idle conversations (the answers those people gave)",
    "contacts": "profiles of people who have no conversation left",
}


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_cleanup(report: CleanupReport, where: str) -> str:
    """The report of `flowc db cleanup`: one line per table, then what was kept."""
    verb = "Would delete" if report.dry_run else "Deleted"
    lines = [f"{verb} from {where} what finished before {_when(report.cutoff)}:"]
    width = max(len(name) for name in report.counts)
    digits = max(len(f"{n:,}") for n in report.counts.values())
    for name, count in report.counts.items():
        lines.append(f"  {name:<{width}}  {count:>{digits},}  {_WHAT[name]}")
    kept = "Kept: every conversation, messages waiting to be sent, events not processed yet."
    if "conversations" in report.counts:
        kept = (
            "Kept: conversations in progress or handed over to a person, messages waiting\n"
            "to be sent, events not processed yet."
        )
    lines.append(kept)
    if report.dry_run:
        lines.append("Nothing was deleted (--dry-run).")
    return "\n".join(lines)


@db_group.command("cleanup")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    type=Duration(),
    help="Delete what finished longer ago than this: 30d (days), 12h (hours), 90m "
    "(minutes), 2w (weeks).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option(
    "--idle-users",
    is_flag=True,
    help="Also delete idle conversations untouched for that long (the answers those people "
    "gave; never one waiting for an answer or handed over to a person), and the profiles "
    "of people left without a conversation.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Rows deleted per statement; each batch is a short transaction of its own.",
)
@DATABASE_URL_OPTION
def cleanup_command(
    older_than: timedelta, dry_run: bool, idle_users: bool, batch_size: int, database_url: str
) -> None:
    """Delete old webhook events, messages and flow history.

    Deletes what finished longer ago than --older-than: webhook events already processed,
    messages received or sent (never one still waiting to be sent) and the flow history
    `flowc monitor` reads. Conversations are kept, unless --idle-users.

    \b
    flowc db cleanup --older-than 30d --dry-run    # count first
    flowc db cleanup --older-than 30d
    """
    cutoff = datetime.now(UTC) - older_than
    with open_engine(database_url) as engine:
        report = cleanup(
            engine, cutoff, dry_run=dry_run, idle_users=idle_users, batch_size=batch_size
        )
    click.echo(render_cleanup(report, db.display_url(database_url)))
