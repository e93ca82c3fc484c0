"""Benchmark the conversation engine against a hand-written floor (issue 3, B4).

Runs the lead-generation conversation ("I am interested in pricing" → "Ada" →
"ada@example.com") through `runtime.engine.advance` with in-memory state, and through a
hand-written Python function doing the same conversation with plain dicts (keyword match,
templated texts, e-mail check, Send API bodies). Both run interleaved in randomised rounds in
this one process; the figure that matters is the median of per-round ratios (see
../shared/reference/performance-anchors.md §8.1). Target: engine ≤ 3× the floor.

The state store's load+save latencies are measured by bench/runtime_store.py; pass --store to
run it after this one with its default sizes.

    .venv/bin/python bench/runtime.py [--rounds 15] [--store]
"""

from __future__ import annotations

import argparse
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowlang.load import compile_paths  # noqa: E402
from runtime.engine import advance  # noqa: E402
from runtime.events import Inbound  # noqa: E402
from runtime.program import ProgramView  # noqa: E402
from runtime.state import ConversationState  # noqa: E402
from runtime.templates import Renderer  # noqa: E402

INPUTS = ("I am interested in pricing", "Ada", "ada@example.com")
EXPECTED = [
    "Great! I'd love to learn more about your needs.",
    "What's your name?",
    "Nice to meet you, Ada!",
    "What's your email address?",
    "Perfect! Our sales team will contact you at ada@example.com within 24 hours.",
    "Thank you for your interest! 🚀",
]
CONVERSATIONS = 300  # per round and variant


def engine_conversation(view: ProgramView, renderer: Renderer, n: int) -> list[str]:
    """Run the conversation `n` times through the real engine; return the last texts."""
    texts: list[str] = []
    for i in range(n):
        state = ConversationState("page", f"user{i}")
        texts = []
        for line in INPUTS:
            turn = advance(view, state, Inbound("text", text=line), renderer=renderer)
            state = turn.state
            texts += [o.body["text"] for o in turn.outbox if o.kind == "message"]
    return texts


# ---------------------------------------------------------------- the floor, by hand

_PUNCT = re.compile(r"[^\w\s]")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_KEYWORDS = {"interested", "demo", "pricing"}


def _words(text: str) -> set[str]:
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return set(_PUNCT.sub(" ", folded).split())


def floor_turn(state: dict, text: str) -> list[dict]:
    """The same conversation as plain Python: what a developer would write by hand."""
    out: list[dict] = []
    step = state.get("step")
    if step is None:
        if _words(text) & _KEYWORDS:
            out.append({"text": "Great! I'd love to learn more about your needs."})
            out.append({"text": "What's your name?"})
            state["step"] = "name"
    elif step == "name":
        state["vars"]["lead_name"] = text
        out.append({"text": "Nice to meet you, " + text + "!"})
        out.append(
            {
                "text": "What's your email address?",
                "quick_replies": [{"content_type": "user_email"}],
            }
        )
        state["step"] = "email"
        state["tries"] = 0
    elif step == "email":
        if _EMAIL.match(text.strip()):
            state["vars"]["lead_email"] = text.strip()
            out.append(
                {
                    "text": "Perfect! Our sales team will contact you at "
                    + text.strip()
                    + " within 24 hours."
                }
            )
            out.append({"text": "Thank you for your interest! 🚀"})
            state["step"] = None
        else:
            state["tries"] += 1
            out.append({"text": "That doesn't look like an email address."})
    return out


def floor_conversation(n: int) -> list[str]:
    texts: list[str] = []
    for _ in range(n):
        state: dict = {"step": None, "vars": {}, "tries": 0}
        texts = []
        for line in INPUTS:
            texts += [m["text"] for m in floor_turn(state, line)]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--store", action="store_true", help="also run bench/runtime_store.py")
    args = parser.parse_args()

    result = compile_paths([ROOT / "flows"])
    assert result.program is not None, result.diagnostics
    view = ProgramView(result.program)
    renderer = Renderer()
    got = engine_conversation(view, renderer, 1)
    assert got == EXPECTED, got
    assert floor_conversation(1) == EXPECTED[:4] + EXPECTED[4:]

    variants = {
        "engine": lambda: engine_conversation(view, renderer, CONVERSATIONS),
        "floor": lambda: floor_conversation(CONVERSATIONS),
    }
    for run in variants.values():  # warm-up, discarded
        run()
    timings: dict[str, list[float]] = {name: [] for name in variants}
    ratios: list[float] = []
    rng = random.Random(7)
    for _ in range(args.rounds):
        order = list(variants)
        rng.shuffle(order)
        this_round = {}
        for name in order:
            start = time.perf_counter()
            variants[name]()
            this_round[name] = time.perf_counter() - start
            timings[name].append(this_round[name])
        ratios.append(this_round["engine"] / this_round["floor"])

    turns = CONVERSATIONS * len(INPUTS)
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {args.rounds} rounds, "
        f"{turns} turns per round and variant"
    )
    for name, values in timings.items():
        med = statistics.median(values)
        print(f"  {name:7s} {med / turns * 1e6:8.2f} µs/turn  {turns / med:10,.0f} turns/s")
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio <= 3.0 else "MISS"
    print(
        f"  engine / floor: median {ratio:.2f}× (min {min(ratios):.2f}, max {max(ratios):.2f}); "
        f"target ≤ 3× → {verdict}"
    )
    if args.store:
        subprocess.run([sys.executable, str(ROOT / "bench" / "runtime_store.py")], check=True)


if __name__ == "__main__":
    main()
