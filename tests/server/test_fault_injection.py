"""Fault injection: several server processes on one PostgreSQL, under load, with faults.

What is proved. Three `flowc serve flows/` processes share one PostgreSQL schema and a fake
Graph API (server/emulator.py, a process of its own) that fails 10% of the Send API calls:
2% each with codes 2 and 1 (transient, HTTP 503/500) and 4, 32 and 613 (rate limits). Users
run the lead-generation conversation of flows/lead_generation.flow (a demo request, a name, an
address that is not one, then a valid one: 4 messages, 7 replies each, the replies derived by
running the same flows through `runtime.engine.advance` in memory). Webhooks go to the
instances at random; one that gets no 200 is delivered again to another instance, as Meta
redelivers, and 2% of the acknowledged ones are delivered a second time on purpose (Meta
delivers at least once). Mid-load one fault strikes:

- test A (500 users): one instance is SIGKILLed and restarted on its port;
- test B (200 users): the PostgreSQL server is restarted (every connection is cut, webhooks
  get 503 meanwhile and are redelivered).

Once nothing is pending any more (bounded by a timeout), these hold:

1. every inbound event was processed exactly once: each unique event is one `webhook_events`
   row, all 'done'; one inbound `message_log` row per message id; each user's outbound rows,
   in id order, are exactly the expected replies, all 'sent' (an event processed twice would
   have written its replies twice, a lost one none);
2. every expected reply was delivered: the emulator accepted (HTTP 200) each one;
3. per-user order is intact: the texts the emulator accepted for a user, with immediate
   repetitions removed, are exactly the expected sequence;
4. duplicates are bounded: accepted sends beyond the expected ones are at most
   `DUPLICATES_PER_FAULT` per fault (the count is printed).

Pace: each user sends a message only after the previous one was acknowledged, not after its
replies arrived. The acknowledgement means the event is stored, so the inbox order is the
typing order and the expected replies do not depend on timing; and up to 4 events of one
conversation can then wait in the inbox at once, stored by different instances, which is what
tests that a conversation's events are processed in order and by one instance at a time (at a
human pace there would rarely be more than one). First deliveries are paced (events/s) so
that the fault strikes while events are being stored, processed and sent.

The duplicate window. The Send API has no idempotency key: a message whose call was under
way when its instance died (or whose 'sent' was not yet committed when the database went
away) cannot be known to have arrived, and the instance that takes the conversation over sends
it again. The user then sees that one message twice, in a row: a conversation's next message
goes out only after the previous one is recorded as sent. One process has at most
`server.graph.DEFAULT_MAX_CONNECTIONS` Send API calls open at once, so one fault re-sends at
most that many messages: that is `DUPLICATES_PER_FAULT`. Everything else is sent once.

Both tests start real processes and restart PostgreSQL: they need FLOW_TEST_DATABASE_URL and
a machine where the test may run `pg_ctlcluster` (CI's); they fail, not skip, without them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dbkit
import pytest
from cluster_kit import (
    FLOWS,
    PAGE_ID,
    Cluster,
    NotQuiescent,
    WebhookDriver,
    can_restart_postgres,
    converse,
    ensure_postgres,
    in_thread,
    restart_postgres,
    running_cluster,
    text_webhook,
)
from sqlalchemy import select

from flowlang.load import compile_paths
from runtime import tables
from runtime.engine import advance
from runtime.events import Inbound
from runtime.program import ProgramView
from runtime.state import ConversationState
from server.graph import DEFAULT_MAX_CONNECTIONS

#: Re-sent messages one fault may cause (see "The duplicate window" above).
DUPLICATES_PER_FAULT = DEFAULT_MAX_CONNECTIONS

#: Several instances share the database: work of a dead instance is taken over after this.
# Short enough to keep the test quick, long enough that a process starved of CPU on a loaded
# 2-core machine (3 servers, the emulator, the load and PostgreSQL) keeps its leases.
FAST_TAKEOVER = {"FLOW_RECLAIM_AFTER": "2", "FLOW_OUTBOX_LEASE_SECONDS": "4"}

#: The Send API errors injected, each on 2% of the calls (10% in all): transient (2, 1) and
#: rate limits (4, 32, 613).
INJECTED_CODES = (2, 1, 4, 32, 613)
INJECTED_SHARE = 0.02


def _need_postgres() -> str:
    if not dbkit.PG_URL:
        pytest.fail("the fault-injection tests need FLOW_TEST_DATABASE_URL (a PostgreSQL)")
    return dbkit.PG_URL


# ----------------------------------------------------------------------------- the users


@dataclass
class User:
    """One user's messages (as webhook bodies) and the replies the bot owes them."""

    psid: str
    texts: list[str]
    mids: list[str]
    expected: list[str]
    bodies: list[bytes] = field(default_factory=list)


def script(i: int) -> list[str]:
    """What user `i` types: a demo request, a name, a wrong address, a right one."""
    return [
        "I'm interested in a demo",
        f"Ada{i}",
        f"ada{i} at example dot com",
        f"ada{i}@example.com",
    ]


def make_users(count: int, tag: str) -> list[User]:
    """`count` users; their expected replies come from running the same flows in memory."""
    result = compile_paths([str(FLOWS)])
    assert result.program is not None, "flows/ does not compile"
    view = ProgramView(result.program)
    users = []
    for i in range(count):
        psid = f"{tag}{i:05d}"
        texts = script(i)
        mids = [f"m_{tag}_{i}_{k}" for k in range(len(texts))]
        state = ConversationState(PAGE_ID, psid)
        expected: list[str] = []
        for text, mid in zip(texts, mids, strict=True):
            turn = advance(view, state, Inbound("text", text=text, mid=mid), profile={})
            expected += [item.body["text"] for item in turn.outbox if item.kind == "message"]
            state = turn.state
        user = User(psid, texts, mids, expected)
        user.bodies = [text_webhook(psid, t, m) for t, m in zip(texts, mids, strict=True)]
        users.append(user)
    # The script is the one the module docstring describes: 7 distinct replies.
    assert len(users[0].expected) == 7 and len(set(users[0].expected)) == 7, users[0].expected
    return users


def inject_send_failures(cluster: Cluster) -> None:
    """Make 10% of Send API calls fail (2% per code in INJECTED_CODES). Rules are tried in
    order, so each one's rate is raised to keep its share of all calls."""
    left = 1.0
    for code in INJECTED_CODES:
        cluster.fail(code=code, rate=INJECTED_SHARE / left)
        left -= INJECTED_SHARE


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Timings and counters of one run, printed with the verdict."""

    users: int
    instances: int
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Why the system never went quiet (None: it did).
    not_quiescent: str | None = None

    def show(self) -> None:
        """Print the timings and the notes (pytest shows them with a failure, or with -s)."""
        took = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        print(f"\n{self.users} users on {self.instances} instances: {took}")
        for note in self.notes:
            print("  " + note)


def drive(
    cluster: Cluster,
    users: list[User],
    *,
    rate: float,
    fault_at: float,
    fault: Callable[[], Awaitable[str]],
    run: Run,
    settle_timeout: float = 60.0,
) -> None:
    """Deliver every user's messages; once `fault_at` of them are acknowledged, run the
    fault (concurrently with the load); then wait until nothing is pending. A timeline of
    the backlog every few seconds goes into the run's notes."""
    scripts = {u.psid: u.bodies for u in users}
    total = sum(len(b) for b in scripts.values())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        timeline: list[str] = []

        async with WebhookDriver(cluster.webhook_urls, rate=rate, redeliver=0.02) as driver:

            async def sample() -> None:
                while True:
                    try:
                        backlog = await in_thread(cluster.backlog)
                        sent = (await in_thread(cluster.graph_stats)).get(
                            "POST /me/messages 200", 0
                        )
                        state = (
                            f"{backlog.events.get('pending', 0)} pending, "
                            f"{backlog.outbound_pending} to send, {sent} sent"
                        )
                    except Exception as e:  # the database may be restarting
                        state = type(e).__name__
                    timeline.append(
                        f"{loop.time() - began:4.0f}s {driver.stats.acked} acked, {state}"
                    )
                    await asyncio.sleep(3.0)

            async def strike() -> None:
                await driver.wait_acked(int(total * fault_at))
                at = loop.time() - began
                what = await fault()
                took = loop.time() - began - at
                run.notes.append(f"fault at {at:.1f} s: {what} (took {took:.1f} s)")

            sampler = asyncio.create_task(sample())
            try:
                await asyncio.gather(converse(driver, scripts), strike())
                run.seconds["load"] = loop.time() - began
                settle = loop.time()
                try:
                    await in_thread(cluster.wait_quiescent, total, settle_timeout)
                except NotQuiescent as e:
                    run.not_quiescent = str(e)  # checked with the rest, for all the evidence
                run.seconds["settle"] = loop.time() - settle
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
                run.notes.append("timeline: " + " | ".join(timeline))
        stats = driver.stats
        run.notes.append(
            f"webhooks: {total} events acknowledged in {stats.posts} POSTs; "
            f"{stats.redelivered} redelivered on purpose; retried: {dict(stats.retried)}"
        )

    try:
        asyncio.run(main())
    except BaseException:
        run.show()
        raise


# ----------------------------------------------------------------------------- the verdict


def _examples(problems: list[str], limit: int = 12) -> str:
    shown = problems[:limit]
    more = f"\n  … and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n".join("  " + p for p in shown) + more


def _collapse(texts: list[str]) -> list[str]:
    """Immediate repetitions removed: [a, a, b] → [a, b]."""
    return [t for i, t in enumerate(texts) if i == 0 or texts[i - 1] != t]


def _first_difference(got: list[str], expected: list[str]) -> str:
    for k, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            return f"reply {k + 1} was {g!r}, expected {e!r}"
    if len(got) < len(expected):
        return f"only {len(got)} of {len(expected)} replies; next expected {expected[len(got)]!r}"
    return f"{len(got) - len(expected)} extra replies after the last one: {got[len(expected) :]!r}"


def _text(body: dict[str, Any] | None) -> str | None:
    message = (body or {}).get("message")
    return message.get("text") if isinstance(message, dict) else None


def check(cluster: Cluster, users: list[User], faults: int, run: Run) -> None:
    """Assert the four invariants of the module docstring; print the counts either way."""
    by_psid = {u.psid: u for u in users}
    problems: dict[str, list[str]] = {}

    def problem(kind: str, text: str) -> None:
        problems.setdefault(kind, []).append(text)

    # 1. Exactly once, from the database.
    events, log = tables.webhook_events, tables.message_log
    with cluster.engine.connect() as conn:
        stored = conn.execute(select(events.c.psid, events.c.status, events.c.attempts)).all()
        inbound = conn.execute(
            select(log.c.psid, log.c.mid).where(log.c.direction == "inbound")
        ).all()
        outbound = conn.execute(
            select(log.c.psid, log.c.kind, log.c.body, log.c.status)
            .where(log.c.direction == "outbound")
            .order_by(log.c.id)
        ).all()
    unique_events = sum(len(u.mids) for u in users)
    statuses = Counter(row.status for row in stored)
    if len(stored) != unique_events or statuses != {"done": unique_events}:
        problem(
            "exactly once (webhook_events)",
            f"{len(stored)} events stored for {unique_events} unique ones, statuses "
            f"{dict(statuses)}",
        )
    all_mids = Counter(row.mid for row in inbound)
    wanted_mids = Counter(m for u in users for m in u.mids)
    if all_mids != wanted_mids:
        missing = sorted((wanted_mids - all_mids).elements())
        extra = sorted((all_mids - wanted_mids).elements())
        problem(
            "exactly once (inbound message_log)",
            f"{len(inbound)} inbound rows for {len(wanted_mids)} messages; "
            f"missing {missing[:5]}, extra {extra[:5]}",
        )
    rows_of: dict[str, list[Any]] = {}
    for row in outbound:
        rows_of.setdefault(row.psid, []).append(row)
    for user in users:
        mine = rows_of.get(user.psid, [])
        texts = [row.body["payload"].get("text") for row in mine if row.kind == "message"]
        if texts != user.expected:
            problem(
                "exactly once (outbound message_log)",
                f"user {user.psid}: {_first_difference(texts, user.expected)}",
            )
        unsent = Counter(row.status for row in mine if row.status != "sent")
        if unsent:
            problem("outbound rows not sent", f"user {user.psid}: {dict(unsent)}")
    retried_events = sum(1 for row in stored if row.attempts > 1)

    # 2-4. Delivery, order and duplicates, from the fake Graph API.
    calls = cluster.graph_requests()
    accepted: dict[str, list[str]] = {}
    failed: Counter[Any] = Counter()
    for call in calls:
        if call["status"] != 200:
            failed[(call.get("response") or {}).get("error", {}).get("code", call["status"])] += 1
            continue
        text = _text(call.get("json"))
        if text is not None:
            accepted.setdefault(call["psid"], []).append(text)
    strangers = sorted(set(accepted) - set(by_psid))
    if strangers:
        problem("delivery", f"messages to users nobody played: {strangers[:5]}")
    duplicates = 0
    for user in users:
        got = accepted.get(user.psid, [])
        missing = Counter(user.expected) - Counter(got)
        if missing:
            problem(
                "every reply delivered",
                f"user {user.psid} never got {sorted(missing.elements())!r}",
            )
        unexpected = sorted(set(got) - set(user.expected))
        if unexpected:
            problem("every reply delivered", f"user {user.psid} got unexpected {unexpected!r}")
        if _collapse(got) != user.expected:
            problem(
                "per-user order",
                f"user {user.psid}: {_first_difference(_collapse(got), user.expected)} "
                f"(accepted in this order: {got!r})",
            )
        duplicates += max(0, len(got) - len(user.expected))
    if run.not_quiescent is not None:
        problem("quiescence", run.not_quiescent)
        leases = cluster.leases()
        for row in cluster.pending_outbound():
            text = (row.body.get("payload") or {}).get("text")
            times = accepted.get(row.psid, []).count(text)
            problem(
                "quiescence",
                f"row {row.id} to user {row.psid} ({text!r}) is still pending; the fake Graph "
                f"API accepted that text for that user {times} time(s); outbox lease: "
                f"{leases.get(row.psid, 'none')}",
            )
    bound = faults * DUPLICATES_PER_FAULT
    if duplicates > bound:
        problem(
            "duplicates bounded",
            f"{duplicates} duplicate sends, more than {bound} ({faults} faults × "
            f"{DUPLICATES_PER_FAULT})",
        )

    run.notes.append(
        f"duplicates: {duplicates} re-sent messages (bound {bound} = {faults} faults × "
        f"{DUPLICATES_PER_FAULT})"
    )
    run.notes.append(
        f"Send API: {sum(len(v) for v in accepted.values())} messages accepted, injected "
        f"failures by code {dict(sorted(failed.items(), key=str))}; "
        f"{retried_events} events have more than one processing attempt recorded"
    )
    run.show()
    if problems:
        report = "\n".join(
            f"{kind}: {len(found)} problems\n{_examples(found)}" for kind, found in problems.items()
        )
        # Only the evidence: the traceback of this function would bury it.
        pytest.fail("invariants broken:\n" + report, pytrace=False)


# ----------------------------------------------------------------------------- the tests


def test_three_instances_survive_a_sigkill_mid_load(tmp_path: Path) -> None:
    """Test A: 500 users, 3 instances, one SIGKILLed and restarted mid-load."""
    _need_postgres()
    users = make_users(500, "71")
    run = Run(len(users), 3)
    started = time.monotonic()
    with (
        dbkit.pg_schema("flowfault") as schema_url,
        running_cluster(tmp_path, schema_url, size=3, settings=FAST_TAKEOVER) as cluster,
    ):
        run.seconds["start"] = time.monotonic() - started
        inject_send_failures(cluster)

        async def kill_and_restart() -> str:
            await in_thread(cluster.kill, 1)
            await asyncio.sleep(1.0)  # webhooks meanwhile meet a refused connection
            await in_thread(cluster.restart, 1)
            return "instance 1 SIGKILLed, restarted on its port 1 s later"

        drive(cluster, users, rate=150, fault_at=0.4, fault=kill_and_restart, run=run)
        run.seconds["total"] = time.monotonic() - started
        check(cluster, users, faults=cluster.kills, run=run)


def test_instances_ride_out_a_postgresql_restart_mid_load(tmp_path: Path) -> None:
    """Test B: 200 users, 3 instances, the PostgreSQL server restarted mid-load."""
    _need_postgres()
    why_not = can_restart_postgres()
    if why_not is not None:
        pytest.fail(f"this test restarts PostgreSQL, which this machine does not allow: {why_not}")
    users = make_users(200, "72")
    run = Run(len(users), 3)
    started = time.monotonic()
    try:
        with (
            dbkit.pg_schema("flowfault") as schema_url,
            running_cluster(tmp_path, schema_url, size=3, settings=FAST_TAKEOVER) as cluster,
        ):
            run.seconds["start"] = time.monotonic() - started
            inject_send_failures(cluster)

            async def restart_database() -> str:
                took = await in_thread(restart_postgres)
                return f"PostgreSQL restarted, accepting connections again after {took:.1f} s"

            drive(cluster, users, rate=100, fault_at=0.4, fault=restart_database, run=run)
            run.seconds["total"] = time.monotonic() - started
            check(cluster, users, faults=1, run=run)
    finally:
        ensure_postgres()
