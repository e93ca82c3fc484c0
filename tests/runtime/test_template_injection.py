"""Template injection, from both sides of the sandbox.

Users: whatever a person types (or taps, or has as a profile name) is data. Text that looks
like Jinja, stored with `ask … as answer` and echoed by `say "You said {{ answer }}"`, comes back
exactly as typed, never evaluated.

Authors: a `.flow` text that tries to leave the sandbox (private attributes) is refused by the
compiler (FL301/FL302); one that tries to hang or exhaust the process (huge repeats, ranges,
nested loops, recursion, padding, number growth …) fails at run time as a RuntimeFault: the
user gets the flow's error message and the next conversation runs as usual. Those run in a
child process with a memory cap, which reports its peak memory: a template that allocates a
gigabyte, or a crash, fails the test instead of the machine.

One case of each goes end to end through the server (signed webhook in, Send API out)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from engine_kit import Bot, compile_flows, texts
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from flowlang.compiler import compile_source
from runtime.events import Inbound
from runtime.templates import Renderer

ROOT = Path(__file__).resolve().parents[2]
ERROR = "Sorry, that went wrong."

ECHO = """
flow echo
  when user says "start"
  error message "ERROR"
  step ask_it
    ask "Say something" as answer
    say "You said {{ answer }}"
    say "{{ answer ~ '' }}|{% if answer %}{{ answer }}{% endif %}|{{ message.text }}"

flow tapped
  when postback "TAP"
  step show
    say "{{ message.payload }}|{{ message.text }}|{{ user.first_name }}"

flow referred
  when referral "ad"
  step show
    say "ref {{ message.ref }}"
""".replace("ERROR", ERROR)

#: What an attacker types: Jinja that would leak internals, loop forever or eat memory.
JINJA_LOOKING = [
    "{{ 7*7 }}",
    "{{7*7}}",
    "{% for x in range(10**9) %}x{% endfor %}",
    "{% for %}",
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ 'a'*10**9 }}",
    "{{ config }}{{ self }}{{ request }}",
    "{% raw %}{{ x }}{% endraw %}",
    "{# comment #}",
    "{{",
    "}}{{ answer }}{{",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ answer }}",
    "${7*7} #{7*7} <%= 7*7 %>",
]


@pytest.fixture(scope="module")
def echo_program() -> Any:
    return compile_flows(ECHO)


def _echoes(program: Any, typed: str) -> list[str]:
    bot = Bot(program)
    assert bot.says_texts("start") == ["Say something"]
    return bot.says_texts(typed)


@pytest.mark.parametrize("typed", JINJA_LOOKING)
def test_typed_jinja_comes_back_as_typed(echo_program: Any, typed: str) -> None:
    assert _echoes(echo_program, typed) == [f"You said {typed}", f"{typed}|{typed}|{typed}"]


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.text(min_size=1, max_size=200),
        st.lists(
            st.sampled_from(["{{", "}}", "{%", "%}", "{#", "#}", "7*7", "x", " ", "'", '"', "|"]),
            min_size=1,
            max_size=12,
        ).map("".join),
    )
)
def test_any_typed_text_is_data(echo_program: Any, typed: str) -> None:
    answer = typed.strip()  # answers are kept without surrounding spaces
    if not answer:
        return  # a blank message is not an answer
    assert _echoes(echo_program, typed) == [f"You said {answer}", f"{answer}|{answer}|{typed}"]


def test_payloads_titles_refs_and_profile_names_are_data(echo_program: Any) -> None:
    evil = "{{ cycler.__init__.__globals__ }}"
    bot = Bot(echo_program, profile={"first_name": "{{ 7*7 }}"})
    turn = bot.send(Inbound("postback", payload="TAP", text=evil))
    assert texts(turn) == [f"TAP|{evil}|{{{{ 7*7 }}}}"]
    assert turn.faults == []
    turn = bot.send(Inbound("referral", ref="ad"))
    assert texts(turn) == ["ref ad"]


# ----------------------------------------------------------------------------- authors

#: Author texts that reach for Python's internals: the compiler warns, the sandbox refuses.
PRIVATE = {
    "mro": "say \"{{ ''.__class__.__mro__ }}\"",
    "globals": 'say "{{ cycler.__init__.__globals__ }}"',
    "answer-class": 'say "{{ answer.__class__ }}"',
    "attr-filter": "say \"{{ ''|attr('__class__') }}\"",
    "item": "say \"{{ user['__class__'] }}\"",
    "template-context": 'say "{{ self._TemplateReference__context }}"',
    "in-a-condition": 'if answer.__class__\n  say "x"',
    "in-a-set": "set leak = answer.__init__",
}


@pytest.mark.parametrize("line", PRIVATE.values(), ids=PRIVATE.keys())
def test_private_attributes_are_flagged_by_the_compiler_and_refused_when_run(line: str) -> None:
    result = compile_source(_hostile_flow(line))
    flagged = [d for d in result.warnings if d.code in ("FL301", "FL302")]
    assert len(flagged) == 1 and "private" in flagged[0].message, result.diagnostics
    assert result.program is not None  # a warning: `flowc check --strict` makes it fail
    bot = Bot(result.program)
    turn = bot.says("go")
    assert texts(turn) == [ERROR]
    (fault,) = turn.faults
    assert "unsafe" in fault.reason
    assert bot.says_texts("hello") == ["Hi Ada!"]


#: Author texts that try to hang or exhaust the process: each must fail at run time.
HOSTILE = {
    "repeat-1e9": "say \"{{ 'a'*10**9 }}\"",
    "set-repeat-1e9": "set big = 'a' * 10**9",
    "range-1e9": 'say "{{ range(10**9)|list|length }}"',
    "loop-1e9": 'say "{% for i in range(10**9) %}x{% endfor %}"',
    "nested-loops": 'say "{% for i in range(99999) %}{% for j in range(99999) %}'
    '{% endfor %}{% endfor %}"',
    "nested-filtered-loops": 'say "{% for i in range(99999) %}{% for j in range(99999) if false %}'
    '{% endfor %}{% endfor %}"',
    "loop-of-sums": 'say "{% for i in range(99999) %}{{ range(99999)|sum }}{% endfor %}"',
    "recursive-macro": 'say "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"',
    "exponential-macro": 'say "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}'
    '{% endmacro %}{{ f(60) }}"',
    "recursive-loop": 'say "{% for x in [1, 2] recursive %}{{ loop([1, 2]) }}{% endfor %}"',
    "dynamic-private": "say \"{{ ''|attr('_' ~ '_class__') }}\"",
    "center": "say \"{{ 'a'|center(10**9) }}\"",
    "indent-lines": "say \"{{ ('a\\n' * 5000)|indent(10000)|length }}\"",
    "printf-width": "say \"{{ '%1000000000d' % 1 }}\"",
    "printf-star": "say \"{{ '%*d' % (10**9, 1) }}\"",
    "format-width": "say \"{{ '{:1000000000}'.format(1) }}\"",
    "format-nested-width": "say \"{{ '{0:{1}}'.format('a', 10**9) }}\"",
    "format-filter": "say \"{{ '%1000000000s'|format('a') }}\"",
    "lipsum": 'say "{{ lipsum(10**6)|length }}"',
    "power-tower": 'say "{{ ((10**100)**100)**100 }}"',
    "squaring-loop": 'say "{% set ns = namespace(v=10**100) %}{% for i in range(40) %}'
    '{% set ns.v = ns.v * ns.v %}{% endfor %}{{ ns.v|string|length }}"',
    "doubling-loop": "say \"{% set ns = namespace(s='ab') %}{% for i in range(60) %}"
    '{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"',
    "list-doubling-loop": 'say "{% set ns = namespace(s=[1]) %}{% for i in range(60) %}'
    '{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}"',
    "aliased-lists": "say \"{% set a = ['x' * 10000] %}{% set b = [a, a, a, a, a, a, a, a] %}"
    '{% set c = [b, b, b, b, b, b, b, b] %}{{ c }}"',
    "aliased-json": "say \"{% set a = ['x' * 10000] %}{% set b = [a, a, a, a, a, a, a, a] %}"
    '{{ b|tojson|length }}"',
    "round-negative": 'say "{{ 123|round(-1000000000) }}"',
    "to-bytes": "say \"{{ (5).to_bytes(10**9, 'big')|length }}\"",
    "replace-blowup": "say \"{{ ('x' * 10000)|replace('x', 'x' * 10000)|length }}\"",
    "join-blowup": "say \"{{ ('a' * 10000)|list|join('b' * 10000)|length }}\"",
    "expandtabs": "say \"{{ ('\\t' * 10000).expandtabs(10000)|length }}\"",
    "sum-of-texts": "say \"{{ ['x' * 10000, 'y' * 10000, 'z']|sum(start='') }}\"",
    "mutate-profile": "say \"{% set u = user %}{{ u.update(first_name='pwned') }}\"",
    "mutate-list": 'say "{% set l = [] %}{{ l.append(1) }}"',
    "big-list-kept": "set big = range(99999)|list",
}


def _hostile_flow(line: str) -> str:
    """A flow that runs `line` (its own lines indented relative to the first)."""
    return (
        f'flow hostile\n  when user says "go"\n  error message "{ERROR}"\n  step s\n'
        f'    set answer = "x"\n    {line.replace(chr(10), chr(10) + "    ")}\n'
        '    say "not reached"\n\n'
        'flow normal\n  when user says "hello"\n  step s\n    say "Hi {{ user.first_name }}!"\n'
    )


#: Runs in a child process: compiles and runs every hostile flow, prints what happened.
WORKER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a cap, far above what is expected
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from engine_kit import Bot, texts
from flowlang.compiler import compile_source
from flowlang.render import render

results = {}
for name, source in json.loads(sys.stdin.read()).items():
    result = compile_source(source)
    if result.program is None:
        results[name] = {"compile": render(result.diagnostics, result.sources, "short")}
        continue
    bot = Bot(result.program)
    turn = bot.says("go")
    after = bot.says_texts("hello")  # the same process, the same renderer: still fine
    results[name] = {
        "texts": texts(turn),
        "faults": [fault.reason for fault in turn.faults],
        "after": after,
    }
# This process's own peak (VmHWM: ru_maxrss would include the parent's, kept across exec).
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"results": results, "peak_mb": peak_kb // 1024}))
"""


@pytest.fixture(scope="module")
def hostile_runs() -> dict[str, Any]:
    """Every HOSTILE flow run once in a child process (a hang fails after 5 minutes, not
    never; the child's own work takes seconds)."""
    cases = {name: _hostile_flow(line) for name, line in HOSTILE.items()}
    child = subprocess.run(
        [sys.executable, "-c", WORKER, str(ROOT), str(Path(__file__).parent)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout)


def test_hostile_templates_stay_within_memory(hostile_runs: dict[str, Any]) -> None:
    # The interpreter, Jinja and the compiler take well under 200 MB; one 1e9 text takes 1 GB.
    assert hostile_runs["peak_mb"] < 400, hostile_runs["peak_mb"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_templates_fail_safely_at_run_time(hostile_runs: dict[str, Any], name: str) -> None:
    outcome = hostile_runs["results"][name]
    assert "compile" not in outcome, outcome  # valid Jinja: the compiler lets it through
    assert outcome["texts"] == [ERROR], outcome  # the flow's error message, nothing else
    (reason,) = outcome["faults"]
    assert "MemoryError" not in reason, reason  # refused before allocating, not after
    assert outcome["after"] == ["Hi Ada!"]


#: Texts an author does write: the limits must leave them exactly as Jinja renders them.
ORDINARY = [
    "{% for x in items %}{{ loop.index }}/{{ loop.length }}{% if loop.last %}!{% endif %}"
    "{% endfor %}",
    "{% for x in empty %}{{ x }}{% else %}none{% endfor %}",
    "{% for k, v in d|dictsort %}{{ k }}={{ v }};{% endfor %}",
    "{% for x in items if x != 'b' %}{{ x }}{{ loop.revindex }}{% endfor %}",
    "{% for x in items %}{{ loop.cycle('o', 'e') }}{{ loop.previtem|default('-') }}{% endfor %}",
    "{% macro m(a) %}<{{ a }}>{% endmacro %}{{ m(1) }}"
    "{% macro c() %}[{{ caller() }}]{% endmacro %}{% call c() %}in{% endcall %}",
    "{% for x in [[1, 2], [3]] recursive %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}"
    "{% endif %}{% endfor %}",
    "{{ name ~ '!' ~ n ~ price }} {{ 'x' * 3 }} {{ n ** 2 }} {{ n + 1 }} {{ '%s-%d' % (name, n) }}"
    " {{ '{}:{:>5}'.format(name, n) }}",
    "{{ items|join(', ') }} {{ items|map('upper')|join }} {{ name|center(9) }}|"
    "{{ 'a\nb'|indent(2) }} {{ price|round(1) }} {{ range(5)|sum }} {{ [1, 2] + [3] }}",
    "{{ name|replace('A', 'a') }} {{ 'x y z'|wordwrap(3) }} {{ users|join(', ', attribute='n') }}",
    "{% set ns = namespace(t=0) %}{% for i in range(10) %}{% set ns.t = ns.t + i %}{% endfor %}"
    "{{ ns.t }} {{ price|default(25000) }} {{ 'abc'.upper() }} {{ ' x '.strip() }}",
    "{{ d }} {{ items }} {{ (1, 2) }} {{ none }} {{ true }} {{ items|first }}{{ items|last }}",
    "{% filter upper %}shout {{ name }}{% endfilter %}{% set b %}block {{ n }}{% endset %}{{ b }}",
]
ORDINARY_CONTEXT = {
    "items": ["a", "b", "c"],
    "empty": [],
    "d": {"x": 1, "y": 2},
    "name": "Ada",
    "n": 3,
    "price": 9.5,
    "users": [{"n": "a"}, {"n": "b"}],
}


@pytest.mark.parametrize("source", ORDINARY)
def test_the_limits_leave_ordinary_texts_alone(source: str) -> None:
    reference = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    expected = reference.from_string(source).render(ORDINARY_CONTEXT)
    assert Renderer().render(source, ORDINARY_CONTEXT) == expected


def test_a_shared_profile_cannot_be_changed_by_a_template() -> None:
    program = compile_source(_hostile_flow(HOSTILE["mutate-profile"]))
    assert program.program is not None
    profile = {"first_name": "Ada"}
    bot = Bot(program.program, profile=profile)
    assert bot.says_texts("go") == [ERROR]
    assert profile == {"first_name": "Ada"}
    assert bot.says_texts("hello") == ["Hi Ada!"]


# ----------------------------------------------------------------------------- the server


def _server_kit() -> ModuleType:
    """tests/server/server_kit.py (its folder is on sys.path only when its tests run)."""
    if "server_kit" in sys.modules:
        return sys.modules["server_kit"]
    spec = importlib.util.spec_from_file_location(
        "server_kit", Path(__file__).parents[1] / "server" / "server_kit.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["server_kit"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    kit = _server_kit()
    from runtime import db
    from server.app import create_app

    url = f"sqlite:///{tmp_path / 'server.db'}"
    db.upgrade(url)
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "echo.flow").write_text(ECHO, encoding="utf-8")
    (flows / "hostile.flow").write_text(
        _hostile_flow(HOSTILE["nested-loops"]).replace('"hello"', '"hi there"'),
        encoding="utf-8",
    )
    graph = kit.FakeGraph(profiles={"u1": {"first_name": "Ada"}})
    app = create_app(
        kit.make_settings(url), flows=[flows], transport=graph.transport(), freeze_gc=False
    )
    bot = kit.Bot(kit.RunningApp(app), url, graph)
    yield bot
    bot.stop()


def test_end_to_end_typed_jinja_is_echoed_and_a_hostile_text_faults(server: Any) -> None:
    server.say("u1", "start")
    server.drain()
    server.say("u1", "{{ 7*7 }}")
    server.drain()
    assert server.graph.texts("u1") == [
        "Say something",
        "You said {{ 7*7 }}",
        "{{ 7*7 }}|{{ 7*7 }}|{{ 7*7 }}",
    ]
    server.say("u1", "go")  # the author's nested loops: refused, not hung
    server.drain()
    assert server.graph.texts("u1")[-1] == ERROR
    server.say("u1", "hi there")  # the server carries on
    server.drain()
    assert server.graph.texts("u1")[-1] == "Hi Ada!"
    assert "flow_runtime_faults_total 1.0" in server.server.metrics.render().decode()
