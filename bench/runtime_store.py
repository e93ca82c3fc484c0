"""Benchmark B5: state store load+save latency as stored conversations grow (1k → 100k → 1M).

Run with `.venv/bin/python bench/runtime_store.py` (options: `--sizes 1000,100000`,
`--backends sqlite,postgresql`, `--rounds`, `--ops`, `--pg-url`). For every backend and size it
builds a migrated database, bulk-loads N conversations with a realistic 200–500 B state
(executemany on SQLite, COPY on PostgreSQL), then times the real path, `SqlStore.load` →
modify → `SqlStore.save`, on random PSIDs. Sizes are measured interleaved in randomised rounds
(warm-up round discarded) and the flatness ratio is the median of per-round ratios.

It reports p50/p99 per size, p50(largest)/p50(smallest) and the p99 ratio against the targets
of the performance reference (§8.2 B5: ≤1.25 and ≤1.5), stored bytes per conversation against
2× the serialized state, and the query plans of the hot statements at the largest size. The
PostgreSQL URL comes from `--pg-url`, FLOW_BENCH_DATABASE_URL or FLOW_TEST_DATABASE_URL; its
benchmark schemas are dropped at the end. Exit status is 0 either way: it is a measurement."""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import sqlalchemy

from runtime import db
from runtime.state import ConversationState, Frame
from runtime.store import SqlStore

# Targets (performance reference §8.2, B5).
MAX_P50_RATIO = 1.25
MAX_P99_RATIO = 1.5
MAX_BYTES_VS_STATE = 2.0

PAGE_ID = "104729531843312"
FIRST_PSID = 2_447_865_768_624_871
NAMES = ["Ada", "Zoë", "Grace", "Linus", "Mária", "Tomás", "Aiko", "Chidi", "Olek", "Priya"]
TOPICS = ["Technical support", "Billing", "Pricing", "Partnership", "Other"]
COLUMNS = (
    "page_id", "psid", "flow_id", "flow_version", "step", "position", "status", "tries",
    "handed_over", "variables", "stack", "state_version", "version", "created_at", "updated_at",
)  # fmt: skip


def psid(i: int) -> str:
    """The PSID of conversation number i (16 digits, like Messenger's)."""
    return str(FIRST_PSID + i)


def state_for(i: int) -> ConversationState:
    """A conversation waiting in the lead-generation flow, with realistic variables."""
    stack = []
    if i % 5 == 0:  # every fifth user was interrupted by another flow
        stack = [Frame("welcome", "sha256:" + "e" * 64, "menu", "menu.2", "interrupt", "waiting")]
    return ConversationState(
        page_id=PAGE_ID,
        psid=psid(i),
        flow_id="lead_generation",
        flow_version="sha256:9f1c751b6577705dadce989b245dda6148bb03ec21e7b473c5c130cea5aaf985",
        step="ask_email",
        position="ask_email.1",
        status="waiting",
        tries=i % 3,
        variables={
            "first_name": NAMES[i % len(NAMES)],
            "lead_email": f"user{i}@example.com",
            "topic": TOPICS[i % len(TOPICS)],
            "score": i % 7,
            "interests": ["pricing", "demo"][: 1 + i % 2],
        },
        stack=stack,
        version=1,
    )


def serialized_bytes(sample: int = 1000) -> float:
    """Average size of a state as compact JSON (what the store keeps)."""
    return statistics.fmean(len(db.dumps(state_for(i).to_dict()).encode()) for i in range(sample))


def rows(start: int, stop: int, now: datetime) -> Iterator[tuple[object, ...]]:
    """Conversation rows ready for executemany/COPY."""
    for i in range(start, stop):
        s = state_for(i)
        stack = [vars(f) for f in s.stack]
        yield (
            s.page_id, s.psid, s.flow_id, s.flow_version, s.step, s.position, s.status,
            s.tries, s.handed_over, db.dumps(s.variables), db.dumps(stack), s.state_version,
            s.version, now, now,
        )  # fmt: skip


# ----------------------------------------------------------------------------- databases


class Database:
    """One benchmark database of `size` conversations, with its store."""

    def __init__(self, backend: str, size: int, url: str) -> None:
        self.backend, self.size, self.url = backend, size, url
        db.upgrade(url)
        self.store = SqlStore(db.create_engine_for(url))

    def load(self) -> float:
        """Bulk-insert the conversations; returns seconds taken."""
        started = time.perf_counter()
        now = datetime.now(UTC)
        raw = self.store.engine.raw_connection()
        try:
            cursor = raw.cursor()
            if self.backend == "sqlite":
                # SQLAlchemy's text format for SQLite timestamps.
                stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
                marks = ", ".join("?" * len(COLUMNS))
                sql = f"INSERT INTO conversations ({', '.join(COLUMNS)}) VALUES ({marks})"
                cursor.executemany(sql, ((*r[:-2], stamp, stamp) for r in rows(0, self.size, now)))
            else:
                sql = f"COPY conversations ({', '.join(COLUMNS)}) FROM STDIN"
                with cursor.copy(sql) as copy:
                    for row in rows(0, self.size, now):
                        copy.write_row(row)
            raw.commit()
        finally:
            raw.close()
        self._settle()
        return time.perf_counter() - started

    def _settle(self) -> None:
        # Fresh statistics and a checkpointed file, as a long-running database would have.
        auto = self.store.engine.execution_options(isolation_level="AUTOCOMMIT")
        with auto.connect() as conn:
            if self.backend == "sqlite":
                conn.exec_driver_sql("ANALYZE")
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                conn.exec_driver_sql("VACUUM ANALYZE conversations")

    def bytes_per_conversation(self) -> float:
        """Stored bytes (table + indexes) per conversation."""
        with self.store.engine.connect() as conn:
            if self.backend == "sqlite":
                try:
                    used = conn.exec_driver_sql(
                        "SELECT sum(pgsize) FROM dbstat WHERE name = 'conversations' "
                        "OR tbl_name = 'conversations'"
                    ).scalar()
                except sqlalchemy.exc.OperationalError:  # SQLite built without dbstat
                    pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
                    size = conn.exec_driver_sql("PRAGMA page_size").scalar()
                    used = pages * size
            else:
                used = conn.exec_driver_sql(
                    "SELECT pg_total_relation_size('conversations')"
                ).scalar()
        return used / self.size

    def measure(self, ops: int, rng: random.Random) -> list[float]:
        """Latency in µs of `ops` load+save pairs on random conversations."""
        store, size, out = self.store, self.size, []
        gc.collect()
        for _ in range(ops):
            user = psid(rng.randrange(size))
            t0 = time.perf_counter_ns()
            state = store.load(PAGE_ID, user)
            assert state is not None
            state.variables["score"] += 1
            state.step = "ask_topic" if state.step == "ask_email" else "ask_email"
            store.save(state)
            out.append((time.perf_counter_ns() - t0) / 1000)
        return out


@contextmanager
def sqlite_database(size: int, root: Path) -> Iterator[Database]:
    """A SQLite file database."""
    database = Database("sqlite", size, f"sqlite:///{root / f'bench-{size}.db'}")
    try:
        yield database
    finally:
        database.store.engine.dispose()


@contextmanager
def pg_database(size: int, base_url: str) -> Iterator[Database]:
    """A PostgreSQL schema of its own, dropped afterwards."""
    schema = f"flowbench_{size}"
    admin = db.create_engine_for(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = sqlalchemy.engine.make_url(db.normalize_url(base_url)).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    database = Database("postgresql", size, url.render_as_string(hide_password=False))
    try:
        yield database
    finally:
        database.store.engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()


# ----------------------------------------------------------------------------- run and report


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0–1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def mark(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def run_backend(backend: str, sizes: list[int], args: argparse.Namespace, root: Path) -> None:
    """Build, load and measure every size on one backend, then print the report."""
    print(f"\n## {backend}")
    rng = random.Random(20260517)
    with ExitStack() as stack:
        databases = []
        for size in sizes:
            if backend == "sqlite":
                database = stack.enter_context(sqlite_database(size, root))
            else:
                database = stack.enter_context(pg_database(size, args.pg_url))
            seconds = database.load()
            print(f"  loaded {size:>9,} conversations in {seconds:6.1f} s")
            databases.append(database)
        stored = {d.size: d.bytes_per_conversation() for d in databases}

        samples: dict[int, list[float]] = {d.size: [] for d in databases}
        round_p50: dict[int, list[float]] = {d.size: [] for d in databases}
        round_p99: dict[int, list[float]] = {d.size: [] for d in databases}
        for round_ in range(args.rounds + 1):
            order = databases[:]
            rng.shuffle(order)
            for database in order:
                latencies = database.measure(args.ops, rng)
                if round_ == 0:
                    continue  # warm-up: caches, pool, statement compilation
                samples[database.size] += latencies
                round_p50[database.size].append(statistics.median(latencies))
                round_p99[database.size].append(pct(latencies, 0.99))
        plans = databases[-1].store.query_plans()

    state_bytes = serialized_bytes()
    n_ops = args.ops * args.rounds
    print(f"\n  load+save latency, µs ({n_ops} ops per size in {args.rounds} rounds)")
    print(f"  | {'conversations':>13} | {'p50':>7} | {'p99':>7} | {'bytes/conv':>10} |")
    print(f"  |{'-' * 15}|{'-' * 9}|{'-' * 9}|{'-' * 12}|")
    for size in sizes:
        p50, p99 = statistics.median(samples[size]), pct(samples[size], 0.99)
        print(f"  | {size:>13,} | {p50:7.0f} | {p99:7.0f} | {stored[size]:10.0f} |")

    small, big = sizes[0], sizes[-1]
    if big != small:
        ratios50 = [b / s for b, s in zip(round_p50[big], round_p50[small], strict=True)]
        ratios99 = [b / s for b, s in zip(round_p99[big], round_p99[small], strict=True)]
        r50, r99 = statistics.median(ratios50), statistics.median(ratios99)
        print(f"\n  p50({big:,})/p50({small:,}) = {r50:.2f} "
              f"[{min(ratios50):.2f}–{max(ratios50):.2f}]  target ≤ {MAX_P50_RATIO}  "
              f"{mark(r50 <= MAX_P50_RATIO)}")  # fmt: skip
        print(f"  p99({big:,})/p99({small:,}) = {r99:.2f} "
              f"[{min(ratios99):.2f}–{max(ratios99):.2f}]  target ≤ {MAX_P99_RATIO}  "
              f"{mark(r99 <= MAX_P99_RATIO)}")  # fmt: skip
    per_state = stored[big] / state_bytes
    print(f"  bytes/conversation at {big:,}: {stored[big]:.0f} = {per_state:.2f}× the serialized "
          f"state ({state_bytes:.0f} B)  target ≤ {MAX_BYTES_VS_STATE}×  "
          f"{mark(per_state <= MAX_BYTES_VS_STATE)}")  # fmt: skip
    print(f"\n  query plans at {big:,} conversations:")
    for name, plan in plans.items():
        print(f"    {name}: " + plan.replace("\n", "\n      "))


def main() -> None:
    """Parse options, run every backend, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=1000, help="load+save pairs per size per round")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("FLOW_BENCH_DATABASE_URL")
        or os.environ.get("FLOW_TEST_DATABASE_URL"),
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    backends = [b.strip() for b in args.backends.split(",")]

    print("# B5: state store load+save latency vs stored conversations")
    print(f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
          f"SQLAlchemy {sqlalchemy.__version__}, psycopg {psycopg.__version__}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"serialized state: {serialized_bytes():.0f} B on average (compact JSON)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flowlang-bench-") as tmp:
        for backend in backends:
            if backend == "postgresql" and not args.pg_url:
                print("\n## postgresql: skipped (no --pg-url, FLOW_BENCH_DATABASE_URL or "
                      "FLOW_TEST_DATABASE_URL)")  # fmt: skip
                continue
            run_backend(backend, sizes, args, Path(tmp))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
