"""`flowc monitor`: pages' health, message counts, webhook lag and flow statistics, as
readable tables or as JSON (the shape is documented in docs/operations.md, "Monitoring").

The numbers come from `server.monitor`; this module only renders them. The database comes from
--database-url or FLOW_DATABASE_URL (as for `flowc serve`); nothing is written to it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import click

from runtime.cleanup import parse_duration
from runtime.dbcli import DATABASE_URL_OPTION
from server.monitor import (
    DEFAULT_LIMIT,
    FlowReport,
    PageReport,
    Report,
    error_kind,
    error_meaning,
    gather,
)
from server.opskit import database_engine

_HEALTH = {
    "ok": "ok",
    "token_refused": "TOKEN REFUSED: sends wait for a new token (flowc page add)",
    "not_configured": "not configured: events for it are stored, not answered (flowc page add)",
}


@click.command("monitor")
@click.option("--page-id", default=None, help="Show only this page.")
@click.option("--show-errors", is_flag=True, help="Also list recent failed sends and faults.")
@click.option("--show-flows", is_flag=True, help="Also show starts, completions and drop-off.")
@click.option("--show-users", is_flag=True, help="Also list the most active users.")
@click.option(
    "--since",
    default="24h",
    show_default=True,
    help="How far back to look: 30m, 24h, 7d, 2w (minutes, hours, days, weeks), or "
    "combined, like 1d12h.",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Tables for people, or JSON for scripts (schema_version 1).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="How many recent errors and users to list.",
)
@DATABASE_URL_OPTION
def monitor_command(
    page_id: str | None,
    show_errors: bool,
    show_flows: bool,
    show_users: bool,
    since: str,
    output: str,
    limit: int,
    database_url: str,
) -> None:
    """Show pages' health, message counts and flow statistics.

    Without --show-* options, a summary of each page: health, messages in and out, delivery
    and read rates, failures by error code, webhook processing lag and conversations.
    docs/operations.md ("Monitoring") explains every number and the JSON.

    \b
    Examples:
    flowc monitor
    flowc monitor --page-id 1234567890 --since 7d --show-flows --show-errors
    flowc monitor --format json --show-flows --show-errors --show-users
    """
    try:
        window = parse_duration(since)
    except ValueError as e:
        raise click.ClickException(f"--since {e}") from None
    with database_engine(database_url, migrate=False) as engine:
        report = gather(
            engine,
            now=datetime.now(UTC),
            since=window,
            page_id=page_id.strip() if page_id else None,
            flows=show_flows,
            errors=show_errors,
            users=show_users,
            limit=limit,
        )
    if output == "json":
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(report, since=since.strip()))


# ----------------------------------------------------------------------------- text


def render_text(report: Report, *, since: str) -> str:
    """The report as aligned tables with headings (what `flowc monitor` prints)."""
    window = report.window
    lines = [
        f"Monitor: the last {since} ({_time(window.since)} to {_time(window.until)} UTC)",
    ]
    if not report.pages:
        lines += ["", "No pages and no messages yet: add a page with `flowc page add`."]
    for page in report.pages:
        lines += ["", *_page(page)]
    if report.flows is not None:
        lines += ["", *_flows(report.flows)]
    if report.errors is not None:
        lines += ["", *_errors(report)]
    if report.users is not None:
        lines += ["", *_users(report)]
    return "\n".join(lines)


def _page(page: PageReport) -> list[str]:
    name = f" ({page.name})" if page.name else ""
    m, d, w, c = page.messages, page.delivery, page.webhook, page.conversations
    health = _HEALTH[page.health]
    if page.health == "token_refused" and page.last_error:
        health += f"; Meta said: {page.last_error}"
    lag = "no events processed"
    if w.lag_max_ms is not None:
        lag = f"p50 {_ms(w.lag_p50_ms)}, p95 {_ms(w.lag_p95_ms)}, max {_ms(w.lag_max_ms)}"
    oldest = "none"
    if w.oldest_pending_at is not None:
        oldest = f"{w.pending} waiting, the oldest for {_ms(w.oldest_pending_age_ms)}"
    rows = [
        ("Health", health),
        ("Messages in", _n(m.inbound)),
        ("Messages out", f"{_n(m.outbound)} ({_n(m.failed)} failed)"),
        ("Waiting to be sent", _n(m.pending)),
        ("Delivered", _share(d.delivered, d.sent)),
        ("Read", _share(d.read, d.sent)),
        ("Webhook events", f"{_n(w.received)} received, {_n(w.failed)} failed"),
        ("Processing lag", lag),
        ("Pending events", oldest),
        (
            "Conversations",
            f"{_n(c.active)} active, {_n(c.waiting)} waiting for an answer, "
            f"{_n(c.handed_over)} with a person",
        ),
    ]
    lines = [f"Page {page.page_id}{name}", *_indent(_table(None, rows))]
    if page.failures:
        table = _table(
            ("ERROR CODE", "COUNT", "KIND", "MEANING"),
            [
                (
                    f.code_text,
                    _n(f.count),
                    error_kind(f.code, f.subcode).replace("_", " "),
                    error_meaning(f.code, f.subcode),
                )
                for f in page.failures
            ],
            right={1},
        )
        lines += ["", *_indent(["Failed sends by error code", *table])]
    return lines


def _flows(flows: list[FlowReport]) -> list[str]:
    if not flows:
        return ["Flows", "  No flows deployed and no flow activity."]
    table = _table(
        ("FLOW", "STARTS", "ENDS", "COMPLETED", "FAULTS", "HANDED OVER", "WAITING NOW"),
        [
            (
                f.flow_id,
                _n(f.starts),
                _n(f.ends),
                _percent(f.completion_rate),
                _n(f.faults),
                _n(f.hand_overs),
                _n(f.waiting),
            )
            for f in flows
        ],
        right={1, 2, 3, 4, 5, 6},
    )
    lines = ["Flows", *_indent(table)]
    waiting = [(f.flow_id, s.step, _n(s.waiting)) for f in flows for s in f.drop_off]
    if waiting:
        drop_off = _table(("FLOW", "STEP", "WAITING"), waiting, right={2})
        lines += ["", "Where conversations wait now (drop-off)", *_indent(drop_off)]
    return lines


def _errors(report: Report) -> list[str]:
    errors = report.errors or []
    if not errors:
        return ["Recent errors", "  None in this window."]
    rows = []
    for e in errors:
        if e.kind == "send_failed":
            what = f"send failed ({e.code_text})"
            detail = e.meaning or ""
            if e.message:
                detail += f"; Meta said: {e.message}"
        else:
            what = "flow fault"
            where = f"flow {e.flow_id}" + (f", step {e.step}" if e.step else "")
            detail = f"{where}: {e.message or ''}"
        rows.append((_time(e.at, seconds=True), e.page_id, e.psid, what, e.source or "-", detail))
    table = _table(("TIME (UTC)", "PAGE", "USER", "WHAT", "SOURCE", "DETAIL"), rows)
    return ["Recent errors (newest first)", *_indent(table)]


def _users(report: Report) -> list[str]:
    users = report.users or []
    if not users:
        return ["Most active users", "  No messages in this window."]
    rows = []
    for u in users:
        where = f"{u.flow_id} / {u.step}" if u.flow_id else "-"
        status = "with a person" if u.handed_over else (u.status or "-")
        seen = _time(u.last_seen, seconds=True) if u.last_seen else "-"
        rows.append((u.page_id, u.psid, _n(u.messages_in), _n(u.messages_out), seen, where, status))
    table = _table(
        ("PAGE", "USER (PSID)", "IN", "OUT", "LAST SEEN (UTC)", "FLOW / STEP", "STATUS"),
        rows,
        right={2, 3},
    )
    return ["Most active users", *_indent(table)]


# ----------------------------------------------------------------------------- formatting


def _table(
    headers: Sequence[str] | None, rows: Sequence[Sequence[str]], right: set[int] | None = None
) -> list[str]:
    """Rows as aligned columns (two spaces apart); `right`: the columns of numbers."""
    right = right or set()
    everything = [list(headers)] if headers else []
    everything += [list(row) for row in rows]
    widths = [max(len(row[i]) for row in everything) for i in range(len(everything[0]))]
    lines = []
    for row in everything:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _indent(lines: list[str]) -> list[str]:
    return [f"  {line}" if line else line for line in lines]


def _n(value: int) -> str:
    return f"{value:,}"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _share(part: int, whole: int) -> str:
    if not whole:
        return "- (nothing sent)"
    return f"{_percent(part / whole)} ({_n(part)} of {_n(whole)} sent)"


def _ms(value: int | None) -> str:
    """A duration for people: "850 ms", "1.2 s", "3 min 20 s", "2 h 5 min", "3 d 4 h"."""
    if value is None:
        return "-"
    if value < 1000:
        return f"{value} ms"
    seconds = value / 1000
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, sec = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _time(value: datetime, *, seconds: bool = False) -> str:
    pattern = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return value.astimezone(UTC).strftime(pattern)
