"""Load benchmark for several server processes on PostgreSQL (issue 6, item 4; performance
reference §8, B1, B2, B5, B7).

Every figure is a ratio against a baseline measured in the same run, in interleaved,
randomised rounds (a warm-up round discarded; the median of per-round ratios with min and
max), method of ../shared/reference/performance-anchors.md §8.1. It reuses bench/webhook.py:
its bare Starlette endpoint (HMAC check + `json.loads`), its server roles, its asyncio load
generator (extended here to alternate between several ports) and its fake Graph API
(server/emulator.py in a process of its own).

1. Ack and end to end, per configuration: bare Starlette (1 process; and 2 processes, the
   floor of the 2-process layout), the real app (`server.app.create_app`, as `flowc serve`)
   on SQLite with 1 process, on PostgreSQL with 1 process, and on PostgreSQL with 2 processes
   on one database (the generator alternates between their ports: request i goes to process
   i mod 2). The events are real Messenger text messages, each from a new user ("I'm
   interested in a demo": one turn, 2 Send API calls), so processing and sending run in the
   same processes while they acknowledge. A warm-up (300 events per configuration, closed
   loop; 100 with --quick) is discarded; then, per round, every configuration in a random order:
   - closed loop, 64 connections: ack events/s (POSTs answered 200 per second) and p99;
   - end to end: events/s from the first POST to the last reply accepted by the fake Graph
     API (every run waits for all its replies, so the next one starts on an idle server);
   then every open loop in a random order:
   - at 50% of that round's closed-loop ack rate: ack p50/p99 (target p99 ≤ 20 ms);
   - for the real app, also at 50% of its end-to-end rate: a load it can keep up with
     (the ack rate is far above what it can process, so at 50% of it work piles up).
   Ack events/s and the first open-loop p99 are given as ratios to the bare endpoint
   (target ≥ 0.75×).
2. The state store at 1k vs 1M stored conversations on PostgreSQL: bench/runtime_store.py
   run as a subprocess (`--sizes 1000,1000000 --backends postgresql`).
3. The cost of the per-conversation gate (advisory lock + "no earlier pending event" check,
   server/processor.py `_gate`): PostgreSQL 1 process with the gate (the default) against the
   same with `processor_options={"gate": False}`, both in the rounds of 1; ratio gate/no gate
   of ack events/s and end-to-end events/s (target ≥ 0.90, i.e. ≤ 10% cost).

Pinning (2 CPUs): every 1-process server on CPU0; the second process of a 2-process
configuration on CPU1, which it shares with the load generator and the fake Graph API (both
on CPU1). PostgreSQL's own processes are not pinned: they run on either CPU. So the
2-process figures are not "2 cores' worth of server": they show what a second process adds
on a box whose second core is also driving the load.

    .venv/bin/python bench/scale.py [--rounds 5] [--events 2000] [--open-seconds 3]
                                    [--quick] [--configs pg-1,pg-1-nogate] [--no-store]
                                    [--pg-url URL] [--pg-options=-csynchronous_commit=off]

The PostgreSQL URL comes from `--pg-url`, FLOW_BENCH_DATABASE_URL or FLOW_TEST_DATABASE_URL;
each configuration gets a throw-away schema, dropped at the end. Not a test: it prints
figures and PASS/MISS against the targets, and exits 0 unless something broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import webhook as wb  # noqa: E402  (bench/webhook.py: servers, generator, emulator)

#: Targets (performance reference §8.3).
ACK_RATIO = 0.75  # B1: ack throughput vs the bare endpoint, with a durable enqueue
ACK_P99_MS = 20.0  # B1: ack p99 at 50% of the maximum
GATE_RATIO = 0.90  # B7: per-conversation serialization costs ≤ 10%
STORE_P50 = 1.25  # B5 (checked and printed by runtime_store.py)
#: Per-page Send API rate of each process of the 2-process configuration: Meta allows 300/s
#: per page in all, and docs/deploy.md says to give each of N instances about 250 / N.
TWO_PROCESS_PAGE_RATE = 125
#: Events per configuration in the (discarded) warm-up: pools, caches, plans.
WARM_UP_EVENTS = 300


# ============================================================================ server roles


def real_app(gate: bool) -> Any:
    """The project's app as `flowc serve` builds it (FLOW_* settings, flows/ compiled once);
    `gate=False` switches the per-conversation gate off (to measure its cost only)."""
    import logging

    from flowlang.load import compile_paths
    from server.app import create_app
    from server.settings import load_settings

    logging.basicConfig(level=logging.WARNING)
    program = compile_paths([str(ROOT / "flows")]).program
    options = {} if gate else {"gate": False}
    return create_app(
        load_settings(), flows=[str(ROOT / "flows")], program=program, processor_options=options
    )


def serve(role: str, port: int) -> None:
    """Run one server role on 127.0.0.1:port until killed."""
    if role in ("baseline", "emulator"):
        wb.serve(role, port)
        return
    import uvicorn

    app = real_app(gate=role == "real")
    uvicorn.run(app, host="127.0.0.1", port=port, **wb.UVICORN_FLAGS)


def server(role: str, cpu: int, log: Path, env: dict[str, str] | None = None) -> Any:
    """webhook.py's `server` with the roles of this script (a longer start-up allowance:
    several processes start at once)."""
    return wb.server(role, cpu, log, env, script=__file__, timeout=60)


# ============================================================================ load generation


def generate(args: argparse.Namespace) -> None:
    """Role `load`: build the signed requests, send them, print the result as JSON."""
    import uvloop

    ports = [int(p) for p in args.ports.split(",")]
    requests = wb.signed_requests(args.n, kind=args.kind, tag=args.tag)
    if args.rate:
        result = uvloop.run(wb.open_loop_ports(ports, requests, args.rate, args.connections))
    else:
        result = uvloop.run(wb.closed_loop_ports(ports, requests, args.connections))
    print(json.dumps(asdict(result)))


def load(ports: Sequence[int], n: int, tag: str, rate: float = 0.0) -> wb.Load:
    """N distinct new users' text messages to `ports` (closed loop, or open at `rate`), from
    a generator process on CPU1."""
    argv = [sys.executable, __file__, "load", "--ports", ",".join(map(str, ports))]
    argv += ["--n", str(n), "--kind", "text", "--tag", tag, "--rate", str(rate)]
    argv += ["--connections", str(wb.CONNECTIONS)]
    out = subprocess.run(wb.pinned(1, argv), cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()[-500:]}")
    return wb.Load(**json.loads(out.stdout.strip().splitlines()[-1]))


# ============================================================================ configurations


@dataclass
class Config:
    """One server configuration and its per-round results."""

    name: str
    ports: list[int]
    replies: bool  # a real app: each event must produce SENDS_PER_EVENT sends
    ack: list[wb.Load] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    open: list[wb.Load] = field(default_factory=list)  # at 50% of the ack maximum
    easy: list[wb.Load] = field(default_factory=list)  # at 50% of the end-to-end rate


def wait_replies(emulator_port: int, before: int, expected: int, timeout: float = 180) -> float:
    """Wait until `expected` more sends reached the fake Graph API; the epoch time of the
    last request it received."""
    import httpx

    deadline = time.monotonic() + timeout
    # One keep-alive connection, polled every 50 ms: the figure comes from the emulator's
    # clock (`last_time`), so polling faster would only take CPU from the servers.
    with httpx.Client(base_url=f"http://127.0.0.1:{emulator_port}", timeout=5) as client:
        while True:
            stats = client.get("/_emulator/stats").json()
            got = wb.sends_of(stats) - before
            if got >= expected:
                return float(stats["last_time"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got} of {expected} sends arrived in {timeout:.0f} s")
            time.sleep(0.05)


def closed_run(cfg: Config, n: int, tag: str, emulator_port: int) -> tuple[wb.Load, float]:
    """Closed-loop ack run; for a real app also the end-to-end events/s (0 for bare)."""
    before = wb.sends_of(wb.emulator_stats(emulator_port))
    result = load(cfg.ports, n, tag)
    if not cfg.replies:
        return result, 0.0
    if result.non_200:
        raise RuntimeError(f"{cfg.name}: {result.non_200} POSTs were not answered 200")
    last = wait_replies(emulator_port, before, n * wb.SENDS_PER_EVENT)
    return result, n / (last - result.started)


def open_run(cfg: Config, rate: float, seconds: float, tag: str, emulator_port: int) -> wb.Load:
    """Open-loop ack latency at `rate`; waits for every reply so the next run starts idle."""
    before = wb.sends_of(wb.emulator_stats(emulator_port))
    n = max(100, int(rate * seconds))
    result = load(cfg.ports, n, tag, rate=rate)
    if cfg.replies:
        wait_replies(emulator_port, before, n * wb.SENDS_PER_EVENT)
    return result


def rounds(args: argparse.Namespace, configs: list[Config], emulator_port: int) -> None:
    """Warm-up + `args.rounds` rounds; each round runs every configuration's closed loop in a
    random order, then every open loop (at 50% of that round's maximum) in a random order."""
    rng = random.Random()
    order = configs[:]
    rng.shuffle(order)
    warm = min(args.events, args.warm_up)
    print(f"  warm-up, discarded: {warm} events per configuration, closed loop", flush=True)
    for cfg in order:
        closed_run(cfg, warm, f"w{cfg.name}", emulator_port)
    for rnd in range(1, args.rounds + 1):
        print(f"  round {rnd} (load average {load_average()})", flush=True)
        rng.shuffle(order)
        closed: dict[str, tuple[wb.Load, float]] = {}
        for cfg in order:
            closed[cfg.name] = closed_run(cfg, args.events, f"c{rnd}{cfg.name}", emulator_port)
        # Open loops: at 50% of the closed-loop ack rate (the B1 point) and, for a real app,
        # at 50% of its end-to-end rate (a load it can keep up with), in a random order.
        runs = [(cfg, "max") for cfg in configs]
        runs += [(cfg, "e2e") for cfg in configs if cfg.replies]
        rng.shuffle(runs)
        opened: dict[tuple[str, str], wb.Load] = {}
        for cfg, base in runs:
            ack, e2e = closed[cfg.name]
            rate = 0.5 * (ack.rps if base == "max" else e2e)
            tag = f"o{rnd}{base[0]}{cfg.name}"
            opened[cfg.name, base] = open_run(cfg, rate, args.open_seconds, tag, emulator_port)
        for cfg in configs:
            ack, e2e = closed[cfg.name]
            lat = opened[cfg.name, "max"]
            easy = opened.get((cfg.name, "e2e"))
            bad = ack.non_200 + lat.non_200 + (easy.non_200 if easy else 0)
            print(
                f"    {cfg.name:<12} ack {ack.rps:6,.0f}/s (closed p99 {ack.p99_ms:5.1f} ms)"
                f" | open @{lat.rps:5,.0f}/s p50 {lat.p50_ms:5.1f} p99 {lat.p99_ms:5.1f} ms"
                + (
                    f" | e2e {e2e:4,.0f} events/s | open @{easy.rps:4,.0f}/s p50 "
                    f"{easy.p50_ms:5.1f} p99 {easy.p99_ms:5.1f} ms"
                    if easy
                    else ""
                )
                + (f" | non-200: {bad}" if bad else ""),
                flush=True,
            )
            cfg.ack.append(ack)
            cfg.e2e.append(e2e)
            cfg.open.append(lat)
            if easy:
                cfg.easy.append(easy)


# ============================================================================ report


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(ratios: Sequence[float]) -> str:
    return f"{med(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def per_round(a: Config, b: Config, what: str) -> list[float]:
    """Per-round ratios a/b of ack events/s ("ack"), end-to-end events/s ("e2e") or open-loop
    p99 ("p99")."""
    if what == "ack":
        return [x.rps / y.rps for x, y in zip(a.ack, b.ack, strict=True)]
    if what == "e2e":
        return [x / y for x, y in zip(a.e2e, b.e2e, strict=True)]
    return [x.p99_ms / y.p99_ms for x, y in zip(a.open, b.open, strict=True)]


def report(configs: dict[str, Config], rounds_n: int) -> None:
    bare = configs["bare"]
    print(f"\n1. Ack and end to end (medians of {rounds_n} rounds; ratios: median of per-round")
    print("   ratios to bare Starlette 1 process, (min–max))\n")
    print(
        "| configuration | ack events/s | ack / bare | ack p50 / p99 ms, open loop at 50% "
        "of ack max | p99 / bare | end-to-end events/s | ack p50 / p99 ms at 50% of e2e |"
    )
    print("|---|---|---|---|---|---|---|")
    for cfg in configs.values():
        if cfg.name == "pg-1-nogate":
            continue  # part 3
        ack = med([x.rps for x in cfg.ack])
        rate = med([x.rps for x in cfg.open])
        p50 = med([x.p50_ms for x in cfg.open])
        p99 = med([x.p99_ms for x in cfg.open])
        e2e = f"{med(cfg.e2e):,.0f}" if cfg.replies else "—"
        easy = "—"
        if cfg.easy:
            easy = (
                f"{med([x.p50_ms for x in cfg.easy]):.1f} / "
                f"{med([x.p99_ms for x in cfg.easy]):.1f} "
                f"(at {med([x.rps for x in cfg.easy]):,.0f}/s)"
            )
        ack_r = "1.00×" if cfg is bare else spread(per_round(cfg, bare, "ack"))
        p99_r = "1.00×" if cfg is bare else spread(per_round(cfg, bare, "p99"))
        print(
            f"| {LABELS[cfg.name]} | {ack:,.0f} | {ack_r} | {p50:.1f} / {p99:.1f} "
            f"(at {rate:,.0f}/s) | {p99_r} | {e2e} | {easy} |"
        )
    print()
    for cfg in configs.values():
        if not cfg.replies or cfg.name == "pg-1-nogate":
            continue
        ratio = med(per_round(cfg, bare, "ack"))
        p99 = med([x.p99_ms for x in cfg.open])
        print(
            f"  {LABELS[cfg.name]}: ack {ratio:.2f}× bare (target ≥ {ACK_RATIO}×) "
            f"{verdict(ratio >= ACK_RATIO)}; open-loop p99 {p99:.1f} ms "
            f"(target ≤ {ACK_P99_MS:.0f} ms) {verdict(p99 <= ACK_P99_MS)}"
        )
    if "pg-2" in configs and "pg-1" in configs:
        two, one = configs["pg-2"], configs["pg-1"]
        print(
            f"  PostgreSQL 2 processes / 1 process: ack {spread(per_round(two, one, 'ack'))}, "
            f"end to end {spread(per_round(two, one, 'e2e'))} (the second process shares CPU1 "
            "with the load generator and the fake Graph API)"
        )
        if "bare-2" in configs:
            b2 = configs["bare-2"]
            print(
                f"  bare Starlette 2 processes / 1 process: "
                f"{spread(per_round(b2, bare, 'ack'))}; PostgreSQL 2 processes / bare 2 "
                f"processes: {spread(per_round(two, b2, 'ack'))}"
            )
    if "sqlite-1" in configs and "pg-1" in configs:
        pg, lite = configs["pg-1"], configs["sqlite-1"]
        print(
            f"  PostgreSQL / SQLite, 1 process: ack {spread(per_round(pg, lite, 'ack'))}, "
            f"end to end {spread(per_round(pg, lite, 'e2e'))}"
        )


def report_gate(configs: dict[str, Config]) -> None:
    if "pg-1" not in configs or "pg-1-nogate" not in configs:
        return
    gate, free = configs["pg-1"], configs["pg-1-nogate"]
    ack, e2e = per_round(gate, free, "ack"), per_round(gate, free, "e2e")
    p99 = per_round(gate, free, "p99")
    print("\n3. Per-conversation gate (advisory lock + earlier-pending check), PostgreSQL, 1 proc.")
    print("   (same rounds as 1; ratio = with the gate / without, median of per-round ratios)\n")
    print("| figure | with gate | without | ratio (min–max) | target | |")
    print("|---|---|---|---|---|---|")
    print(
        f"| ack events/s | {med([x.rps for x in gate.ack]):,.0f} | "
        f"{med([x.rps for x in free.ack]):,.0f} | {spread(ack)} | ≥ {GATE_RATIO} | "
        f"{verdict(med(ack) >= GATE_RATIO)} |"
    )
    print(
        f"| end-to-end events/s | {med(gate.e2e):,.0f} | {med(free.e2e):,.0f} | {spread(e2e)} "
        f"| ≥ {GATE_RATIO} | {verdict(med(e2e) >= GATE_RATIO)} |"
    )
    print(
        f"| ack p99 ms at 50% of ack max (lower is better) | "
        f"{med([x.p99_ms for x in gate.open]):.1f} | {med([x.p99_ms for x in free.open]):.1f} "
        f"| {spread(p99)} | — | |"
    )


LABELS = {
    "bare": "bare Starlette (HMAC + JSON)",
    "bare-2": "bare Starlette ×2",
    "sqlite-1": "SQLite, 1 process",
    "pg-1": "PostgreSQL, 1 process",
    "pg-2": "PostgreSQL, 2 processes",
    "pg-1-nogate": "PostgreSQL, 1 process, no gate",
}


# ============================================================================ machine, databases


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine(pg_url: str | None) -> str:
    import httptools
    import httpx
    import psycopg
    import sqlalchemy
    import starlette
    import uvicorn
    import uvloop

    pg = "PostgreSQL not used"
    if pg_url:
        from runtime import db

        engine = db.create_engine_for(pg_url)
        with engine.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar()
            sync = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
        engine.dispose()
        pg = f"PostgreSQL {version} (synchronous_commit={sync}), psycopg {psycopg.__version__}"
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, load average {load_average()}\n"
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {pg}, "
        f"SQLAlchemy {sqlalchemy.__version__}, uvicorn {uvicorn.__version__} "
        f"(uvloop {uvloop.__version__}, httptools {httptools.__version__}, access log off), "
        f"starlette {starlette.__version__}, httpx {httpx.__version__}; load generator: "
        f"asyncio ({wb.CONNECTIONS} connections closed loop)\n"
        + (
            "Pinning: 1-process servers on CPU0; the 2nd process of a 2-process configuration, "
            "the load generator and the fake Graph API on CPU1; PostgreSQL not pinned."
            if wb.PINNING
            else "No pinning (taskset missing or 1 CPU)."
        )
    )


@contextlib.contextmanager
def pg_schema(base_url: str, name: str, extra_options: str = "") -> Iterator[str]:
    """A throw-away PostgreSQL schema (as tests/dbkit.py's `pg_schema`), migrated, with the
    bench pages; yields a URL whose search_path points at it (plus `extra_options`, libpq
    `-c` settings for the servers' sessions); dropped afterwards."""
    from sqlalchemy import make_url

    from runtime import db

    schema = f"flowscale_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    admin = db.create_engine_for(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        options = f"-csearch_path={schema} {extra_options}".strip()
        url = make_url(db.normalize_url(base_url)).update_query_dict({"options": options})
        rendered = url.render_as_string(hide_password=False)
        prepare(rendered)
        yield rendered
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def prepare(url: str) -> None:
    """Migrate the database and register the bench's pages."""
    from runtime import db

    db.upgrade(url)
    engine = db.create_engine_for(url)
    wb.add_pages(engine)
    engine.dispose()


def outcome(url: str) -> str:
    """What the database says after the runs: events by status, outbound messages by status."""
    from runtime import db

    engine = db.create_engine_for(url)
    try:
        with engine.connect() as conn:
            events = conn.exec_driver_sql(
                "SELECT status, count(*) FROM webhook_events GROUP BY status ORDER BY status"
            ).all()
            sends = conn.exec_driver_sql(
                "SELECT status, count(*) FROM message_log WHERE direction = 'outbound' "
                "GROUP BY status ORDER BY status"
            ).all()
    finally:
        engine.dispose()
    show = lambda rows: ", ".join(f"{s} {n:,}" for s, n in rows) or "none"  # noqa: E731
    return f"events: {show(events)}; outbound messages: {show(sends)}"


# ============================================================================ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    p_serve = sub.add_parser("serve", help="(internal) run a server role")
    p_serve.add_argument("role", choices=["baseline", "emulator", "real", "real-nogate"])
    p_serve.add_argument("--port", type=int, required=True)
    p_load = sub.add_parser("load", help="(internal) the load generator")
    p_load.add_argument("--ports", required=True)
    p_load.add_argument("--n", type=int, required=True)
    p_load.add_argument("--kind", choices=["text", "echo"], default="text")
    p_load.add_argument("--tag", default="x")
    p_load.add_argument("--rate", type=float, default=0.0)
    p_load.add_argument("--connections", type=int, default=wb.CONNECTIONS)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (+1 warm-up)")
    parser.add_argument("--events", type=int, default=2000, help="events per closed-loop run")
    parser.add_argument("--open-seconds", type=float, default=3.0, help="open-loop run length")
    parser.add_argument(
        "--warm-up", type=int, default=WARM_UP_EVENTS, help="warm-up events per configuration"
    )
    parser.add_argument("--store-args", default="", help="extra arguments for runtime_store.py")
    parser.add_argument("--no-store", action="store_true", help="skip part 2 (1k vs 1M)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, short runs (~2 min)")
    parser.add_argument(
        "--configs",
        default=",".join(c for c in LABELS if c != "bare"),
        help="configurations besides the bare baseline (default: all of "
        + ", ".join(c for c in LABELS if c != "bare")
        + ")",
    )
    parser.add_argument(
        "--pg-options",
        default="",
        help="session settings for the servers' PostgreSQL connections, e.g. "
        "'-csynchronous_commit=off' (to see what durable commits cost)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("FLOW_BENCH_DATABASE_URL")
        or os.environ.get("FLOW_TEST_DATABASE_URL"),
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.role, args.port)
        return 0
    if args.command == "load":
        generate(args)
        return 0
    if args.quick:
        args.rounds, args.events, args.open_seconds, args.warm_up = 2, 500, 1.0, 100
        args.store_args = args.store_args or "--rounds 3 --ops 500"
    wanted = {c.strip() for c in args.configs.split(",") if c.strip()}
    if unknown := wanted - set(LABELS):
        parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    args.configs = wanted
    return run(args)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if wb.PINNING:
        os.sched_setaffinity(0, {1})  # this orchestrator too stays off the servers' CPU0
    print("bench/scale.py —", machine(args.pg_url), flush=True)
    if args.pg_options:
        print(f"The servers' PostgreSQL sessions run with: {args.pg_options}")
    work = Path(tempfile.mkdtemp(prefix="flowlang-scale-"))
    secrets = {
        "FLOW_APP_SECRET": wb.SECRET,
        "FLOW_VERIFY_TOKEN": "bench-verify",
        "FLOW_SECRET_KEY": wb.SECRET_KEY,
    }
    configs: dict[str, Config] = {}
    logs: dict[str, Path] = {}
    urls: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            emulator = stack.enter_context(server("emulator", 1, work / "emulator.log"))
            env = {**secrets, "FLOW_GRAPH_API_URL": f"http://127.0.0.1:{emulator}/v25.0"}

            def start(name: str, role: str, cpus: list[int], url: str | None, **extra: str) -> None:
                ports = []
                for k, cpu in enumerate(cpus):
                    log = logs[f"{name}.{k}"] = work / f"{name}.{k}.log"
                    db_env = {"FLOW_DATABASE_URL": url} if url else {}
                    ports.append(stack.enter_context(server(role, cpu, log, env | db_env | extra)))
                configs[name] = Config(name, ports, replies=role != "baseline")

            start("bare", "baseline", [0], None)
            if "bare-2" in args.configs:
                start("bare-2", "baseline", [0, 1], None)
            if "sqlite-1" in args.configs:
                urls["sqlite-1"] = f"sqlite:///{work / 'server.db'}"
                prepare(urls["sqlite-1"])
                start("sqlite-1", "real", [0], urls["sqlite-1"])
            if args.pg_url:
                for name in ("pg-1", "pg-1-nogate", "pg-2"):
                    if name in args.configs:
                        schema = pg_schema(args.pg_url, name, args.pg_options)
                        urls[name] = stack.enter_context(schema)
                if "pg-1" in args.configs:
                    start("pg-1", "real", [0], urls["pg-1"])
                if "pg-1-nogate" in args.configs:
                    start("pg-1-nogate", "real-nogate", [0], urls["pg-1-nogate"])
                if "pg-2" in args.configs:
                    rate = {"FLOW_PAGE_SEND_RATE": str(TWO_PROCESS_PAGE_RATE)}
                    start("pg-2", "real", [0, 1], urls["pg-2"], **rate)
            else:
                print("PostgreSQL: no --pg-url, FLOW_BENCH_DATABASE_URL or FLOW_TEST_DATABASE_URL;")
                print("only SQLite and the bare endpoint are measured.")
            print(
                f"\n1 + 3. Rounds: {args.events:,} new users' '{wb.TEXT}' per closed-loop run "
                f"(2 sends each), open loop {args.open_seconds:g} s at 50% of each "
                f"configuration's closed-loop rate in the same round",
                flush=True,
            )
            rounds(args, list(configs.values()), emulator)
            print(f"\n  load average after the rounds: {load_average()}")
            print("\n  Databases after the runs:")
            for name, url in urls.items():
                print(f"    {name}: {outcome(url)}")
        report(configs, args.rounds)
        report_gate(configs)
        problems = [
            f"{name}: {line[:200]}"
            for name, log in logs.items()
            for line in log.read_text(errors="replace").splitlines()
            if "WARNING" in line or "ERROR" in line or "Traceback" in line
        ]
        if problems:
            print(f"\nThe servers logged {len(problems)} warnings/errors, e.g.:")
            for line in problems[:8]:
                print("  " + line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.pg_url and not args.no_store:
        if wb.PINNING:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # as run standalone
        store(args)
    print(
        f"\nload average at the end: {load_average()}; "
        f"total time {time.monotonic() - started:.0f} s"
    )
    return 0


def store(args: argparse.Namespace) -> None:
    """Part 2: bench/runtime_store.py on PostgreSQL, 1k vs 1M conversations."""
    print(f"\n2. State store on PostgreSQL, 1k vs 1M conversations (bench/runtime_store.py; "
          f"load average {load_average()})", flush=True)  # fmt: skip
    argv = [sys.executable, str(BENCH / "runtime_store.py"), "--sizes", "1000,1000000"]
    argv += ["--backends", "postgresql", "--pg-url", args.pg_url, *args.store_args.split()]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("# ") or "query plans" in line:
            continue
        if line.startswith("    "):  # the query plans: runtime_store.py prints them in full
            continue
        print("  " + line if line else "")
    if out.returncode:
        print(f"  runtime_store.py failed: {out.stderr.strip()[-500:]}")


if __name__ == "__main__":
    raise SystemExit(main())
