"""Benchmark B9: the outbox sender against the bare HTTP client, same concurrency, same server.

Run with `.venv/bin/python bench/sender.py` (options: `--requests`, `--concurrency`, `--rounds`,
`--latency-ms 0,20`, `--no-limited`). A fake Graph API, a raw-ASGI app answering like the Send
API (`{"recipient_id", "message_id"}`), runs under uvicorn (uvloop + httptools) on 127.0.0.1 in
its own process, pinned to CPU 1 (the benchmark runs on CPU 0) when there are two CPUs. Its
latency comes from the URL (`/lat20/v25.0/me/messages` answers after 20 ms), so one server
serves every variant. In each round, in random order, for each latency:

    bare     the project's Graph client (`server.graph.GraphClient.send` on the pooled
             client of `create_http_client`: httpx types on the aiohttp transport) called
             directly by `concurrency` workers: the Send API body, appsecret_proof and Bearer
             token, the exact call the sender makes
    sender   `server.sender.Sender` on a SQLite file holding `requests` pending outbound rows
             of 4 × `concurrency` users (a backlog, e.g. after a restart), at most
             `concurrency` calls in flight: time from `start()` to every row recorded "sent"
             (reading the rows, the Graph client, ordering, rate limiter, batched status
             writes). Its rate limit is set out of the way here; see "limited" below
    post     the same calls through `httpx.AsyncClient.post` on that client: the cost of
             the client layer (cookies, auth, redirects) that GraphClient skips
    stock    the same calls through stock httpx (its own transport: httpcore's pool), the
             client the performance reference §6 measured at 190–900 calls/s
    aiohttp  the same calls through aiohttp alone: the cost of httpx on top of its transport
    floor    a minimal keep-alive HTTP/1.1 client on asyncio streams (no pool, no parsing
             beyond Content-Length), `concurrency` connections: what the server can take,
             which tells whether the client is the bottleneck

Each round runs every latency in random order; within one, bare and sender run back to back (in
random order), then the others. The first round is a warm-up and is discarded. Figures are
medians over rounds; ratios are medians of per-round ratios (with min and max). Target (§8.2
B9): sender/bare ≥ 0.9×. Besides req/s, each variant reports the process CPU time per call
(all threads): on a machine shared with other work, wall-clock rates swing by several times
between runs, while CPU per call stays within a few percent, so "bare / sender CPU per call"
is the steadier measure of what the sender adds.
Finally, unless `--no-limited`, the sender runs once with its default per-page limit (250/s) to
show it sustains that rate. Exit status is 0 either way: it is a measurement."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpcore
import httpx
import uvicorn
import uvloop
from sqlalchemy import func

from runtime import db, tables
from server import gctune
from server.crypto import TokenCipher
from server.graph import GraphClient, create_http_client, message_body
from server.pages import PageRegistry
from server.ratelimit import PageRateLimiter
from server.sender import Sender, SendResult

TARGET_RATIO = 0.9
APP_SECRET = "bench-app-secret"
PAGE_ID = "104729531843312"
TOKEN = "EAAB" + "x" * 180  # page tokens are ~200 characters
PROOF = hmac.new(APP_SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
MESSAGE = {"text": "Perfect! Our sales team will contact you at ada@example.com within 24 hours."}


# ----------------------------------------------------------------------------- fake Graph API


def graph_app() -> Callable[..., Awaitable[None]]:
    """The raw-ASGI fake Send API: reads the body, waits the latency named in the path."""
    counter = iter(range(1, 1 << 62))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        head = scope["path"].split("/", 2)[1]
        if head.startswith("lat") and head != "lat0":
            await asyncio.sleep(int(head[3:]) / 1000)
        body = b'{"recipient_id":"2447865768624871","message_id":"m_%d"}' % next(counter)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def serve(port: int) -> None:
    """Run the fake Graph API (in the child process)."""
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    uvicorn.run(
        graph_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
        # Longer than any pause between variants: a connection the server closes while the
        # client pool still holds it turns into a write/read error at the next use.
        timeout_keep_alive=600,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the fake Graph API did not start")


# ----------------------------------------------------------------------------- variants


def figures_of(
    requests: int, elapsed: float, cpu: float, latencies: list[float]
) -> dict[str, float]:
    """req/s, CPU time per call (robust against other load on the machine), call latency."""
    return {
        "rps": requests / elapsed,
        "cpu_us": cpu / requests * 1e6,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def stock_httpx() -> httpx.AsyncClient:
    """httpx with its own transport (httpcore's pool), limits as in create_http_client."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return create_http_client(httpx.AsyncHTTPTransport(limits=limits))


async def drive(
    call: Callable[[dict[str, Any]], Awaitable[object]], requests: int, concurrency: int
) -> dict[str, Any]:
    """`requests` Send API bodies (for 4 × `concurrency` users) through `call`, by
    `concurrency` workers; req/s, CPU per call and call latencies."""
    users = 4 * concurrency
    bodies = iter([message_body(str(i % users), MESSAGE) for i in range(requests)])
    latencies: list[float] = []

    async def worker() -> None:
        for body in bodies:
            started = time.perf_counter()
            await call(body)
            latencies.append(time.perf_counter() - started)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert len(latencies) == requests
    return figures_of(requests, elapsed, cpu, latencies)


async def run_bare(
    base: str,
    requests: int,
    concurrency: int,
    factory: Callable[[], httpx.AsyncClient] = create_http_client,
) -> dict[str, Any]:
    """The project's Graph client (`GraphClient.send`, on an httpx client made by `factory`),
    called directly by `concurrency` workers: the same call the sender makes, without it."""
    http = factory()
    graph = GraphClient(http, base_url=base, app_secret=APP_SECRET)
    figures = await drive(lambda body: graph.send(TOKEN, body), requests, concurrency)
    await http.aclose()
    return figures


async def run_post(base: str, requests: int, concurrency: int) -> dict[str, Any]:
    """The same calls through `httpx.AsyncClient.post` on the project's client: what the
    Graph client saves by calling the client's transport directly."""
    http = create_http_client()
    url = httpx.URL(base + "/me/messages", params={"appsecret_proof": PROOF})
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def post(body: dict[str, Any]) -> None:
        response = await http.post(url, json=body, headers=headers)
        response.raise_for_status()
        json.loads(response.content)

    figures = await drive(post, requests, concurrency)
    await http.aclose()
    return figures


async def run_aiohttp(base: str, requests: int, concurrency: int) -> dict[str, Any]:
    """aiohttp's own client, without httpx on top: what the transport can do."""
    import aiohttp

    url = base + "/me/messages"
    params = {"appsecret_proof": PROOF}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(body: dict[str, Any]) -> None:
            async with session.post(url, params=params, json=body, headers=headers) as r:
                r.raise_for_status()
                json.loads(await r.read())

        return await drive(post, requests, concurrency)


def prepare_outbox(path: Path, requests: int, concurrency: int) -> str:
    """A migrated SQLite file with `requests` pending rows for 4 × concurrency users."""
    url = f"sqlite:///{path}"
    db.upgrade(url)
    engine = db.create_engine_for(url)
    try:
        PageRegistry(engine, TokenCipher(APP_SECRET)).add(PAGE_ID, TOKEN, name="bench")
        users = 4 * concurrency
        now = datetime.now(UTC)
        rows = [
            {
                "page_id": PAGE_ID,
                "psid": str(2447865768624871 + i % users),
                "direction": "outbound",
                "mid": None,
                "kind": "message",
                "body": {"payload": MESSAGE, "tag": None, "seconds": 0.0, "source": "b.flow:1"},
                "status": "pending",
                "created_at": now,
            }
            for i in range(requests)
        ]
        with engine.begin() as conn:
            conn.execute(tables.message_log.insert(), rows)
    finally:
        engine.dispose()
    return url


async def run_sender(
    base: str, url: str, requests: int, concurrency: int, *, limited: bool = False
) -> dict[str, Any]:
    """The project's sender draining a backlog of `requests` rows."""
    engine = db.create_engine_for(url)
    http = create_http_client()
    graph = GraphClient(http, base_url=base, app_secret=APP_SECRET)
    results: list[SendResult] = []
    limiter = PageRateLimiter() if limited else PageRateLimiter(rate=1e9, burst=1e9)
    sender = Sender(
        engine,
        graph,
        PageRegistry(engine, TokenCipher(APP_SECRET)),
        limiter=limiter,
        on_result=results.append,
        max_in_flight=concurrency,
        max_in_flight_per_page=concurrency,
    )
    started, cpu = time.perf_counter(), time.process_time()
    await sender.start()
    await sender.wait_idle(timeout=600)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await sender.stop()
    await http.aclose()
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                tables.message_log.select()
                .with_only_columns(tables.message_log.c.status, func.count())
                .group_by(tables.message_log.c.status)
            ).all()
        )
    engine.dispose()
    assert statuses == {"sent": requests}, statuses
    return figures_of(requests, elapsed, cpu, [r.seconds for r in results])


async def run_floor(port: int, prefix: str, requests: int, concurrency: int) -> dict[str, Any]:
    """A minimal keep-alive HTTP/1.1 client: the most this server can answer here."""
    remaining = [requests]
    body = json.dumps(message_body("2447865768624871", MESSAGE)).encode()
    request = (
        f"POST {prefix}/me/messages?appsecret_proof=x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while remaining[0] > 0:
            remaining[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()
        await writer.wait_closed()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return figures_of(requests, elapsed, cpu, [])


# ----------------------------------------------------------------------------- main


VARIANTS = ("bare", "sender", "post", "stock", "aiohttp", "floor")


def run_variant(
    variant: str, lat: int, port: int, tmp: Path, tag: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One run of one variant; returns req/s and call latency percentiles."""
    base = f"http://127.0.0.1:{port}/lat{lat}/v25.0"
    requests, concurrency = args.requests, args.concurrency
    if variant == "bare":
        return uvloop.run(run_bare(base, requests, concurrency))
    if variant == "sender":
        url = prepare_outbox(tmp / f"{tag}-l{lat}.db", requests, concurrency)
        return uvloop.run(run_sender(base, url, requests, concurrency))
    if variant == "stock":
        # Stock httpx is several times slower: fewer calls keep the run short.
        return uvloop.run(run_bare(base, max(200, requests // 5), concurrency, stock_httpx))
    if variant == "aiohttp":
        return uvloop.run(run_aiohttp(base, requests, concurrency))
    if variant == "post":
        return uvloop.run(run_post(base, requests, concurrency))
    return uvloop.run(run_floor(port, f"/lat{lat}/v25.0", requests, concurrency))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (plus a warm-up)")
    parser.add_argument("--latency-ms", default="0,20", help="fake Graph API latencies")
    parser.add_argument("--no-limited", action="store_true", help="skip the 250/s run")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    latencies = [int(x) for x in args.latency_ms.split(",")]
    rng = random.Random(args.seed)
    pinned = (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {0})
    gctune.tune()  # as the server does once started; for every variant
    transport = type(create_http_client()._transport).__name__

    print(
        f"B9 sender vs bare client: Python {platform.python_version()}, httpx {httpx.__version__} "
        f"(transport {transport}), httpcore {httpcore.__version__}, aiohttp "
        f"{_version('aiohttp')}, sniffio {_version('sniffio')}, uvicorn {uvicorn.__version__} "
        f"(uvloop {uvloop.__version__}, httptools), {os.cpu_count()} CPUs "
        f"({'server on CPU 1, client on CPU 0' if pinned else 'unpinned'}), load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"{args.requests} Send API calls per run (stock httpx: {max(200, args.requests // 5)}), "
        f"concurrency {args.concurrency}, {args.rounds} rounds + warm-up, latencies {latencies} ms"
    )
    process, port = start_server()
    figures: dict[tuple[int, str], list[dict[str, Any]]] = {}
    ratios: dict[tuple[int, str], list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(args.rounds + 1):
                plan = []
                for lat in rng.sample(latencies, len(latencies)):
                    # The compared pair runs back to back (in random order): the load of a
                    # shared machine drifts over seconds, and both runs should see the same.
                    pair, others = ["bare", "sender"], ["post", "stock", "aiohttp", "floor"]
                    rng.shuffle(pair)
                    rng.shuffle(others)
                    plan += [(lat, v) for v in pair + others]
                got = {
                    (lat, v): run_variant(v, lat, port, Path(tmp), f"r{round_}", args)
                    for lat, v in plan
                }
                label = "warm-up" if round_ == 0 else f"round {round_}"
                print(
                    f"  {label}: "
                    + "; ".join(
                        f"{lat} ms " + " ".join(f"{v} {got[lat, v]['rps']:.0f}/s" for v in VARIANTS)
                        for lat in latencies
                    ),
                    flush=True,
                )
                if round_ == 0:
                    continue
                for key, value in got.items():
                    figures.setdefault(key, []).append(value)
                for lat in latencies:
                    rps = {v: got[lat, v]["rps"] for v in VARIANTS}
                    for name, (a, b) in RATIOS.items():
                        ratios.setdefault((lat, name), []).append(rps[a] / rps[b])
                    cpu = got[lat, "bare"]["cpu_us"] / got[lat, "sender"]["cpu_us"]
                    ratios.setdefault((lat, CPU_RATIO), []).append(cpu)

            print()
            print(
                f"{'latency':>9} {'variant':<8} {'req/s':>7} {'CPU µs/call':>12} "
                f"{'call p50 ms':>12} {'call p99 ms':>12}"
            )
            for lat in latencies:
                for v in VARIANTS:
                    runs = figures[lat, v]

                    def med(name: str, runs: list[dict[str, Any]] = runs) -> float:
                        return statistics.median(f[name] for f in runs)

                    latency = (
                        f"{med('p50') * 1000:>12.1f} {med('p99') * 1000:>12.1f}"
                        if v != "floor"
                        else f"{'-':>12} {'-':>12}"
                    )
                    print(f"{lat:>6} ms {v:<8} {med('rps'):>7.0f} {med('cpu_us'):>12.0f} {latency}")
            print("ratios (median of per-round ratios, min–max):")
            for lat in latencies:
                for name in (*RATIOS, CPU_RATIO):
                    values = ratios[lat, name]
                    line = (
                        f"  {lat:>3} ms {name:<36} {statistics.median(values):6.2f}× "
                        f"({min(values):.2f}–{max(values):.2f})"
                    )
                    if name == TARGET_NAME:
                        ok = statistics.median(values) >= TARGET_RATIO
                        line += f"  target ≥ {TARGET_RATIO}×: {'PASS' if ok else 'FAIL'}"
                    print(line)

            if not args.no_limited:
                requests = 1000
                url = prepare_outbox(Path(tmp) / "limited.db", requests, args.concurrency)
                base = f"http://127.0.0.1:{port}/lat{latencies[0]}/v25.0"
                limited = uvloop.run(
                    run_sender(base, url, requests, args.concurrency, limited=True)
                )
                print(
                    f"sender with its default per-page limit (250/s, burst 25): "
                    f"{limited['rps']:.0f} sends/s over {requests} rows "
                    f"({limited['rps'] / 250:.2f}× the limit)"
                )
    finally:
        process.terminate()
        process.wait(10)


TARGET_NAME = "sender / bare (B9)"
CPU_RATIO = "bare / sender CPU per call"
RATIOS = {
    TARGET_NAME: ("sender", "bare"),
    "bare / httpx client.post (direct call gain)": ("bare", "post"),
    "bare / stock httpx (transport gain)": ("bare", "stock"),
    "bare / raw aiohttp (httpx on top)": ("bare", "aiohttp"),
    "bare / floor (client vs server)": ("bare", "floor"),
}


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "missing"


if __name__ == "__main__":
    main()
