"""`flowc user`: what the bot stores about one person, and erasing it (`flowc user forget`).

The same erasure is available over HTTP on a running server (`DELETE /admin/users/…`, see
server/admin.py), which also drops what the server holds in memory about the person."""

from __future__ import annotations

import click

from runtime.dbcli import DATABASE_URL_OPTION, open_engine
from runtime.forget import ForgetReport, forget_user, user_data

#: How `flowc user forget` names each table's rows, in the order it lists them.
_WHAT = {
    "contacts": "profile (name, picture, locale, timezone, gender)",
    "conversations": "conversation (its answers and where it stands)",
    "message_log": "messages to and from them (including unsent ones)",
    "webhook_events": "webhook events received from them",
    "flow_events": "flow history (starts, ends, hand-overs, faults)",
    "outbox_leases": "sending lease",
}


def render_counts(report: ForgetReport) -> list[str]:
    """One line per table: the count, what those rows are, and the table's name."""
    counts = report.as_dict()
    digits = max(len(str(n)) for n in counts.values())
    return [f"  {counts[name]:>{digits}}  {what} [{name}]" for name, what in _WHAT.items()]


@click.group("user")
def user_group() -> None:
    """Erase what the bot stores about a person (a data deletion request)."""


@user_group.command("forget")
@click.option("--page-id", required=True, help="The numeric id of the Facebook Page.")
@click.option("--psid", required=True, help="The person's page-scoped id (PSID) on that page.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@DATABASE_URL_OPTION
def forget_command(page_id: str, psid: str, yes: bool, database_url: str) -> None:
    """Erase everything stored about one person of a page.

    Deletes their profile, their conversation with every answer they gave, their messages
    (also those not sent yet), the webhook events received from them and their flow
    history, in one transaction. It cannot be undone. If the server is running, prefer
    `DELETE /admin/users/PAGE_ID/PSID`, which also clears what the server keeps in memory.

    \b
    flowc user forget --page-id 1234567890 --psid 2345678901234567
    """
    with open_engine(database_url) as engine:
        stored = user_data(engine, page_id, psid)
        if stored.total == 0:
            raise click.ClickException(
                f"nothing is stored about user {psid} on page {page_id}: check --page-id and --psid"
            )
        if not yes:
            click.echo(f"Stored about user {psid} on page {page_id}:")
            click.echo("\n".join(render_counts(stored)))
            click.confirm("Erase all of it? This cannot be undone", abort=True)
        erased = forget_user(engine, page_id, psid)
    click.echo(f"Erased everything stored about user {psid} on page {page_id}:")
    click.echo("\n".join(render_counts(erased)))
