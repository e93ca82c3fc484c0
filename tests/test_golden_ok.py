"""Golden valid programs: each compiles with no diagnostics at all, and its IR matches a
syrupy JSON snapshot. The example flows in flows/ compile together as one program. The
examples in docs/ are held to the same standard, so the documentation cannot drift."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from flowlang import codes, ir
from flowlang.compiler import CompileResult, compile_source
from flowlang.load import compile_paths

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_OK = ROOT / "tests" / "golden" / "ok"
DOCS = ROOT / "docs"

# Each case is compiled as one program. Paths are relative to the repository root so the
# SourceRefs in the snapshots do not depend on where the checkout lives.
CASES: dict[str, list[str]] = {
    **{f"ok-{p.stem}": [str(p.relative_to(ROOT))] for p in sorted(GOLDEN_OK.glob("*.flow"))},
    "flows": ["flows"],
}

# The words an action's source line must start with, by IR action kind.
FIRST_WORDS: dict[str, tuple[str, ...]] = {
    "say": ("say ",),
    "media": ("send image ", "send video ", "send audio ", "send file "),
    "carousel": ("carousel",),
    "typing": ("typing",),
    "pause": ("pause ",),
    "set": ("set ",),
    "ask": ("ask ",),
    "if": ("if ",),
    "goto": ("goto ", "go to "),
    "end": ("end",),
    "call": ("call ",),
    "resume": ("resume",),
    "hand_over": ("hand over",),
    "take_back": ("take back",),
    "template": ("send ",),
}


@pytest.fixture
def snapshot_json(snapshot: Any) -> Any:
    """Snapshots as one JSON file per test case."""
    return snapshot.use_extension(JSONSnapshotExtension)


def _compile(paths: list[str], monkeypatch: pytest.MonkeyPatch) -> CompileResult:
    monkeypatch.chdir(ROOT)
    return compile_paths(paths)


def _short(result: CompileResult) -> str:
    lines = []
    for d in result.diagnostics:
        source = result.sources.get(d.span.file)
        line = source.position(d.span.start).line if source else 0
        lines.append(f"{d.span.file}:{line}: {d.severity}[{d.code}]: {d.message}")
    return "\n".join(lines)


def _actions(actions: tuple[Any, ...]) -> Iterator[Any]:
    """Every action, including those nested inside `if` branches."""
    for action in actions:
        yield action
        if isinstance(action, ir.IfAction):
            for branch in action.branches:
                yield from _actions(branch.actions)
            yield from _actions(action.else_actions or ())


def _line_of(result: CompileResult, ref: ir.SourceRef) -> str:
    source = result.sources[ref.file]
    assert 1 <= ref.line <= len(source.text.splitlines()), f"{ref} is outside {ref.file}"
    return source.line_text(ref.line)


@pytest.mark.parametrize("paths", list(CASES.values()), ids=list(CASES))
def test_compiles_cleanly_and_matches_snapshot(
    paths: list[str], monkeypatch: pytest.MonkeyPatch, snapshot_json: Any
) -> None:
    result = _compile(paths, monkeypatch)
    assert result.diagnostics == (), _short(result)
    assert result.program is not None
    assert result.program.model_dump(mode="json") == snapshot_json


@pytest.mark.parametrize("paths", list(CASES.values()), ids=list(CASES))
def test_every_step_and_action_points_at_its_line(
    paths: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _compile(paths, monkeypatch)
    assert result.program is not None, _short(result)
    checked = 0
    for flow in result.program.flows.values():
        for step in flow.steps.values():
            assert _line_of(result, step.source).strip().split() == ["step", step.id]
            for action in _actions(step.actions):
                text = _line_of(result, action.source).strip()
                assert text.startswith(FIRST_WORDS[action.kind]), (action.id, text)
                checked += 1
    for template in result.program.templates.values():
        assert _line_of(result, template.source).startswith(f"template {template.id}")
        for action in _actions(template.actions):
            text = _line_of(result, action.source).strip()
            assert text.startswith(FIRST_WORDS[action.kind]), (action.id, text)
            checked += 1
    assert checked > 0


def _literals(model: type[ir.BaseModel], field: str) -> set[str]:
    """The values a Literal-typed IR field may take (None excluded)."""
    annotation = model.model_fields[field].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    values: set[str] = set()
    for arg in typing.get_args(annotation):
        values.update(v for v in typing.get_args(arg) if isinstance(v, str))
    return values


def _used(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """What the golden files use, gathered from their IR."""
    used: dict[str, set[str]] = {
        key: set()
        for key in ("action", "trigger", "expect", "button", "quick_reply", "webview", "media")
    }
    used["interrupting"] = set()

    def buttons(items: tuple[ir.Button, ...]) -> None:
        for b in items:
            used["button"].add(b.type)
            if b.webview_height_ratio:
                used["webview"].add(b.webview_height_ratio)

    def quick_replies(items: tuple[ir.QuickReply, ...]) -> None:
        used["quick_reply"].update(q.content_type for q in items)

    def actions(items: tuple[Any, ...]) -> None:
        for action in _actions(items):
            used["action"].add(action.kind)
            if isinstance(action, ir.SayAction):
                buttons(action.buttons)
                quick_replies(action.quick_replies)
            elif isinstance(action, ir.CarouselAction):
                quick_replies(action.quick_replies)
                for card in action.cards:
                    buttons(card.buttons)
            elif isinstance(action, ir.AskAction):
                used["expect"].add(action.expect)
                quick_replies(action.quick_replies)
            elif isinstance(action, ir.MediaAction):
                used["media"].add(action.media_type)

    for path in sorted(GOLDEN_OK.glob("*.flow")):
        result = _compile([str(path.relative_to(ROOT))], monkeypatch)
        assert result.program is not None, _short(result)
        for flow in result.program.flows.values():
            for trigger in flow.triggers:
                used["trigger"].add(trigger.kind)
                used["interrupting"].add(str(trigger.interrupting))
            for step in flow.steps.values():
                actions(step.actions)
        for template in result.program.templates.values():
            actions(template.actions)
    return used


def test_golden_files_use_every_construct(monkeypatch: pytest.MonkeyPatch) -> None:
    used = _used(monkeypatch)
    expected = {
        "action": _literals_of_union(),
        "trigger": _literals(ir.Trigger, "kind"),
        "expect": _literals(ir.AskAction, "expect"),
        "button": _literals(ir.Button, "type"),
        "quick_reply": _literals(ir.QuickReply, "content_type"),
        "webview": _literals(ir.Button, "webview_height_ratio"),
        "media": _literals(ir.MediaAction, "media_type"),
        "interrupting": {"True", "False"},
    }
    missing = {key: sorted(values - used[key]) for key, values in expected.items()}
    assert not any(missing.values()), f"no golden ok file uses: {missing}"


def _literals_of_union() -> set[str]:
    """Every action kind of the IR's Action union."""
    union = typing.get_args(ir.Action)[0]
    return {member.model_fields["kind"].default for member in typing.get_args(union)}


def test_golden_files_use_every_statement_spelling() -> None:
    """Spellings that compile to the same IR (e.g. `go to`/`goto`) are each used somewhere."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(GOLDEN_OK.glob("*.flow")))
    spellings = [
        r"^\s+go to \w+$", r"^\s+goto \w+$", r"\bgo to \w+$", r"^\s+set \w+ to ", r"^\s+set \w+ = ",
        r"^\s+else if ", r"^\s+elif ", r"^\s+else$", r"\bor \"", r"^\s+typing$",
        r"^\s+typing for \d+ seconds?$", r"^\s+pause \d+ (second|seconds|s)$",
        r"expect an? ", r"expect (email|phone)$", r"expect an email address$",
        r"expect a phone number$", r"after \d+ tries end$", r"after 1 try goto ",
        r"with note \"", r"hand over to app \d+ with \"", r"^\s+hand over$", r"^\s+take back$",
        r"^\s+inactive$", r"^\s+title \"", r"^\s+priority \d+$", r"^\s+error message \"",
        r"^\s+greeting for \w+ \"", r"^\s+menu for \w+$", r"^\s+ice breakers for \w+$",
        r"^\s+typing disabled$", r"^\s+get started$", r"^\s+get started sends \"",
        r"^template \w+ with ", r"^template \w+$", r"^\s+send \w+ with \w+ = ", r"^\s+send \w+$",
        r"quick reply \"[^\"]+\" with image ", r"^\s+if invalid say ", r"^\s+choice \"[^\"]+\"$",
        r"\{\{ user\.", r"\{\{ message\.", r"^\s+resume$", r"^\s+call \w+$",
    ]  # fmt: skip
    missing = [s for s in spellings if not re.search(s, text, re.MULTILINE)]
    assert not missing, f"no golden ok file uses: {missing}"


# ------------------------------------------------------------------ the documentation's examples

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_SECTION = re.compile(r"^## (FL\d{3}) ([a-z0-9-]+)$", re.M)


def _flow_blocks(text: str) -> list[tuple[int, str]]:
    """The ```flow blocks of a Markdown text, with the line each starts on."""
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in _FENCE.finditer(text)
        if m.group(1) == "flow"
    ]


def _language_examples() -> list[tuple[int, str]]:
    return _flow_blocks((DOCS / "language.md").read_text(encoding="utf-8"))


def _error_sections() -> dict[str, tuple[str, str]]:
    """Code -> (name in the heading, section text) for every section of docs/errors.md."""
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    parts = _SECTION.split(text)
    return {parts[i]: (parts[i + 1], parts[i + 2]) for i in range(1, len(parts), 3)}


def _codes_of(source: str, name: str) -> list[str]:
    return [d.code for d in compile_source(source, name).diagnostics]


@pytest.mark.parametrize(
    "example",
    [b for _, b in _language_examples()],
    ids=[f"line{n}" for n, _ in _language_examples()],
)
def test_language_reference_examples_compile_cleanly(example: str) -> None:
    result = compile_source(example, "example.flow")
    assert result.diagnostics == (), _short(result)
    assert result.program is not None


def test_every_code_has_an_error_page_section() -> None:
    sections = _error_sections()
    assert sorted(sections) == sorted(c.code for c in codes.ALL_CODES)
    for code, (name, _) in sections.items():
        assert codes.BY_CODE[code].name == name, code


@pytest.mark.parametrize("code", sorted(c.code for c in codes.ALL_CODES))
def test_error_page_examples_are_wrong_and_fixed(code: str) -> None:
    """The wrong example gives its code; the fixed one compiles with no diagnostics. A wrong
    example that cannot be a short file (bad encoding, huge texts, flowc bugs) is shown as
    ```text instead."""
    _, section = _error_sections()[code]
    fences = [m.group(1) for m in _FENCE.finditer(section)]
    blocks = [b for _, b in _flow_blocks(section)]
    if fences and fences[0] == "flow":
        assert code in _codes_of(blocks[0], f"{code}-wrong.flow")
        blocks = blocks[1:]
    elif code != codes.INTERNAL.code:  # a bug in flowc has no example to show
        assert fences and fences[0] == "text", f"{code} has no wrong example"
    for fixed in blocks:
        assert _codes_of(fixed, f"{code}-fixed.flow") == []
