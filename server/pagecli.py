"""`flowc page`: connect (`setup`), add, list and remove the Facebook Pages the server answers
for.

The database comes from --database-url or FLOW_DATABASE_URL (as for `flowc serve`), the key that
encrypts tokens from FLOW_SECRET_KEY (or --secret-key, which other users of the machine can see
in the process list: prefer the variable). Tokens are never printed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from flowlang.load import compile_paths, find_flow_files
from flowlang.render import render
from runtime.dbcli import DATABASE_URL_OPTION
from server import profile_sync
from server.opskit import (
    PAGE_ID_OPTION,
    SECRET_KEY_OPTION,
    WEBHOOK_FIELDS,
    GraphCallFailed,
    GraphConfig,
    GraphSession,
    checked_page_id,
    database_engine,
    graph_config,
    graph_options,
    stored_token,
    token_cipher,
)
from server.pages import Page, PageError, PageRegistry


def _health(page: Page) -> str:
    return "ok" if page.healthy else "token refused"


@click.group("page")
def page_group() -> None:
    """Connect, add, list and remove the Facebook Pages the server answers for.

    \b
    FLOW_SECRET_KEY=… flowc page setup --page-id 1234567890 --token EAAB… --test-connection
    FLOW_SECRET_KEY=… flowc page add --page-id 1234567890 --name "Acme" --token EAAB…
    flowc page list
    flowc page remove --page-id 1234567890
    """


@page_group.command("add")
@PAGE_ID_OPTION
@click.option(
    "--token",
    prompt="Page access token",
    hide_input=True,
    help="The Page access token (asked for, without echo, when not given).",
)
@click.option("--name", default=None, help="A name to recognise the page by.")
@DATABASE_URL_OPTION
@SECRET_KEY_OPTION
def add_command(
    page_id: str, token: str, name: str | None, database_url: str, secret_key: str | None
) -> None:
    """Add a page, or replace its token (a page whose token Meta refused can send again)."""
    cipher = token_cipher(secret_key)
    with database_engine(database_url, migrate=True) as engine:
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
@DATABASE_URL_OPTION
def list_command(database_url: str) -> None:
    """Show the pages (ids, names and health; never their tokens)."""
    with database_engine(database_url, migrate=False) as engine:
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
@PAGE_ID_OPTION
@DATABASE_URL_OPTION
def remove_command(page_id: str, database_url: str) -> None:
    """Forget a page and its token. Messages not yet sent to its users stay in the database
    and go out if the page is added again."""
    with database_engine(database_url, migrate=False) as engine:
        removed = PageRegistry(engine).remove(page_id.strip())
    if not removed:
        raise click.ClickException(f"there is no page {page_id.strip()} (see `flowc page list`)")
    click.echo(f"Removed page {page_id.strip()} and its token.")


# ----------------------------------------------------------------------------- setup


def _desired_profile(flows: tuple[str, ...]) -> dict[str, Any]:
    """The Messenger profile the page block of `flows` defines (compile errors stop here,
    before anything is stored or sent)."""
    where = ", ".join(flows)
    if not find_flow_files(flows):
        raise click.ClickException(f"no .flow files found in {where}")
    result = compile_paths(flows)
    if result.errors or result.program is None:
        click.echo(render(result.errors, result.sources, "short"), err=True)
        raise click.ClickException(
            "the flows have errors; fix them first (flowc check), nothing was stored or sent"
        )
    if result.program.page is None:
        # Without a page block there is nothing to push, and removing every setting of the
        # page because a folder lacks page.flow would be a nasty surprise.
        raise click.ClickException(
            f"the flows in {where} have no `page` block, so there is no profile to configure "
            "(see `Page configuration` in docs/language.md)"
        )
    return profile_sync.profile_from_page(result.program.page)


def _check_token(graph: GraphSession, page_id: str, token: str) -> str | None:
    """GET /me: the token works and belongs to the page. Returns the page's name."""
    me = graph.call(
        "checking the token (GET /me)", "GET", "/me", token, params={"fields": "id,name"}
    )
    owner = str(me.get("id", ""))
    name = me.get("name")
    if owner != page_id:
        raise click.ClickException(
            f"the token works but belongs to {name or 'someone else'} ({owner or 'no id'}), "
            f"not to page {page_id}: use the Page access token of page {page_id}"
        )
    click.echo(f"The token works: it is the token of page {page_id} ({name or 'no name'}).")
    return name if isinstance(name, str) else None


def _subscribe(
    graph: GraphSession, page_id: str, token: str, app_id: str | None, *, dry_run: bool
) -> None:
    fields = ",".join(WEBHOOK_FIELDS)
    shown = ", ".join(WEBHOOK_FIELDS)
    if dry_run:
        click.echo(f"Would subscribe the app to the page's webhook fields: {shown}.")
        return
    graph.call(
        "subscribing the app to the page (POST /{page-id}/subscribed_apps)",
        "POST",
        f"/{page_id}/subscribed_apps",
        token,
        params={"subscribed_fields": fields},
    )
    click.echo(f"Subscribed the app to the page's webhook fields: {shown}.")
    if app_id is None:
        return
    # The token decides which app is subscribed: with --app-id, check it is the right one.
    listed = graph.call(
        "listing the page's subscribed apps", "GET", f"/{page_id}/subscribed_apps", token
    )
    apps = {str(a.get("id")): a for a in listed.get("data") or () if isinstance(a, dict)}
    ours = apps.get(app_id.strip())
    if ours is None:
        raise click.ClickException(
            f"Meta does not list app {app_id.strip()} among the apps subscribed to page "
            f"{page_id} (it lists: {', '.join(sorted(apps)) or 'none'}): the token belongs to "
            "another app, or --app-id / FLOW_APP_ID is wrong"
        )
    missing = [f for f in WEBHOOK_FIELDS if f not in (ours.get("subscribed_fields") or ())]
    if missing:
        raise click.ClickException(
            f"app {app_id.strip()} is subscribed to page {page_id} but not to "
            f"{', '.join(missing)}: check the app's Webhooks settings in the App Dashboard"
        )
    click.echo(f"Meta lists app {app_id.strip()} as subscribed to every one of them.")


def _configure_profile(
    graph: GraphSession, token: str, desired: dict[str, Any], *, dry_run: bool
) -> None:
    answer = graph.call(
        "reading the Messenger profile (GET /me/messenger_profile)",
        "GET",
        "/me/messenger_profile",
        token,
        params={"fields": profile_sync.PROFILE_FIELDS},
    )
    plan = profile_sync.plan_profile(desired, profile_sync.profile_from_answer(answer))
    if plan.empty:
        click.echo("The Messenger profile is up to date: nothing to send.")
        return
    count = len(plan.changes)
    what = "property differs" if count == 1 else "properties differ"
    click.echo(f"Messenger profile: {count} {what} from the page block")
    for line in profile_sync.render_plan(plan):
        click.echo(line)
    if dry_run:
        return
    post, delete = plan.post_body, plan.delete_body
    if post is not None:
        graph.call(
            "updating the Messenger profile (POST /me/messenger_profile)",
            "POST",
            "/me/messenger_profile",
            token,
            json=post,
        )
        click.echo(f"Updated the Messenger profile: {', '.join(post)}.")
    if delete is not None:
        graph.call(
            "removing from the Messenger profile (DELETE /me/messenger_profile)",
            "DELETE",
            "/me/messenger_profile",
            token,
            json=delete,
        )
        click.echo(f"Removed from the Messenger profile: {', '.join(delete['fields'])}.")


@page_group.command("setup")
@PAGE_ID_OPTION
@click.option(
    "--token",
    default=None,
    help="The Page access token. Without it, the token stored for the page is used (and "
    "asked for, without echo, when the page is new).",
)
@click.option(
    "--app-id",
    envvar="FLOW_APP_ID",
    default=None,
    help="Your Meta app's id: checks that Meta lists this app as subscribed. Default from "
    "FLOW_APP_ID.",
)
@click.option("--name", default=None, help="A name to recognise the page by (default: its name).")
@click.option(
    "--configure-profile",
    is_flag=True,
    help="Push the `page` block of FLOWS (greeting, Get Started, menu, ice breakers, "
    "whitelisted domains) to the page's Messenger profile; only what changed is sent.",
)
@click.option("--test-connection", is_flag=True, help="Check the token with Meta (GET /me) first.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show what would be stored, subscribed and changed; store and send nothing.",
)
@click.argument("flows", nargs=-1)
@DATABASE_URL_OPTION
@SECRET_KEY_OPTION
@graph_options
def setup_command(
    page_id: str,
    token: str | None,
    app_id: str | None,
    name: str | None,
    configure_profile: bool,
    test_connection: bool,
    dry_run: bool,
    flows: tuple[str, ...],
    database_url: str,
    secret_key: str | None,
    graph_api_url: str,
    app_secret: str | None,
) -> None:
    """Connect a page: store it (token encrypted), subscribe the app to its webhook events
    and, with --configure-profile, make its Messenger profile match the `page` block of
    FLOWS (default: flows/).

    \b
    Example:
      export FLOW_SECRET_KEY=… FLOW_APP_SECRET=…
      flowc page setup --page-id 1234567890 --token EAAB… --test-connection
      flowc page setup --page-id 1234567890 --configure-profile --dry-run flows/
      flowc page setup --page-id 1234567890 --configure-profile flows/
    """
    page_id = checked_page_id(page_id)
    if flows and not configure_profile:
        raise click.UsageError("FLOWS are only read with --configure-profile")
    plan = _Setup(
        graph_config(graph_api_url, app_secret),
        page_id,
        name,
        app_id.strip() if app_id else None,
        test_connection,
        dry_run,
        _desired_profile(flows or ("flows",)) if configure_profile else None,
    )
    cipher = token_cipher(secret_key)
    if dry_run and token is not None:
        # A preview with a given token needs no database (it may not exist yet).
        plan.run(None, token)
        return
    with database_engine(database_url, migrate=not dry_run) as engine:
        registry = PageRegistry(engine, cipher)
        if token is None:
            token = stored_token(registry, page_id)
            if token is None:
                if dry_run:
                    raise click.ClickException(
                        f"page {page_id} is not stored yet: give its token with --token"
                    )
                token = click.prompt("Page access token", hide_input=True)
        plan.run(registry, token)


@dataclass(frozen=True)
class _Setup:
    """What `flowc page setup` was asked to do."""

    graph: GraphConfig
    page_id: str
    name: str | None
    app_id: str | None
    test_connection: bool
    dry_run: bool
    #: The page block's profile (None: --configure-profile not given).
    profile: dict[str, Any] | None

    def run(self, registry: PageRegistry | None, token: str) -> None:
        """Check, store, subscribe, configure (`registry` may be None in a dry run)."""
        token = token.strip()
        name = self.name
        with GraphSession(self.graph) as graph:
            if self.test_connection:
                found = _check_token(graph, self.page_id, token)
                name = name or found
            if self.dry_run or registry is None:
                label = f" ({name})" if name else ""
                click.echo(f"Would store page {self.page_id}{label} with its token encrypted.")
            else:
                existed = registry.get(self.page_id) is not None
                page = _store(registry, self.page_id, token, name)
                label = f" ({page.name})" if page.name else ""
                verb = "Updated" if existed else "Stored"
                click.echo(
                    f"{verb} page {page.page_id}{label}; its token is encrypted in the database."
                )
            try:
                _subscribe(graph, self.page_id, token, self.app_id, dry_run=self.dry_run)
                if self.profile is not None:
                    _configure_profile(graph, token, self.profile, dry_run=self.dry_run)
            except GraphCallFailed as e:
                if e.error.kind == "bad_token" and registry is not None and not self.dry_run:
                    # The server would stop sending for this page at its first try anyway.
                    registry.mark_unhealthy(self.page_id, e.error.message)
                raise
        if self.dry_run:
            click.echo("Dry run: nothing was stored or sent.")


def _store(registry: PageRegistry, page_id: str, token: str, name: str | None) -> Page:
    try:
        return registry.add(page_id, token, name=name)
    except PageError as e:
        raise click.ClickException(str(e)) from None
