"""Running transcript tests: compile the flows, replay every test through the engine, compare.

`run_tests(paths)` finds `.flow` and `.transcript` files, compiles the flows as one program,
replays each test with a fresh in-memory conversation, and returns a `TestReport`: pass/fail per
test with a readable diff, transcript mistakes, compile diagnostics and step coverage per flow.
It never raises for anything an author wrote; `runtime/testcli.py` prints the report."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flowlang.compiler import CompileResult
from flowlang.diagnostics import Diagnostic, Label, Severity
from flowlang.ir import PAGE_INBOX_APP_ID, FlowProgram
from flowlang.load import compile_paths
from flowlang.render import to_json
from flowlang.source import SourceFile
from runtime.chat import DEFAULT_PROFILE as CHAT_PROFILE
from runtime.engine import advance, take_back
from runtime.events import Inbound, Outbound
from runtime.program import ProgramView
from runtime.state import ConversationState
from runtime.templates import Renderer
from runtime.transcript import (
    Check,
    Expectation,
    ExpectMessage,
    ExpectReply,
    ExpectStatus,
    Transcript,
    TranscriptError,
    TranscriptTest,
    UserInput,
    parse_transcript,
)

#: The profile every test starts with (the same person `flowc chat` plays); a test's
#: `profile` block overrides single fields.
DEFAULT_PROFILE: dict[str, Any] = dict(CHAT_PROFILE)
TRANSCRIPT_SUFFIX = ".transcript"
#: The code transcript mistakes carry when they are shown like compiler diagnostics.
TRANSCRIPT_CODE = "transcript"
PAGE_ID = "test-page"
PSID = "test-user"


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DiffLine:
    """One line of a failure's diff: `-` expected but not sent, `+` sent but not expected,
    ` ` as expected. `line` is the transcript line of an expected item."""

    sign: Literal[" ", "-", "+"]
    text: str
    line: int | None = None


@dataclass(frozen=True)
class Failure:
    """Why a test failed: where, one sentence, and the bot's messages as a diff if relevant."""

    line: int
    message: str
    after: str | None = None
    diff: tuple[DiffLine, ...] = ()


@dataclass(frozen=True)
class TestResult:
    """The outcome of one test."""

    __test__ = False  # not a pytest test class, despite the name

    file: str
    name: str
    line: int
    failure: Failure | None = None

    @property
    def passed(self) -> bool:
        """True when the conversation went exactly as written."""
        return self.failure is None


@dataclass(frozen=True)
class UncoveredStep:
    """A step no test visited, with its line in the `.flow` file."""

    step: str
    line: int


@dataclass(frozen=True)
class FlowCoverage:
    """Which steps of one flow the tests visited."""

    flow: str
    file: str
    line: int
    steps: int
    visited: int
    uncovered: tuple[UncoveredStep, ...]

    @property
    def percent(self) -> float:
        """Visited steps as a percentage of all steps (100 for a flow without steps)."""
        return 100.0 if self.steps == 0 else 100.0 * self.visited / self.steps


@dataclass
class TestReport:
    """Everything `flowc test` found out, ready to print as text or JSON."""

    __test__ = False  # not a pytest test class, despite the name

    flow_files: list[Path] = field(default_factory=list)
    transcript_files: list[Path] = field(default_factory=list)
    compile: CompileResult | None = None
    transcripts: list[Transcript] = field(default_factory=list)
    results: list[TestResult] = field(default_factory=list)
    coverage: list[FlowCoverage] = field(default_factory=list)
    min_coverage: float = 0.0

    @property
    def compile_errors(self) -> tuple[Diagnostic, ...]:
        """Errors that stopped the flows from compiling (no test ran)."""
        return self.compile.errors if self.compile is not None else ()

    @property
    def transcript_errors(self) -> list[Diagnostic]:
        """Mistakes in transcript files, as diagnostics (the files' tests did not run)."""
        return [to_diagnostic(t, e) for t in self.transcripts for e in t.errors]

    @property
    def transcript_sources(self) -> dict[str, SourceFile]:
        """The transcripts' texts by file name (to show their mistakes)."""
        return {t.name: transcript_source(t) for t in self.transcripts}

    @property
    def failed(self) -> list[TestResult]:
        """The tests that failed."""
        return [r for r in self.results if not r.passed]

    @property
    def low_coverage(self) -> list[FlowCoverage]:
        """Flows whose step coverage is below `min_coverage`."""
        return [c for c in self.coverage if c.percent < self.min_coverage]

    @property
    def ok(self) -> bool:
        """True when the flows compiled, every transcript was readable, at least one test ran,
        every test passed and coverage met the minimum."""
        return (
            not self.compile_errors
            and not self.transcript_errors
            and bool(self.results)
            and not self.failed
            and not self.low_coverage
        )

    def to_dict(self) -> dict[str, Any]:
        """The `flowc test --format json` object (documented in docs/testing.md)."""
        sources = dict(self.compile.sources) if self.compile is not None else {}
        return {
            "ok": self.ok,
            "summary": {
                "tests": len(self.results),
                "passed": len(self.results) - len(self.failed),
                "failed": len(self.failed),
                "flow_files": len(self.flow_files),
                "transcript_files": len(self.transcript_files),
            },
            "diagnostics": [to_json(d, sources) for d in self.compile_diagnostics],
            "transcript_errors": [
                to_json(d, self.transcript_sources) for d in self.transcript_errors
            ],
            "tests": [_result_json(r) for r in self.results],
            "coverage": [_coverage_json(c) for c in self.coverage],
            "min_coverage": self.min_coverage,
        }

    @property
    def compile_diagnostics(self) -> tuple[Diagnostic, ...]:
        """All compile diagnostics (errors and warnings)."""
        return self.compile.diagnostics if self.compile is not None else ()


def _result_json(result: TestResult) -> dict[str, Any]:
    failure = result.failure
    return {
        "file": result.file,
        "line": result.line,
        "name": result.name,
        "status": "passed" if failure is None else "failed",
        "failure": None
        if failure is None
        else {
            "line": failure.line,
            "message": failure.message,
            "after": failure.after,
            "diff": [{"sign": d.sign, "text": d.text, "line": d.line} for d in failure.diff],
        },
    }


def _coverage_json(coverage: FlowCoverage) -> dict[str, Any]:
    return {
        "flow": coverage.flow,
        "file": coverage.file,
        "line": coverage.line,
        "steps": coverage.steps,
        "visited": coverage.visited,
        "percent": round(coverage.percent, 1),
        "uncovered": [{"step": u.step, "line": u.line} for u in coverage.uncovered],
    }


def transcript_source(transcript: Transcript) -> SourceFile:
    """A transcript's text as a `SourceFile`, for the diagnostic renderer."""
    return SourceFile(transcript.name, "\n".join(transcript.lines))


def to_diagnostic(transcript: Transcript, error: TranscriptError) -> Diagnostic:
    """A transcript mistake as a diagnostic, so it renders exactly like a `.flow` mistake."""
    source = transcript_source(transcript)
    line = min(max(error.line, 1), len(source.line_starts))
    start = source.line_starts[line - 1] + error.column - 1
    end = min(start + error.length, start + len(source.line_text(line)) - error.column + 1)
    return Diagnostic(
        code=TRANSCRIPT_CODE,
        severity=Severity.ERROR,
        message=error.message,
        primary=Label(source.span(start, max(end, start))),
        help=error.help,
    )


# ---------------------------------------------------------------------------- finding files


def find_test_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """The `.flow` and `.transcript` files named by `paths`.

    Folders are searched (with their subfolders). A transcript named on its own brings the
    `.flow` files of its folder along when no `.flow` file or folder was named, because flows
    start and call each other."""
    flows: list[Path] = []
    transcripts: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            flows.extend(sorted(p for p in path.rglob("*.flow") if p.is_file()))
            transcripts.extend(
                sorted(p for p in path.rglob(f"*{TRANSCRIPT_SUFFIX}") if p.is_file())
            )
        elif path.suffix == TRANSCRIPT_SUFFIX:
            transcripts.append(path)
        else:
            flows.append(path)
    if not flows:
        for transcript in transcripts:
            flows.extend(sorted(p for p in transcript.parent.glob("*.flow") if p.is_file()))
    return list(dict.fromkeys(flows)), list(dict.fromkeys(transcripts))


def read_transcript(path: Path) -> Transcript:
    """Read and parse one transcript file; unreadable files become a transcript error."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        return _broken(path, f"cannot read this file: {exc.strerror}")
    except UnicodeDecodeError as exc:
        return _broken(
            path,
            f"this file is not UTF-8 text (the first bad byte is at byte {exc.start})",
            "save the file with UTF-8 encoding (most editors offer it in 'Save as')",
        )
    return parse_transcript(text, str(path))


def _broken(path: Path, message: str, help: str | None = None) -> Transcript:
    return Transcript(str(path), (), (TranscriptError(1, 1, message, help),), ("",))


# ---------------------------------------------------------------------------- what the bot sent


@dataclass(frozen=True)
class SentButton:
    """A button as sent: its kind (postback, web_url, phone_number), title and payload."""

    type: str
    title: str
    payload: str | None = None


@dataclass(frozen=True)
class SentCard:
    """A carousel card as sent."""

    title: str
    subtitle: str | None
    buttons: tuple[SentButton, ...]


@dataclass(frozen=True)
class SentReply:
    """A quick reply as sent."""

    content_type: str
    title: str | None
    payload: str | None


@dataclass(frozen=True)
class Sent:
    """One outbound item that a transcript can expect, in the transcript's own terms."""

    kind: Literal["text", "media", "carousel", "hand_over", "take_back", "other"]
    text: str | None = None
    quick_replies: tuple[SentReply, ...] = ()
    buttons: tuple[SentButton, ...] = ()
    cards: tuple[SentCard, ...] = ()
    media_type: str | None = None
    url: str | None = None
    app_id: str | None = None
    note: str | None = None
    raw: str | None = None


def sent_items(outbox: Iterable[Outbound]) -> list[Sent]:
    """The outbound items a transcript talks about: messages and handovers, in order.

    Typing indicators and pauses are left out: they are timing, not conversation."""
    return [
        _sent(item) for item in outbox if item.kind in ("message", "pass_thread", "take_thread")
    ]


def _buttons(raw: Any) -> tuple[SentButton, ...]:
    return tuple(
        SentButton(str(b.get("type", "")), str(b.get("title", "")), b.get("payload"))
        for b in raw or ()
    )


def _sent(item: Outbound) -> Sent:
    body = item.body
    if item.kind == "pass_thread":
        return Sent("hand_over", app_id=str(body.get("target_app_id")), note=body.get("metadata"))
    if item.kind == "take_thread":
        return Sent("take_back", note=body.get("metadata"))
    replies = tuple(
        SentReply(str(q.get("content_type", "text")), q.get("title"), q.get("payload"))
        for q in body.get("quick_replies") or ()
    )
    if "text" in body:
        return Sent("text", text=str(body["text"]), quick_replies=replies)
    attachment = body.get("attachment") or {}
    payload = attachment.get("payload") or {}
    kind = attachment.get("type")
    if kind == "template" and payload.get("template_type") == "button":
        buttons = _buttons(payload.get("buttons"))
        return Sent(
            "text", text=str(payload.get("text", "")), buttons=buttons, quick_replies=replies
        )
    if kind == "template" and payload.get("template_type") == "generic":
        cards = tuple(
            SentCard(str(e.get("title", "")), e.get("subtitle"), _buttons(e.get("buttons")))
            for e in payload.get("elements") or ()
        )
        return Sent("carousel", cards=cards, quick_replies=replies)
    if kind in ("image", "video", "audio", "file"):
        return Sent("media", media_type=kind, url=payload.get("url"), quick_replies=replies)
    return Sent("other", raw=json.dumps(body, ensure_ascii=False, sort_keys=True))


# ---------------------------------------------------------------------------- rendering


def quote(text: str) -> str:
    """A text in double quotes as a transcript writes it."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _reply_line(content_type: str, title: str | None) -> str:
    if content_type == "user_email":
        return "quick reply email"
    if content_type == "user_phone_number":
        return "quick reply phone"
    return f"quick reply {quote(title or '')}"


def _hand_over_line(app_id: str | None, note: str | None) -> str:
    text = "bot hands over"
    if app_id == PAGE_INBOX_APP_ID:
        text += " to page inbox"
    elif app_id is not None:
        text += f" to app {quote(app_id)}"
    return text + (f" with note {quote(note)}" if note is not None else "")


def render_sent(item: Sent) -> list[str]:
    """What the bot sent, written as transcript lines (details indented by two spaces)."""
    details = [f"  {_reply_line(q.content_type, q.title)}" for q in item.quick_replies]
    if item.kind == "text":
        buttons = [f"  button {quote(b.title)}" for b in item.buttons]
        return [f"bot says {quote(item.text or '')}", *buttons, *details]
    if item.kind == "media":
        url = f" {quote(item.url)}" if item.url else ""
        return [f"bot sends {item.media_type}{url}", *details]
    if item.kind == "carousel":
        lines = ["bot sends carousel"]
        for card in item.cards:
            lines.append(f"  card {quote(card.title)}")
            if card.subtitle is not None:
                lines.append(f"    subtitle {quote(card.subtitle)}")
            lines.extend(f"    button {quote(b.title)}" for b in card.buttons)
        return [*lines, *details]
    if item.kind == "hand_over":
        return [_hand_over_line(item.app_id, item.note)]
    if item.kind == "take_back":
        return ["bot takes back" + (f" with note {quote(item.note)}" if item.note else "")]
    return [f"bot sends a message transcripts cannot describe: {item.raw}"]


def render_expected(item: ExpectMessage) -> list[str]:
    """An expected message, written back as the transcript wrote it."""
    details = [f"  {_reply_line(q.content_type, q.title)}" for q in item.quick_replies or ()]
    if item.kind == "text":
        if item.pattern is not None:
            head = f"bot says matching {quote(item.pattern)}"
        else:
            head = "bot says " + " or ".join(quote(t) for t in item.texts)
        buttons = [f"  button {quote(b)}" for b in item.buttons or ()]
        return [head, *buttons, *details]
    if item.kind == "media":
        url = f" {quote(item.url)}" if item.url else ""
        return [f"bot sends {item.media_type}{url}", *details]
    if item.kind == "carousel":
        lines = ["bot sends carousel"]
        for card in item.cards or ():
            lines.append(f"  card {quote(card.title)}")
            if card.subtitle is not None:
                lines.append(f"    subtitle {quote(card.subtitle)}")
            lines.extend(f"    button {quote(b)}" for b in card.buttons or ())
        return [*lines, *details]
    if item.kind == "hand_over":
        return [_hand_over_line(item.app_id, item.note)]
    return ["bot takes back" + (f" with note {quote(item.note)}" if item.note else "")]


def render_input(item: UserInput) -> str:
    """A user line, as written."""
    if item.kind == "says":
        return f"user says {quote(item.text or '')}"
    if item.kind == "taps":
        return f"user taps {quote(item.text or '')}"
    if item.kind == "get_started":
        return "user taps get started"
    if item.kind == "postback":
        return f"user sends postback {quote(item.payload or '')}"
    if item.kind == "quick_reply":
        return f"user sends quick reply {quote(item.payload or '')}"
    if item.kind == "referral":
        return f"user comes from referral {quote(item.ref or '')}"
    if item.kind == "location":
        return f"user sends location {item.latitude:g}, {item.longitude:g}"
    if item.kind == "hands_back":
        return "person hands back"
    if item.kind == "menu":
        return f"user taps menu item {quote(item.text or '')}"
    if item.kind == "ice_breaker":
        return f"user taps ice breaker {quote(item.text or '')}"
    return f"user sends {item.media_type} {quote(item.url or '')}"


# ---------------------------------------------------------------------------- comparing


def _reply_keys(replies: Iterable[ExpectReply | SentReply]) -> list[tuple[str, str | None]]:
    # Messenger's email and phone quick replies have no title: only their kind counts.
    return [(q.content_type, q.title if q.content_type == "text" else None) for q in replies]


def matches(expected: ExpectMessage, sent: Sent) -> bool:
    """True when `sent` is what `expected` describes (details not written are not checked)."""
    if expected.kind != sent.kind:
        return False
    if expected.quick_replies is not None and _reply_keys(expected.quick_replies) != _reply_keys(
        sent.quick_replies
    ):
        return False
    if expected.kind == "text":
        text = sent.text or ""
        if expected.pattern is not None:
            if re.fullmatch(expected.pattern, text, re.DOTALL) is None:
                return False
        elif text not in expected.texts:
            return False
        return expected.buttons is None or list(expected.buttons) == [b.title for b in sent.buttons]
    if expected.kind == "media":
        return expected.media_type == sent.media_type and expected.url in (None, sent.url)
    if expected.kind == "carousel":
        if expected.cards is None:
            return True
        if len(expected.cards) != len(sent.cards):
            return False
        return all(
            want.title == got.title
            and want.subtitle in (None, got.subtitle)
            and (want.buttons is None or list(want.buttons) == [b.title for b in got.buttons])
            for want, got in zip(expected.cards, sent.cards, strict=True)
        )
    if expected.kind == "hand_over":
        return expected.app_id in (None, sent.app_id) and expected.note in (None, sent.note)
    return expected.note in (None, sent.note)


def diff_messages(
    expected: Sequence[ExpectMessage], sent: Sequence[Sent]
) -> tuple[DiffLine, ...] | None:
    """None when the messages match one to one, in order; else the diff.

    The alignment is a longest common subsequence under `matches`, so one missing or extra
    message shows as one `-` or `+` entry instead of shifting every message after it."""
    n, m = len(expected), len(sent)
    ok = [[matches(e, s) for s in sent] for e in expected]
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i][j] = best[i + 1][j + 1] + 1 if ok[i][j] else max(best[i + 1][j], best[i][j + 1])
    if best[0][0] == n == m:
        return None
    out: list[DiffLine] = []
    missing: list[list[DiffLine]] = []
    extra: list[list[DiffLine]] = []

    def flush() -> None:
        # Pair each missing message with the extra one sent in its place, so the diff reads
        # "expected this, got that" message by message.
        for k in range(max(len(missing), len(extra))):
            for group in (missing, extra):
                if k < len(group):
                    out.extend(group[k])
        missing.clear()
        extra.clear()

    i = j = 0
    while i < n or j < m:
        if i < n and j < m and ok[i][j] and best[i][j] == best[i + 1][j + 1] + 1:
            flush()
            out.extend(_lines(" ", render_expected(expected[i]), expected[i].line))
            i += 1
            j += 1
        elif j < m and (i == n or best[i][j + 1] >= best[i + 1][j]):
            extra.append(_lines("+", render_sent(sent[j]), None))
            j += 1
        else:
            missing.append(_lines("-", render_expected(expected[i]), expected[i].line))
            i += 1
    flush()
    return tuple(out)


def _lines(sign: Literal[" ", "-", "+"], texts: list[str], line: int | None) -> list[DiffLine]:
    # Only the first line of an item carries its line number: details belong to it.
    return [DiffLine(sign, text, line if k == 0 else None) for k, text in enumerate(texts)]


def describe_value(value: Any) -> str:
    """A variable's value in transcript words: "text", 3, yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _same_value(expected: Any, got: Any) -> bool:
    # yes/no only equals a yes/no, and a number never equals a text: 3 is not "3".
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(expected, bool) and isinstance(got, bool) and expected == got
    if isinstance(expected, int | float):
        return isinstance(got, int | float) and got == expected
    return isinstance(got, str) and got == expected


def check_variable(check: Check, variables: dict[str, Any]) -> str | None:
    """None when the check holds, else what was found instead."""
    present = variables.get(check.variable) is not None
    value = variables.get(check.variable)
    shown = (
        f"{check.variable} is {describe_value(value)}"
        if present
        else (f"{check.variable} is not set")
    )
    if check.op == "set":
        return None if present else shown
    if check.op == "not_set":
        return None if not present else shown
    if check.op == "matches":
        ok = present and re.fullmatch(str(check.value), str(value), re.DOTALL) is not None
        return None if ok else shown
    same = present and _same_value(check.value, value)
    if check.op == "is":
        if same:
            return None
        if present and str(value) == str(check.value):
            kind = "a text" if isinstance(value, str) else "a number"
            return f"{shown}, which is {kind}"
        return shown
    return shown if same else None


def describe_check(check: Check) -> str:
    """A check line, as written."""
    if check.op == "set":
        return f"check {check.variable} is set"
    if check.op == "not_set":
        return f"check {check.variable} is not set"
    if check.op == "matches":
        return f"check {check.variable} matches {quote(str(check.value))}"
    word = "is" if check.op == "is" else "is not"
    return f"check {check.variable} {word} {describe_value(check.value)}"


# ---------------------------------------------------------------------------- replaying


@dataclass
class _Screen:
    """What the user can tap right now: the last message's quick replies, every button so far."""

    quick_replies: tuple[SentReply, ...] = ()
    buttons: list[SentButton] = field(default_factory=list)

    def show(self, sent: Sequence[Sent]) -> None:
        # Messenger hides quick replies as soon as the user does anything; only the newest
        # message's quick replies are shown. Buttons stay in the conversation.
        messages = [item for item in sent if item.kind not in ("hand_over", "take_back")]
        self.quick_replies = messages[-1].quick_replies if messages else ()
        for item in sent:
            self.buttons.extend(item.buttons)
            for card in item.cards:
                self.buttons.extend(card.buttons)

    def offered(self) -> str:
        titles = [f"[{q.title}]" for q in self.quick_replies if q.title]
        titles += [f"[{b.title}]" for b in reversed(self.buttons)]
        unique = list(dict.fromkeys(titles))
        return " ".join(unique) if unique else "nothing"


class _TestFailed(Exception):
    """Stops one test's replay; carries the failure."""

    def __init__(self, failure: Failure):
        super().__init__(failure.message)
        self.failure = failure


def to_event(item: UserInput, screen: _Screen, program: FlowProgram) -> Inbound:
    """The inbound event for a user line. A tap is looked up on the screen (raises
    `_TestFailed` when nothing shown has that title)."""
    if item.kind == "says":
        return Inbound("text", text=item.text)
    if item.kind == "taps":
        title = item.text or ""
        for reply in screen.quick_replies:
            if reply.title == title:
                return Inbound("quick_reply", text=title, payload=reply.payload)
        for button in reversed(screen.buttons):
            if button.title != title:
                continue
            if button.type != "postback":
                what = "opens a web page" if button.type == "web_url" else "starts a phone call"
                raise _TestFailed(
                    Failure(
                        item.line,
                        f'the button "{title}" {what}: tapping it sends nothing to the bot',
                        render_input(item),
                    )
                )
            return Inbound("postback", text=title, payload=button.payload)
        raise _TestFailed(
            Failure(
                item.line,
                f'there is no quick reply or button "{title}" to tap; '
                f"the bot's last messages offer: {screen.offered()}",
                render_input(item),
            )
        )
    if item.kind == "get_started":
        payload = program.page.get_started_payload if program.page else None
        return Inbound("get_started", text="Get Started", payload=payload)
    if item.kind in ("menu", "ice_breaker"):
        return _page_tap(item, program)
    if item.kind == "postback":
        return Inbound("postback", payload=item.payload)
    if item.kind == "quick_reply":
        return Inbound("quick_reply", text=item.text, payload=item.payload)
    if item.kind == "referral":
        return Inbound("referral", ref=item.ref)
    if item.kind == "location":
        coordinates = {"lat": item.latitude, "long": item.longitude}
        attachment = {"type": "location", "payload": {"coordinates": coordinates}}
        return Inbound("location", attachments=(attachment,))
    attachment = {"type": item.media_type, "payload": {"url": item.url}}
    return Inbound("attachment", attachments=(attachment,))


def _page_tap(item: UserInput, program: FlowProgram) -> Inbound:
    """A tap on a persistent-menu item or an ice breaker of the page, found by its title."""
    title = item.text or ""
    page = program.page
    if item.kind == "menu":
        items = [b for menu in page.persistent_menu for b in menu.call_to_actions] if page else []
        what = "menu item"
        for button in items:
            if button.title == title:
                if button.type != "postback":
                    raise _TestFailed(
                        Failure(
                            item.line,
                            f'the menu item "{title}" opens a web page: tapping it sends '
                            "nothing to the bot",
                            render_input(item),
                        )
                    )
                return Inbound("postback", text=title, payload=button.payload)
        titles = [b.title for b in items]
    else:
        breakers = [q for group in page.ice_breakers for q in group.call_to_actions] if page else []
        what = "ice breaker"
        for question in breakers:
            if question.question == title:
                return Inbound("postback", text=title, payload=question.payload)
        titles = [q.question for q in breakers]
    offered = " ".join(f"[{t}]" for t in dict.fromkeys(titles)) or "none"
    raise _TestFailed(
        Failure(
            item.line,
            f'the page has no {what} "{title}"; its {what}s are: {offered}',
            render_input(item),
        )
    )


def _turns(items: Sequence[Any]) -> list[tuple[UserInput, list[Expectation]]]:
    turns: list[tuple[UserInput, list[Expectation]]] = []
    for item in items:
        if isinstance(item, UserInput):
            turns.append((item, []))
        else:
            turns[-1][1].append(item)
    return turns


def _compare_turn(
    user: UserInput,
    expectations: Sequence[Expectation],
    sent: Sequence[Sent],
    state: ConversationState,
) -> None:
    """Raise `_TestFailed` when the turn after `user` is not what its expectations say."""
    said = render_input(user)
    expected = [e for e in expectations if isinstance(e, ExpectMessage)]
    diff = diff_messages(expected, sent)
    if diff is not None:
        missing = any(d.sign == "-" for d in diff)
        extra = any(d.sign == "+" for d in diff)
        if missing and extra:
            what = "is not what the test expects"
        elif missing:
            what = "has fewer messages than the test expects"
        else:
            what = "has more messages than the test expects"
        first = next((d.line for d in diff if d.sign == "-" and d.line), user.line)
        answer = f"line {user.line} ({said})" if first != user.line else f"`{said}`"
        raise _TestFailed(Failure(first, f"the bot's answer to {answer} {what}", said, diff))
    for item in expectations:
        if isinstance(item, Check):
            found = check_variable(item, state.variables)
            if found is not None:
                raise _TestFailed(Failure(item.line, f"{describe_check(item)}, but {found}", said))
        elif isinstance(item, ExpectStatus):
            found = _status_problem(item, state)
            if found is not None:
                raise _TestFailed(Failure(item.line, found, said))


def _where(state: ConversationState) -> str:
    return f"flow `{state.flow_id}`, step `{state.step}`"


def _status_problem(item: ExpectStatus, state: ConversationState) -> str | None:
    if item.status == "ended":
        if state.status == "idle":
            return None
        if state.status == "waiting":
            return f"the flow has not ended: the bot waits for an answer in {_where(state)}"
        return f"the flow has not ended: it is still in {_where(state)}"
    if state.status == "waiting":
        return None
    return "the bot is not waiting for an answer: the flow has ended"


def run_test(
    view: ProgramView,
    test: TranscriptTest,
    file: str,
    visited: set[tuple[str, str]],
    renderer: Renderer | None = None,
) -> TestResult:
    """Replay one test with a fresh conversation; the steps it ran are added to `visited`."""
    state = ConversationState(page_id=PAGE_ID, psid=PSID)
    profile = {**DEFAULT_PROFILE, **test.profile}
    # Seeded by the test's name, so `say "A" or "B"` picks the same text on every run.
    rng = random.Random(test.name)
    screen = _Screen()
    try:
        for user, expectations in _turns(test.items):
            if user.kind == "hands_back":
                state, sent = take_back(state), []
            else:
                event = to_event(user, screen, view.program)
                turn = advance(view, state, event, renderer=renderer, profile=profile, rng=rng)
                visited.update(turn.steps)
                state = turn.state
                if turn.faults:
                    raise _TestFailed(
                        Failure(
                            user.line,
                            f"the flow ran into a problem: {turn.faults[0]}",
                            render_input(user),
                        )
                    )
                sent = sent_items(turn.outbox)
            _compare_turn(user, expectations, sent, state)
            screen.show(sent)
    except _TestFailed as exc:
        return TestResult(file, test.name, test.line, exc.failure)
    return TestResult(file, test.name, test.line)


def measure_coverage(program: FlowProgram, visited: set[tuple[str, str]]) -> list[FlowCoverage]:
    """Step coverage of every flow, in file and line order."""
    out = []
    flows = sorted(program.flows.values(), key=lambda f: (f.source.file, f.source.line))
    for flow in flows:
        seen = {step for flow_id, step in visited if flow_id == flow.id and step in flow.steps}
        missing = sorted(
            (s for s in flow.steps.values() if s.id not in seen), key=lambda s: s.source.line
        )
        out.append(
            FlowCoverage(
                flow=flow.id,
                file=flow.source.file,
                line=flow.source.line,
                steps=len(flow.steps),
                visited=len(seen),
                uncovered=tuple(UncoveredStep(s.id, s.source.line) for s in missing),
            )
        )
    return out


def run_tests(paths: Iterable[str | Path], *, min_coverage: float = 0.0) -> TestReport:
    """Find, compile and run everything under `paths`; never raises for an author's mistake."""
    flows, transcripts = find_test_files(paths)
    report = TestReport(flows, transcripts, min_coverage=min_coverage)
    report.transcripts = [read_transcript(path) for path in transcripts]
    if not flows:
        return report
    report.compile = compile_paths(flows)
    program = report.compile.program
    if program is None or report.compile.errors:
        return report
    view = ProgramView(program)
    renderer = Renderer()
    visited: set[tuple[str, str]] = set()
    for transcript in report.transcripts:
        if transcript.errors:
            continue
        for test in transcript.tests:
            report.results.append(run_test(view, test, transcript.name, visited, renderer))
    report.coverage = measure_coverage(program, visited)
    return report
