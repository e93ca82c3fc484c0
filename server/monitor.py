"""What `flowc monitor` shows, gathered from the database: pages, flows, recent errors and the
most active users, as dataclasses that turn into the documented JSON (`SCHEMA_VERSION`).

The tables may hold millions of rows, so everything is counted in SQL (conditional sums,
GROUP BY); only bounded lists come back as rows: the recent errors and the top users (at most
`limit` each), and three webhook lags per page (the p50, p95 and largest, picked by rank with
window functions, which SQLite and PostgreSQL both have). Nothing here prints: rendering is
`server.monitorcli`. Every window ends at `now`, a parameter, so tests are deterministic.

Definitions (docs/operations.md, "Monitoring", explains them to operators):
- messages in/out: message_log rows created in the window; failed: outbound rows created in the
  window that Meta refused for good; pending: outbound rows waiting to be sent now.
- delivery and read rates: of the outbound messages *sent* in the window (`sent_at`), the share
  with a delivery (or read) receipt and the share with a read receipt.
- webhook lag: `processed_at - received_at` of the events received in the window; the oldest
  pending event is the one waiting longest now, whenever it came.
- conversations: active = the bot advanced them in the window; waiting = waiting for the
  person's answer now (not handed over); handed over = with a person now.
- flows: start, end, fault and hand-over events in the window; drop-off = conversations waiting
  now at each step (not handed over), whenever they stopped there."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    or_,
    select,
    true,
)

from runtime import tables
from server.graph import ErrorKind, classify
from server.pages import PageRegistry

#: The version of the JSON shape; raised only when a key changes meaning or disappears
#: (new keys may be added without raising it).
SCHEMA_VERSION = 1
#: How many recent errors and active users are shown by default.
DEFAULT_LIMIT = 20

Health = Literal["ok", "token_refused", "not_configured"]

_M = tables.message_log.c
_W = tables.webhook_events.c
_C = tables.conversations.c
_F = tables.flow_events.c
_V = tables.flow_versions.c

# ----------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """The time span looked at: from `since` (included) to `until` (excluded)."""

    since: datetime
    until: datetime

    @property
    def seconds(self) -> int:
        """How long the window is."""
        return int((self.until - self.since).total_seconds())

    def holds(self, column: Any) -> ColumnElement[bool]:
        """SQL: the time in `column` falls in the window."""
        return and_(column >= self.since, column < self.until)

    def to_json(self) -> dict[str, Any]:
        """The "window" object of the JSON."""
        return {"since": _iso(self.since), "until": _iso(self.until), "seconds": self.seconds}


# ----------------------------------------------------------------------------- error codes

#: What Meta's Send API errors mean, in words for an operator (reference §6). Keys are
#: (code, subcode); (code, None) covers the code's other subcodes.
ERROR_MEANINGS: dict[tuple[int | None, int | None], str] = {
    (None, None): "no error code: Meta did not answer (timeout, network) or the message "
    "could not be sent as built; see the error message",
    (1, None): "an unknown error at Meta; a missing permission can cause it",
    (1, 1357046): "Meta's answer was unreadable; the message may have been sent anyway",
    (2, None): "a temporary problem at Meta (or the person blocked the page)",
    (4, None): "the app made too many calls: Meta is slowing it down",
    (4, 2018354): "this person got too many marketing messages",
    (9, 2018352): "this person got too many messages from the page",
    (10, None): "the page lacks the pages_messaging permission",
    (10, 2018065): "outside the 24-hour window to answer this person",
    (10, 2018108): "this person cannot receive messages",
    (10, 2018278): "the 24-hour window to answer this person has closed",
    (17, None): "too many calls for this user: Meta is slowing the app down",
    (32, None): "too many calls for this page: Meta is slowing it down",
    (100, None): "Meta refused a parameter of the message as invalid",
    (100, 2018001): "no such person for this page (a wrong or deleted user id)",
    (100, 2018008): "Meta could not download the attachment from its URL",
    (100, 2018032): "the message data is invalid",
    (100, 2018034): "the message is empty",
    (100, 2018047): "the attachment failed to upload, or its type does not match",
    (100, 2018074): "the attachment id is invalid or belongs to another page",
    (100, 2018109): "the attachment is too large",
    (100, 2018294): "the video took too long to process",
    (102, None): "the page's session expired: add a new page token (flowc page add)",
    (190, None): "Meta refused the page token (expired or revoked): add a new one (flowc page add)",
    (200, None): "the app is not allowed to do this",
    (200, 1545041): "this person isn't receiving messages from the page right now",
    (200, 2018028): "the app may only message its testers until Meta approves "
    "pages_messaging and the app is live",
    (230, None): "permissions do not allow messaging this person",
    (368, None): "Meta blocked the page for a while for a policy violation",
    (551, None): "this person isn't available (blocked the page, or left Messenger)",
    (613, None): "the Send API's rate limit was exceeded",
    (1200, None): "a temporary problem at Meta while sending",
    (80006, None): "the page's Messenger rate limit was reached",
}

_KIND_MEANINGS: dict[ErrorKind, str] = {
    "transient": "a temporary problem at Meta",
    "rate_limit": "Meta's rate limit was reached",
    "bad_token": "Meta refused the page token",
    "unreachable": "this person cannot be reached",
    "window_closed": "the 24-hour window to answer this person has closed",
    "permanent": "Meta refused the message; see the error message",
}


def code_text(code: int | None, subcode: int | None) -> str:
    """ "551", "10/2018278", or "-" for no code (as `GraphError.code_text`)."""
    if code is None:
        return "-"
    return f"{code}/{subcode}" if subcode is not None else str(code)


def error_kind(code: int | None, subcode: int | None) -> ErrorKind:
    """What kind of failure a recorded error code is (`server.graph.classify`)."""
    # A failed row has no HTTP status; without a code it was a timeout or a network error
    # (or a message refused before sending, which the meaning covers).
    return classify(code, subcode, None)


def error_meaning(code: int | None, subcode: int | None) -> str:
    """A plain-language meaning of a Send API error code."""
    found = ERROR_MEANINGS.get((code, subcode)) or ERROR_MEANINGS.get((code, None))
    return found or _KIND_MEANINGS[error_kind(code, subcode)]


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Messages:
    """A page's message counts (see the module docstring)."""

    inbound: int = 0
    outbound: int = 0
    failed: int = 0
    pending: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "inbound": self.inbound,
            "outbound": self.outbound,
            "failed": self.failed,
            "pending_now": self.pending,
        }


@dataclass(frozen=True)
class Delivery:
    """Receipts for the outbound messages sent in the window."""

    sent: int = 0
    delivered: int = 0
    read: int = 0

    @property
    def delivery_rate(self) -> float | None:
        """The share of sent messages delivered (None when none were sent)."""
        return _rate(self.delivered, self.sent)

    @property
    def read_rate(self) -> float | None:
        """The share of sent messages read (None when none were sent)."""
        return _rate(self.read, self.sent)

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "read": self.read,
            "delivery_rate": _round(self.delivery_rate),
            "read_rate": _round(self.read_rate),
        }


@dataclass(frozen=True)
class Failure:
    """Outbound messages of one page that failed in the window with one error code."""

    code: int | None
    subcode: int | None
    count: int
    last_at: datetime

    @property
    def code_text(self) -> str:
        return code_text(self.code, self.subcode)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "subcode": self.subcode,
            "code_text": self.code_text,
            "kind": error_kind(self.code, self.subcode),
            "meaning": error_meaning(self.code, self.subcode),
            "count": self.count,
            "last_at": _iso(self.last_at),
        }


@dataclass(frozen=True)
class Webhook:
    """A page's webhook events: received in the window, their processing lag, the backlog."""

    received: int = 0
    failed: int = 0
    lag_p50_ms: int | None = None
    lag_p95_ms: int | None = None
    lag_max_ms: int | None = None
    pending: int = 0
    oldest_pending_at: datetime | None = None
    oldest_pending_age_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "failed": self.failed,
            "lag_ms": {"p50": self.lag_p50_ms, "p95": self.lag_p95_ms, "max": self.lag_max_ms},
            "pending_now": self.pending,
            "oldest_pending_at": _iso(self.oldest_pending_at),
            "oldest_pending_age_ms": self.oldest_pending_age_ms,
        }


@dataclass(frozen=True)
class Conversations:
    """A page's conversations (see the module docstring)."""

    active: int = 0
    waiting: int = 0
    handed_over: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "waiting": self.waiting, "handed_over": self.handed_over}


@dataclass(frozen=True)
class PageReport:
    """Everything about one page. `health` is "not_configured" for a page id that has data
    but is not in the pages table (e.g. webhook events for a page nobody added)."""

    page_id: str
    name: str | None
    health: Health
    last_error: str | None
    messages: Messages
    delivery: Delivery
    failures: list[Failure]
    webhook: Webhook
    conversations: Conversations

    def to_json(self) -> dict[str, Any]:
        return {
            "page_id": self.page_id,
            "name": self.name,
            "health": self.health,
            "last_error": self.last_error,
            "messages": self.messages.to_json(),
            "delivery": self.delivery.to_json(),
            "failures": [f.to_json() for f in self.failures],
            "webhook": self.webhook.to_json(),
            "conversations": self.conversations.to_json(),
        }


@dataclass(frozen=True)
class StepWaiting:
    """How many conversations wait now at one step of a flow."""

    step: str
    waiting: int

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "waiting": self.waiting}


@dataclass(frozen=True)
class FlowReport:
    """One flow: its events in the window and where conversations wait now."""

    flow_id: str
    starts: int = 0
    ends: int = 0
    faults: int = 0
    hand_overs: int = 0
    drop_off: list[StepWaiting] = field(default_factory=list)

    @property
    def completion_rate(self) -> float | None:
        """Ends per start in the window (None without starts). Conversations that started
        before the window and ended in it count too, so it can exceed 1 in a short window."""
        return _rate(self.ends, self.starts)

    @property
    def waiting(self) -> int:
        """Conversations waiting in this flow now."""
        return sum(s.waiting for s in self.drop_off)

    def to_json(self) -> dict[str, Any]:
        return {
            "flow_id": self.flow_id,
            "starts": self.starts,
            "ends": self.ends,
            "completion_rate": _round(self.completion_rate),
            "faults": self.faults,
            "hand_overs": self.hand_overs,
            "waiting_now": self.waiting,
            "drop_off": [s.to_json() for s in self.drop_off],
        }


@dataclass(frozen=True)
class RecentError:
    """A failed send or a flow fault, with the `.flow` file:line that caused it."""

    at: datetime
    kind: Literal["send_failed", "flow_fault"]
    page_id: str
    psid: str
    source: str | None
    message: str | None
    flow_id: str | None = None
    step: str | None = None
    code: int | None = None
    subcode: int | None = None

    @property
    def code_text(self) -> str | None:
        return code_text(self.code, self.subcode) if self.kind == "send_failed" else None

    @property
    def meaning(self) -> str | None:
        return error_meaning(self.code, self.subcode) if self.kind == "send_failed" else None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "kind": self.kind,
            "page_id": self.page_id,
            "psid": self.psid,
            "flow_id": self.flow_id,
            "step": self.step,
            "source": self.source,
            "code": self.code,
            "subcode": self.subcode,
            "code_text": self.code_text,
            "meaning": self.meaning,
            "message": self.message,
        }


@dataclass(frozen=True)
class ActiveUser:
    """A user by activity in the window, with where their conversation is now. Deliberately
    no message contents and no profile: the id is what an operator needs to look further."""

    page_id: str
    psid: str
    messages_in: int
    messages_out: int
    last_seen: datetime | None
    flow_id: str | None
    step: str | None
    status: str | None
    handed_over: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "page_id": self.page_id,
            "psid": self.psid,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "last_seen": _iso(self.last_seen),
            "flow_id": self.flow_id,
            "step": self.step,
            "status": self.status,
            "handed_over": self.handed_over,
        }


@dataclass(frozen=True)
class Report:
    """What `flowc monitor` shows. `flows`, `errors` and `users` are None unless asked for."""

    window: Window
    pages: list[PageReport]
    flows: list[FlowReport] | None = None
    errors: list[RecentError] | None = None
    users: list[ActiveUser] | None = None
    page_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The documented JSON shape (docs/operations.md, "Monitoring")."""

        def listed(items: list[Any] | None) -> list[dict[str, Any]] | None:
            return None if items is None else [item.to_json() for item in items]

        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": _iso(self.window.until),
            "window": self.window.to_json(),
            "page_id": self.page_id,
            "pages": listed(self.pages),
            "flows": listed(self.flows),
            "errors": listed(self.errors),
            "users": listed(self.users),
        }


# ----------------------------------------------------------------------------- gathering


def gather(
    engine: Engine,
    *,
    now: datetime,
    since: timedelta,
    page_id: str | None = None,
    flows: bool = False,
    errors: bool = False,
    users: bool = False,
    limit: int = DEFAULT_LIMIT,
) -> Report:
    """Read the report from the database at `engine` (migrated to the newest revision): the
    pages always; flows, recent errors and active users when asked for. `now` ends the
    window (an aware datetime; naive means UTC); `page_id` limits everything to one page."""
    until = _at(now)
    window = Window(until - since, until)
    with engine.connect() as conn:
        pages = _pages(engine, conn, window, page_id)
        return Report(
            window=window,
            pages=pages,
            flows=_flows(conn, window, page_id) if flows else None,
            errors=_errors(conn, window, page_id, limit) if errors else None,
            users=_users(conn, window, page_id, limit) if users else None,
            page_id=page_id,
        )


def _pages(
    engine: Engine, conn: Connection, window: Window, page_id: str | None
) -> list[PageReport]:
    configured = {p.page_id: p for p in PageRegistry(engine).list()}
    if page_id is not None:
        configured = {k: v for k, v in configured.items() if k == page_id}
    messages, delivery = _message_counts(conn, window, page_id)
    failures = _failures(conn, window, page_id)
    webhook = _webhook(conn, window, page_id)
    conversations = _conversations(conn, window, page_id)
    ids = set(configured) | set(messages) | set(webhook) | set(conversations)
    if page_id is not None:
        ids.add(page_id)
    reports = []
    for pid in sorted(ids):
        page = configured.get(pid)
        health: Health = "not_configured"
        if page is not None:
            health = "ok" if page.healthy else "token_refused"
        reports.append(
            PageReport(
                page_id=pid,
                name=page.name if page else None,
                health=health,
                last_error=page.last_error if page else None,
                messages=messages.get(pid, Messages()),
                delivery=delivery.get(pid, Delivery()),
                failures=failures.get(pid, []),
                webhook=webhook.get(pid, Webhook()),
                conversations=conversations.get(pid, Conversations()),
            )
        )
    return reports


def _count(condition: ColumnElement[bool]) -> Any:
    """SQL: how many rows of the group meet `condition`."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _on_page(column: Any, page_id: str | None) -> ColumnElement[bool]:
    return column == page_id if page_id is not None else true()


def _message_counts(
    conn: Connection, window: Window, page_id: str | None
) -> tuple[dict[str, Messages], dict[str, Delivery]]:
    created = window.holds(_M.created_at)
    sent = window.holds(_M.sent_at)
    outbound = _M.direction == "outbound"
    query = (
        select(
            _M.page_id,
            _count(and_(created, _M.direction == "inbound")),
            _count(and_(created, outbound)),
            _count(and_(created, outbound, _M.status == "failed")),
            _count(and_(outbound, _M.status == "pending")),
            _count(sent),
            _count(and_(sent, _M.delivered_at.is_not(None))),
            _count(and_(sent, _M.read_at.is_not(None))),
        )
        # One pass over the rows that matter: created or sent in the window, or pending.
        .where(_on_page(_M.page_id, page_id), or_(created, sent, _M.status == "pending"))
        .group_by(_M.page_id)
    )
    messages: dict[str, Messages] = {}
    delivery: dict[str, Delivery] = {}
    for pid, inbound, out, failed, pending, n_sent, delivered, read in conn.execute(query):
        messages[pid] = Messages(int(inbound), int(out), int(failed), int(pending))
        delivery[pid] = Delivery(int(n_sent), int(delivered), int(read))
    return messages, delivery


def _failures(conn: Connection, window: Window, page_id: str | None) -> dict[str, list[Failure]]:
    count = func.count().label("n")
    query = (
        select(_M.page_id, _M.error_code, _M.error_subcode, count, func.max(_M.created_at))
        .where(
            _on_page(_M.page_id, page_id),
            _M.direction == "outbound",
            _M.status == "failed",
            window.holds(_M.created_at),
        )
        .group_by(_M.page_id, _M.error_code, _M.error_subcode)
    )
    found: dict[str, list[Failure]] = {}
    for pid, code, subcode, n, last_at in conn.execute(query):
        found.setdefault(pid, []).append(Failure(code, subcode, int(n), _at(last_at)))
    for items in found.values():
        # Most frequent first; ties by code, so the order is stable.
        items.sort(key=lambda f: (-f.count, f.code is None, f.code or 0, f.subcode or 0))
    return found


def _lag_ms(dialect: str) -> Any:
    """SQL: an event's processing lag in milliseconds, as a float."""
    if dialect == "sqlite":
        # SQLite keeps times as text; julianday() reads them (to the millisecond).
        days = func.julianday(_W.processed_at) - func.julianday(_W.received_at)
        return cast(days * 86_400_000.0, Float)
    return cast(extract("epoch", _W.processed_at - _W.received_at) * 1000.0, Float)


def _webhook(conn: Connection, window: Window, page_id: str | None) -> dict[str, Webhook]:
    received = window.holds(_W.received_at)
    on_page = _on_page(_W.page_id, page_id)
    counts = {
        pid: (int(n), int(failed))
        for pid, n, failed in conn.execute(
            select(_W.page_id, func.count(), _count(_W.status == "failed"))
            .where(on_page, received)
            .group_by(_W.page_id)
        )
    }
    pending = {
        pid: (int(n), _utc(oldest))
        for pid, n, oldest in conn.execute(
            select(_W.page_id, func.count(), func.min(_W.received_at))
            .where(on_page, _W.status == "pending")
            .group_by(_W.page_id)
        )
    }
    # The p50 and p95 (nearest rank: the ceil(p·n)-th smallest) and the largest lag of each
    # page, picked in SQL so that only three rows per page come back.
    lag = _lag_ms(conn.dialect.name)
    ranked = (
        select(
            _W.page_id.label("page_id"),
            lag.label("lag"),
            func.row_number().over(partition_by=_W.page_id, order_by=lag).label("rank"),
            func.count().over(partition_by=_W.page_id).label("n"),
        )
        .where(on_page, received, _W.processed_at.is_not(None))
        .subquery()
    )
    r = ranked.c
    p50, p95 = (r.n * 50 + 99) // 100, (r.n * 95 + 99) // 100
    picked = select(r.page_id, r.rank, r.n, r.lag).where(
        or_(r.rank == p50, r.rank == p95, r.rank == r.n)
    )
    lags: dict[str, dict[str, int]] = {}
    for pid, rank, n, value in conn.execute(picked):
        ms = max(0, round(value))
        mine = lags.setdefault(pid, {})
        for name, percent in (("p50", 50), ("p95", 95), ("max", 100)):
            if rank == (n * percent + 99) // 100:
                mine[name] = ms
    found: dict[str, Webhook] = {}
    for pid in set(counts) | set(pending) | set(lags):
        n, failed = counts.get(pid, (0, 0))
        waiting, oldest = pending.get(pid, (0, None))
        age = None
        if oldest is not None:
            age = max(0, round((window.until - oldest).total_seconds() * 1000))
        mine = lags.get(pid, {})
        found[pid] = Webhook(
            received=n,
            failed=failed,
            lag_p50_ms=mine.get("p50"),
            lag_p95_ms=mine.get("p95"),
            lag_max_ms=mine.get("max"),
            pending=waiting,
            oldest_pending_at=oldest,
            oldest_pending_age_ms=age,
        )
    return found


def _conversations(
    conn: Connection, window: Window, page_id: str | None
) -> dict[str, Conversations]:
    handed_over = _C.handed_over == true()
    query = (
        select(
            _C.page_id,
            _count(window.holds(_C.updated_at)),
            _count(and_(_C.status == "waiting", ~handed_over)),
            _count(handed_over),
        )
        .where(_on_page(_C.page_id, page_id))
        .group_by(_C.page_id)
    )
    return {
        pid: Conversations(int(active), int(waiting), int(over))
        for pid, active, waiting, over in conn.execute(query)
    }


def _flows(conn: Connection, window: Window, page_id: str | None) -> list[FlowReport]:
    events: dict[str, dict[str, int]] = {}
    query = (
        select(_F.flow_id, _F.kind, func.count())
        .where(_on_page(_F.page_id, page_id), window.holds(_F.at), _F.flow_id.is_not(None))
        .group_by(_F.flow_id, _F.kind)
    )
    for flow_id, kind, n in conn.execute(query):
        events.setdefault(flow_id, {})[kind] = int(n)
    waiting: dict[str, dict[str, int]] = {}
    query = (
        select(_C.flow_id, _C.step, func.count())
        .where(
            _on_page(_C.page_id, page_id),
            _C.status == "waiting",
            _C.handed_over != true(),
            _C.flow_id.is_not(None),
        )
        .group_by(_C.flow_id, _C.step)
    )
    for flow_id, step, n in conn.execute(query):
        waiting.setdefault(flow_id, {})[step or "?"] = int(n)
    # The deployed flows appear even when nothing happened in them (a flow that never
    # starts is worth seeing); their steps give the drop-off its order.
    order = _step_order(conn)
    reports = []
    for flow_id in sorted(set(events) | set(waiting) | set(order)):
        counts = events.get(flow_id, {})
        steps = order.get(flow_id, [])
        position = {step: n for n, step in enumerate(steps)}
        at_steps = waiting.get(flow_id, {})
        drop_off = [
            StepWaiting(step, n)
            for step, n in sorted(
                at_steps.items(), key=lambda item: (position.get(item[0], len(steps)), item[0])
            )
        ]
        reports.append(
            FlowReport(
                flow_id=flow_id,
                starts=counts.get("start", 0),
                ends=counts.get("end", 0),
                faults=counts.get("fault", 0),
                hand_overs=counts.get("hand_over", 0),
                drop_off=drop_off,
            )
        )
    return reports


def _step_order(conn: Connection) -> dict[str, list[str]]:
    """The steps of each deployed flow, in the order they are written."""
    order: dict[str, list[str]] = {}
    for flow_id, ir in conn.execute(select(_V.flow_id, _V.ir).where(_V.is_current == true())):
        steps = ir.get("steps") if isinstance(ir, dict) else None
        order[flow_id] = list(steps) if isinstance(steps, dict) else []
    return order


def _errors(conn: Connection, window: Window, page_id: str | None, limit: int) -> list[RecentError]:
    sends = (
        select(
            _M.created_at,
            _M.page_id,
            _M.psid,
            _M.error_code,
            _M.error_subcode,
            _M.error_message,
            # Only the source out of the body: the message itself stays in the database.
            _M.body["source"].as_string(),
        )
        .where(
            _on_page(_M.page_id, page_id),
            _M.direction == "outbound",
            _M.status == "failed",
            window.holds(_M.created_at),
        )
        .order_by(_M.created_at.desc(), _M.id.desc())
        .limit(limit)
    )
    found: list[tuple[datetime, int, RecentError]] = []
    for at, pid, psid, code, subcode, message, source in conn.execute(sends):
        error = RecentError(
            _at(at), "send_failed", pid, psid, source, message, code=code, subcode=subcode
        )
        found.append((error.at, 0, error))
    faults = (
        select(_F.at, _F.page_id, _F.psid, _F.flow_id, _F.step, _F.detail, _F.source)
        .where(_on_page(_F.page_id, page_id), _F.kind == "fault", window.holds(_F.at))
        .order_by(_F.at.desc(), _F.id.desc())
        .limit(limit)
    )
    for at, pid, psid, flow_id, step, detail, source in conn.execute(faults):
        error = RecentError(
            _at(at), "flow_fault", pid, psid, source, detail, flow_id=flow_id, step=step
        )
        found.append((error.at, 1, error))
    # Newest first (a stable sort keeps each query's own order among equal times).
    found.sort(key=lambda item: item[0], reverse=True)
    return [error for _, _, error in found[:limit]]


def _users(conn: Connection, window: Window, page_id: str | None, limit: int) -> list[ActiveUser]:
    inbound = _M.direction == "inbound"
    messages_in = _count(inbound).label("messages_in")
    messages_out = _count(_M.direction == "outbound").label("messages_out")
    last_seen = func.max(case((inbound, _M.created_at)), type_=_M.created_at.type)
    active = (
        select(_M.page_id, _M.psid, messages_in, messages_out, last_seen.label("last_seen"))
        .where(_on_page(_M.page_id, page_id), window.holds(_M.created_at))
        .group_by(_M.page_id, _M.psid)
        .order_by(
            messages_in.desc(),
            messages_out.desc(),
            # NULLS LAST spelled out: PostgreSQL sorts NULLs first in descending order.
            last_seen.desc().nulls_last(),
            _M.page_id,
            _M.psid,
        )
        .limit(limit)
        .subquery()
    )
    a = active.c
    query = (
        select(
            a.page_id,
            a.psid,
            a.messages_in,
            a.messages_out,
            a.last_seen,
            _C.flow_id,
            _C.step,
            _C.status,
            func.coalesce(_C.handed_over, literal(False)),
        )
        .select_from(
            active.outerjoin(tables.conversations, and_(_C.page_id == a.page_id, _C.psid == a.psid))
        )
        .order_by(
            a.messages_in.desc(),
            a.messages_out.desc(),
            a.last_seen.desc().nulls_last(),
            a.page_id,
            a.psid,
        )
    )
    return [
        ActiveUser(
            page_id=pid,
            psid=psid,
            messages_in=int(n_in),
            messages_out=int(n_out),
            last_seen=_utc(seen),
            flow_id=flow_id,
            step=step,
            status=status,
            handed_over=bool(over),
        )
        for pid, psid, n_in, n_out, seen, flow_id, step, status, over in conn.execute(query)
    ]


# ----------------------------------------------------------------------------- helpers


def _utc(value: datetime | str | None) -> datetime | None:
    """An aware UTC datetime (SQLite gives naive ones, and text from MAX over a CASE)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _at(value: datetime | str) -> datetime:
    found = _utc(value)
    assert found is not None
    return found


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the millisecond: "2025-01-02T03:04:05.678Z"."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
