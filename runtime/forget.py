"""Erasing everything stored about one person (a GDPR-style deletion request).

`forget_user` deletes, in one transaction, every row keyed by the person's (page, PSID):

- `contacts`: the profile fetched from Facebook (name, picture, locale, timezone, gender);
- `conversations`: the conversation state with every answer the person gave (variables);
- `message_log`: every message to and from them. The rows are deleted rather than blanked:
  a blanked row would still tie the PSID to dates and delivery statuses. Messages still
  waiting to be sent go with them, so the sender never sends them (it reads pending rows
  from the table; see the server's endpoint for the ones it already holds in memory);
- `webhook_events`: the events received from them, payloads included, including events not
  processed yet (processing such an event finds it gone and does nothing);
- `flow_events`: the record of the flows they went through, for `flowc monitor`;
- `outbox_leases`: which server instance sends their messages.

Delivery counts in `flowc monitor` drop accordingly: a forgotten person leaves no trace.
If the person writes again, they are a new person to the bot."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import ColumnElement, Engine, Table, delete, func, select

from runtime import tables

#: The tables holding a person's data, in the order they are emptied. The inbox comes first:
#: on PostgreSQL, deleting an event that a server is processing at that moment waits for
#: that turn to commit, so the deletes after it see (and delete) what the turn wrote.
_TABLES: tuple[Table, ...] = (
    tables.webhook_events,
    tables.message_log,
    tables.conversations,
    tables.contacts,
    tables.flow_events,
    tables.outbox_leases,
)


@dataclass(frozen=True)
class ForgetReport:
    """Rows erased (or, from `user_data`, stored) per table for one person."""

    contacts: int = 0
    conversations: int = 0
    message_log: int = 0
    webhook_events: int = 0
    flow_events: int = 0
    outbox_leases: int = 0

    @property
    def total(self) -> int:
        """Rows in every table together; 0 when nothing was stored about the person."""
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        """The counts by table name (the JSON shape of the admin endpoint's answer)."""
        return asdict(self)


def _where(table: Table, page_id: str, psid: str) -> list[ColumnElement[bool]]:
    return [table.c.page_id == page_id, table.c.psid == psid]


def user_data(engine: Engine, page_id: str, psid: str) -> ForgetReport:
    """Count the rows stored about the person, per table, without changing anything."""
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        for table in _TABLES:
            query = select(func.count()).select_from(table).where(*_where(table, page_id, psid))
            counts[table.name] = conn.execute(query).scalar_one()
    return ForgetReport(**counts)


def forget_user(engine: Engine, page_id: str, psid: str) -> ForgetReport:
    """Erase everything stored about the person `psid` of page `page_id`, in one transaction
    (see the module docstring), and say how many rows each table lost."""
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for table in _TABLES:
            result = conn.execute(delete(table).where(*_where(table, page_id, psid)))
            counts[table.name] = max(result.rowcount, 0)
    return ForgetReport(**counts)
