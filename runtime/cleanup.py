"""Deleting operational data that is no longer needed (`flowc db cleanup`).

What goes, once it is older than the cutoff:

- `webhook_events` that are settled (any status but 'pending': processed, ignored, failed,
  unknown page), by `received_at`;
- `message_log` rows that are finished (any status but 'pending': received, sent, delivered,
  read, failed), by `created_at`. Outbound messages still waiting to be sent are kept,
  however old (they go out when their page gets a working token);
- `flow_events` (what `flowc monitor` counts), by `at`.

Conversations are kept: a conversation row is what the bot remembers about a person (their
answers, a question waiting for a reply, whether a person from the Page Inbox has the
thread), and deleting it would change how the bot treats them. With `idle_users`, the
conversations nobody has touched since the cutoff are deleted too, but only those that are
idle (not waiting for an answer), not handed over to a person and with no event waiting to
be processed; then the profiles (`contacts`) fetched before the cutoff of people who have no
conversation left go as well. Those people start afresh when they write again.

Rows are deleted in batches (`batch_size` rows per statement, each batch its own short
transaction), found in key order and deleted by key range, so PostgreSQL never holds one
giant transaction and SQLite lets the server write between batches."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Table,
    and_,
    delete,
    exists,
    false,
    func,
    not_,
    select,
    tuple_,
)

from runtime import tables

#: Rows per DELETE statement (and per transaction).
DEFAULT_BATCH = 5000

_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_UNITS["w"] = timedelta(weeks=1)
_PART = r"\d+\s*[mhdw]"
_DURATION = re.compile(rf"\s*(?:{_PART}\s*)+")


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `2w` (or combined, `1w2d`) as a timedelta.

    Raises ValueError for anything else, and for a duration of zero."""
    if not _DURATION.fullmatch(text.lower()):
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit, such as 30d (days), "
            "12h (hours), 90m (minutes) or 2w (weeks)"
        )
    total = timedelta()
    for number, unit in re.findall(r"(\d+)\s*([mhdw])", text.lower()):
        total += int(number) * _UNITS[unit]
    if total <= timedelta():
        raise ValueError(f"{text!r} is no time at all: give a duration longer than zero")
    return total


@dataclass
class CleanupReport:
    """What `cleanup` deleted (or, with `dry_run`, would delete): rows per table."""

    cutoff: datetime
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows in every table together."""
        return sum(self.counts.values())


_E = tables.webhook_events.c
_M = tables.message_log.c
_F = tables.flow_events.c
_C = tables.conversations.c
_K = tables.contacts.c


def _conversation_goes(cutoff: datetime, conversation: Any = _C) -> ColumnElement[bool]:
    """An idle conversation, not handed over, untouched since the cutoff, with no event of
    its person waiting to be processed."""
    pending = (
        select(_E.id)
        .where(
            _E.page_id == conversation.page_id,
            _E.psid == conversation.psid,
            _E.status == "pending",
        )
        .limit(1)
    )
    return and_(
        conversation.status == "idle",
        conversation.handed_over == false(),
        conversation.updated_at < cutoff,
        not_(exists(pending)),
    )


def _contact_goes(cutoff: datetime) -> ColumnElement[bool]:
    """A profile fetched before the cutoff whose person has no conversation that stays (one
    that `_conversation_goes` spares): the same rows in a dry run as in a real one."""
    kept = tables.conversations.alias("kept")
    staying = select(kept.c.psid).where(
        kept.c.page_id == _K.page_id,
        kept.c.psid == _K.psid,
        not_(_conversation_goes(cutoff, kept.c)),
    )
    return and_(_K.fetched_at < cutoff, not_(exists(staying)))


@dataclass(frozen=True)
class _Target:
    table: Table
    where: Callable[[datetime], ColumnElement[bool]]


#: What `cleanup` deletes, in this order (conversations before the contacts they free).
_TARGETS = [
    _Target(tables.webhook_events, lambda cut: and_(_E.status != "pending", _E.received_at < cut)),
    _Target(tables.message_log, lambda cut: and_(_M.status != "pending", _M.created_at < cut)),
    _Target(tables.flow_events, lambda cut: _F.at < cut),
]
_IDLE_TARGETS = [
    _Target(tables.conversations, _conversation_goes),
    _Target(tables.contacts, _contact_goes),
]


def _key(table: Table) -> Any:
    """The primary key as one comparable expression (a row value for composite keys)."""
    columns = list(table.primary_key.columns)
    return columns[0] if len(columns) == 1 else tuple_(*columns)


def _row_key(table: Table, row: Any) -> Any:
    return row[0] if len(table.primary_key.columns) == 1 else tuple(row)


def _delete_in_batches(
    engine: Engine, table: Table, where: ColumnElement[bool], batch_size: int
) -> int:
    key = _key(table)
    columns = list(table.primary_key.columns)
    deleted = 0
    after: Any = None
    while True:
        with engine.begin() as conn:
            query = select(*columns).where(where).order_by(*columns).limit(batch_size)
            if after is not None:
                query = query.where(key > after)
            found = conn.execute(query).all()
            if not found:
                return deleted
            low, high = _row_key(table, found[0]), _row_key(table, found[-1])
            # The range holds exactly the rows just found (they were the first in key
            # order); `where` again, so a row that changed meanwhile is left alone.
            result = conn.execute(delete(table).where(key >= low, key <= high, where))
            deleted += max(result.rowcount, 0)
        if len(found) < batch_size:
            return deleted
        after = high


def cleanup(
    engine: Engine,
    cutoff: datetime,
    *,
    dry_run: bool = False,
    idle_users: bool = False,
    batch_size: int = DEFAULT_BATCH,
) -> CleanupReport:
    """Delete what finished before `cutoff` (see the module docstring); with `dry_run`,
    only count it. `cutoff` must be timezone-aware (UTC, like every stored time)."""
    if cutoff.tzinfo is None:
        raise ValueError("the cutoff must be timezone-aware")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = CleanupReport(cutoff, dry_run)
    for target in _TARGETS + (_IDLE_TARGETS if idle_users else []):
        where = target.where(cutoff)
        if dry_run:
            with engine.connect() as conn:
                count = select(func.count()).select_from(target.table).where(where)
                report.counts[target.table.name] = conn.execute(count).scalar_one()
        else:
            report.counts[target.table.name] = _delete_in_batches(
                engine, target.table, where, batch_size
            )
    return report
