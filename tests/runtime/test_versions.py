"""Versioned deploys: a conversation finishes on the flow version it started on."""

from __future__ import annotations

from engine_kit import Bot, compile_flows, texts

from runtime.program import FlowCatalogue, ProgramView

V1 = """
flow order
  when user says "order"
  step ask_size
    ask "What size? (v1)" as size
  step confirm
    say "v1 confirms {{ size }}"
"""

V2_RENAMED = """
flow order
  when user says "order"
  step choose_size
    ask "Which size? (v2)" as size
  step confirm
    say "v2 confirms {{ size }}"
"""

V2_REMOVED = """
flow order
  when user says "order"
  step only
    say "v2 has no question"
"""

MAIN_V1 = """
flow main
  when user says "main"
  step s
    call helper
    say "main v1 after the call: {{ answer }}"

flow helper
  step s
    ask "Helper?" as answer
"""

MAIN_V2 = """
flow main
  when user says "main"
  step s
    say "main v2 starts differently"
    call helper
    say "main v2 after the call"

flow helper
  step s
    ask "Helper?" as answer
"""


def _deploy(bot: Bot, *programs: object) -> None:
    """Swap the bot's program for the last one, remembering every version."""
    catalogue = FlowCatalogue(programs)  # type: ignore[arg-type]
    bot.view = ProgramView(programs[-1], versions=catalogue)  # type: ignore[arg-type]


def test_waiting_conversation_finishes_on_v1_after_the_step_is_renamed() -> None:
    v1, v2 = compile_flows(V1), compile_flows(V2_RENAMED)
    old = Bot(v1)
    assert old.says_texts("order") == ["What size? (v1)"]
    version_1 = old.state.flow_version
    _deploy(old, v1, v2)
    assert old.says_texts("M") == ["v1 confirms M"]
    assert old.last is not None and old.last.faults == []
    new = Bot(old.view)
    assert new.says_texts("order") == ["Which size? (v2)"]
    assert new.state.flow_version == v2.flows["order"].content_hash != version_1


def test_waiting_conversation_finishes_on_v1_after_the_step_is_removed() -> None:
    v1, v2 = compile_flows(V1), compile_flows(V2_REMOVED)
    bot = Bot(v1)
    bot.says("order")
    _deploy(bot, v1, v2)
    assert bot.says_texts("L") == ["v1 confirms L"]
    assert bot.says_texts("order") == ["v2 has no question"]


def test_a_caller_returns_on_its_own_version() -> None:
    v1, v2 = compile_flows(MAIN_V1), compile_flows(MAIN_V2)
    bot = Bot(v1)
    assert bot.says_texts("main") == ["Helper?"]
    _deploy(bot, v1, v2)
    # helper did not change (same content hash); main did: main continues on v1.
    assert v1.flows["helper"].content_hash == v2.flows["helper"].content_hash
    assert bot.says_texts("42") == ["main v1 after the call: 42"]


def test_an_unknown_old_version_is_logged_and_the_message_handled_as_new() -> None:
    v1, v2 = compile_flows(V1), compile_flows(V2_REMOVED)
    bot = Bot(v1)
    bot.says("order")
    bot.view = ProgramView(v2)  # no catalogue: v1 is gone
    turn = bot.says("order")
    assert texts(turn) == ["v2 has no question"]
    assert len(turn.faults) == 1 and "not available" in turn.faults[0].reason
    assert turn.trace[0].kind == "lost"


def test_the_store_catalogue_serves_old_versions() -> None:
    from runtime.store import InMemoryStore

    v1, v2 = compile_flows(V1), compile_flows(V2_RENAMED)
    store = InMemoryStore()
    store.deploy(v1)
    bot = Bot(ProgramView(v1, versions=store.flow_version))
    bot.says("order")
    store.deploy(v2)
    bot.view = ProgramView(v2, versions=store.flow_version)
    assert bot.says_texts("S") == ["v1 confirms S"]
