"""`flowc page`: add, list and remove the Facebook Pages the server answers for.

The database comes from --database-url or FLOW_DATABASE_URL (as for `flowc serve`), the key that
encrypts tokens from FLOW_SECRET_KEY (or --secret-key, which other users of the machine can see
in the process list: prefer the variable). Tokens are never printed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import Engine, exc

from runtime import db
from server.crypto import CryptoError, TokenCipher
from server.pages import Page, PageError, PageRegistry

_URL_OPTION = click.option(
    "--database-url",
    envvar="FLOW_DATABASE_URL",
    default=db.DEFAULT_DATABASE_URL,
    show_default=True,
    help="The server's database: a SQLite path or a PostgreSQL URL. Default from "
    "FLOW_DATABASE_URL.",
)
_PAGE_OPTION = click.option("--page-id", required=True, help="The numeric id of the Facebook Page.")


@contextmanager
def _engine(database_url: str, *, migrate: bool) -> Iterator[Engine]:
    """An engine on a database at the newest schema (created when `migrate`), with every
    database problem turned into one line for the person at the terminal."""
    try:
        if migrate:
            db.upgrade(database_url)
        elif db.current_revision(database_url) is None:  # (does not create a SQLite file)
            raise click.ClickException(
                f"{db.display_url(database_url)} has no Flowlang tables yet: add a page with "
                "`flowc page add`, or check --database-url / FLOW_DATABASE_URL"
            )
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
        raise click.ClickException(
            f"database error at {db.display_url(database_url)}: {detail}"
        ) from None
    finally:
        engine.dispose()


def _cipher(secret_key: str | None) -> TokenCipher:
    if not secret_key:
        raise click.ClickException(
            "FLOW_SECRET_KEY is not set: it encrypts page tokens in the database; set it to "
            "the same long random string the server uses"
        )
    try:
        return TokenCipher(secret_key)
    except CryptoError as e:
        raise click.ClickException(str(e)) from None


def _health(page: Page) -> str:
    return "ok" if page.healthy else "token refused"


@click.group("page")
def page_group() -> None:
    """Add, list and remove the Facebook Pages the server answers for.

    \b
    FLOW_SECRET_KEY=… flowc page add --page-id 1234567890 --name "Acme" --token EAAB…
    flowc page list
    flowc page remove --page-id 1234567890
    """


@page_group.command("add")
@_PAGE_OPTION
@click.option(
    "--token",
    prompt="Page access token",
    hide_input=True,
    help="The Page access token (asked for, without echo, when not given).",
)
@click.option("--name", default=None, help="A name to recognise the page by.")
@_URL_OPTION
@click.option(
    "--secret-key",
    envvar="FLOW_SECRET_KEY",
    default=None,
    show_default=False,
    help="The key that encrypts the token. Default from FLOW_SECRET_KEY (preferred).",
)
def add_command(
    page_id: str, token: str, name: str | None, database_url: str, secret_key: str | None
) -> None:
    """Add a page, or replace its token (a page whose token Meta refused can send again)."""
    cipher = _cipher(secret_key)
    with _engine(database_url, migrate=True) as engine:
        registry = PageRegistry(engine, cipher)
        try:
            existed = registry.get(page_id.strip()) is not None
            page = registry.add(page_id, token, name=name)
        except PageError as e:
            raise click.ClickException(str(e)) from None
    label = f" ({page.name})" if page.name else ""
    verb = "Replaced the token of" if existed else "Added"
    click.echo(f"{verb} page {page.page_id}{label}; its token is stored encrypted.")


@page_group.command("list")
@_URL_OPTION
def list_command(database_url: str) -> None:
    """Show the pages (ids, names and health; never their tokens)."""
    with _engine(database_url, migrate=False) as engine:
        # Listing decrypts nothing, so it needs no secret key.
        pages = PageRegistry(engine).list()
    if not pages:
        click.echo("No pages yet: add one with `flowc page add --page-id … --token …`.")
        return
    rows = [("PAGE ID", "NAME", "STATUS", "UPDATED (UTC)", "LAST ERROR")]
    for page in pages:
        rows.append(
            (
                page.page_id,
                page.name or "-",
                _health(page),
                page.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
                page.last_error or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[4]]).rstrip())


@page_group.command("remove")
@_PAGE_OPTION
@_URL_OPTION
def remove_command(page_id: str, database_url: str) -> None:
    """Forget a page and its token. Messages not yet sent to its users stay in the database
    and go out if the page is added again."""
    with _engine(database_url, migrate=False) as engine:
        removed = PageRegistry(engine).remove(page_id.strip())
    if not removed:
        raise click.ClickException(f"there is no page {page_id.strip()} (see `flowc page list`)")
    click.echo(f"Removed page {page_id.strip()} and its token.")
