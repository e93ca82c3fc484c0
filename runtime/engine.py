"""The conversation engine: one inbound event + the conversation state → the new state and what
to send. Pure: no I/O, no clock, no globals it writes to; the renderer, the user's profile and
the random source are passed in, and the input state is never modified.

`docs/runtime.md` explains every rule in plain words; the comments here say why the code is
shaped the way it is. A turn runs actions until the flow waits for an answer (`ask`) or ends,
bounded by `max_actions`.

Speed: what does not depend on the conversation is worked out once per flow version (messages
without templates, trace entries, and "segments": runs of actions that only send messages,
played in one go). The commonest turns (a good answer to a question a parser checks; a keyword
that starts a flow) then skip the general machinery altogether (`_quick_turn`). Both shortcuts
give exactly the turns the action-by-action path gives (tests/runtime/test_engine_shortcuts.py
compares them)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from flowlang import ir
from runtime.events import Inbound, Outbound
from runtime.matching import TriggerHit
from runtime.program import ANSWER_PREFIX, STEP_PREFIX, FlowIndex, ProgramView
from runtime.state import STATE_VERSION, ConversationState, Frame
from runtime.templates import Renderer, TemplateError, shared_renderer
from runtime.validation import find_choice, judge, simple_parser

#: Sent when a fault happens and neither the flow nor the page has an `error message`.
DEFAULT_ERROR_MESSAGE = "Sorry, something went wrong on our side. Please try again."
#: How many flows may be paused on the stack (calls and interrupts) before it is a fault.
MAX_STACK_DEPTH = 32
#: The standard profile fields: a flow may always read them (empty when unknown).
PROFILE_FIELDS = ("first_name", "last_name", "profile_pic", "locale", "timezone", "gender")

_RNG = random.Random()
#: Builds a TraceEntry without the Python-level NamedTuple constructor (it runs every turn).
_entry = tuple.__new__
_new = object.__new__
_BLANK_USER = dict.fromkeys(PROFILE_FIELDS, "")
_SPACES = frozenset(("user", "message", "page"))
#: Cache marker: this action's message depends on the context and is rendered every time.
_DYNAMIC: Any = object()


@dataclass(frozen=True, slots=True)
class RuntimeFault:
    """Something went wrong while running a flow: which flow and step, where in the `.flow`
    source (`file:line`), and why. The user got the error message instead (except for a
    conversation whose flow version is gone: that one is logged and starts afresh)."""

    flow_id: str | None
    step: str | None
    source: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        what = f"in flow `{self.flow_id}`" if self.flow_id else "outside any flow"
        if self.step:
            what += f", step `{self.step}`"
        return f"{where}{what}: {self.reason}"


class TraceEntry(NamedTuple):
    """One thing the engine did, for logs, `/state` and step coverage.

    kinds: trigger, start, step, wait, answer, invalid, gave_up, reask, stale, jump, call,
    return, interrupt, resume, end, hand_over, take_back, ignored, nothing, lost, fault."""

    kind: str
    flow: str | None = None
    step: str | None = None
    detail: str = ""


@dataclass(slots=True)
class Turn:
    """The result of one event: the new state, what to send (in order), faults and a trace.

    Outbound bodies may be shared between turns (static messages are built once): treat
    them as read-only."""

    state: ConversationState
    outbox: list[Outbound] = field(default_factory=list)
    faults: list[RuntimeFault] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The Send API `message` bodies of this turn, in order."""
        return [item.body for item in self.outbox if item.kind == "message"]

    @property
    def steps(self) -> list[tuple[str, str]]:
        """The (flow, step) pairs this turn ran actions in, in order (for coverage)."""
        return [(e.flow, e.step) for e in self.trace if e.kind == "step" and e.flow and e.step]


class _Fault(Exception):
    def __init__(self, fault: RuntimeFault) -> None:
        super().__init__(fault.reason)
        self.fault = fault


# ------------------------------------------------------------------------- public entry points


def advance(
    program: ProgramView,
    state: ConversationState,
    event: Inbound,
    *,
    renderer: Renderer | None = None,
    profile: Mapping[str, Any] | None = None,
    page: Mapping[str, Any] | None = None,
    rng: random.Random | None = None,
    max_actions: int = 200,
) -> Turn:
    """Run one inbound event through the conversation.

    - `program`: the compiled program with its indexes (`ProgramView`), which also finds old
      flow versions for conversations that started before a deploy;
    - `state`: the conversation's state (left untouched; the new one is in the result);
    - `renderer`: the sandboxed template renderer (default: the process-wide one);
    - `profile`: the user's profile fields (`user.*` in templates); `page`: extra `page.*`;
    - `rng`: picks among text variations (`say "Hi" or "Hello"`);
    - `max_actions`: the most actions one turn may run, the last guard against loops.

    Never raises for anything a flow or a user can do: problems become `Turn.faults`."""
    renderer = renderer or shared_renderer()
    if event.kind == "text" and event.text and not state.handed_over and _SHORTCUTS:
        try:
            turn = _quick_turn(program, state, event, renderer, profile, page, max_actions)
        except Exception:  # e.g. a text that fails to render: the general path reports it
            turn = None
        if turn is not None:
            return turn
    run = _Run(program, state, event, renderer, profile, page, rng, max_actions)
    st = run.st
    if st.handed_over:
        # A person has the thread: the bot stays silent (the server still logs the event).
        run.note("ignored", detail="handed over to a person")
        return Turn(st, [], [], run.trace)
    try:
        if st.state_version != STATE_VERSION:
            run.note("lost", detail=f"state version {st.state_version} reset")
            run.go_idle()
            st.state_version = STATE_VERSION
        run.dispatch(event)
    except _Fault as exc:
        run.fail(exc.fault)
    except Exception as exc:  # a bug of ours must not reach the user as silence or a crash
        run.fail(run.fault(f"internal error: {type(exc).__name__}: {exc}"))
    turn = _new(Turn)  # Turn(...) without the dataclass __init__: this runs every turn
    turn.state = st
    turn.outbox = run.outbox
    turn.faults = run.faults
    turn.trace = run.trace
    return turn


def take_back(state: ConversationState) -> ConversationState:
    """The state after a person hands the thread back (or the bot takes it): the bot answers
    again, starting from idle on the next message. The input state is not modified."""
    new = _clone(state)
    new.handed_over = False
    _set_idle(new)
    return new


def reset(state: ConversationState) -> ConversationState:
    """A fresh conversation for the same page and user: idle, no variables, not handed over."""
    return ConversationState(page_id=state.page_id, psid=state.psid, version=state.version)


# ----------------------------------------------------------------------------------- helpers


def _clone(state: ConversationState) -> ConversationState:
    # Cheaper than dataclasses.replace (one dict copy); variables and the stack get their own
    # containers, and Frame objects are never mutated (they are replaced), so sharing them is
    # safe.
    fields = state.__dict__.copy()
    fields["variables"] = dict(state.variables)
    fields["stack"] = list(state.stack)
    new = _new(ConversationState)
    new.__dict__ = fields
    return new


def _context(
    st: ConversationState,
    variables: Mapping[str, Any],
    event: Inbound,
    profile: Mapping[str, Any] | None,
    page: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The template context: variables, then the `user`, `message` and `page` namespaces."""
    if profile:
        user = {**_BLANK_USER, **profile, "id": st.psid}
        if None in user.values():
            user = {k: "" if v is None else v for k, v in user.items()}
    else:
        user = {**_BLANK_USER, "id": st.psid}
    ctx = dict(variables)
    ctx["user"] = user
    # Empty text, not None, for what the event lacks: `{{ message.text }}` on a sticker shows
    # nothing, and `"hi" in message.text | lower` keeps working.
    ctx["message"] = {
        "text": event.text or "",
        "payload": event.payload or "",
        "ref": event.ref or "",
        "kind": event.kind,
        "attachments": [dict(a) for a in event.attachments],
    }
    ctx["page"] = {"id": st.page_id, **page} if page else {"id": st.page_id}
    return ctx


def _set_idle(st: ConversationState) -> None:
    st.flow_id = st.flow_version = st.step = st.position = None
    st.status = "idle"
    st.tries = 0
    st.stack = []


def _has_template(value: Any) -> bool:
    """Whether any author string in a (dumped) action holds a `{`, i.e. may need rendering."""
    if isinstance(value, str):
        return "{" in value
    if isinstance(value, dict):
        return any(_has_template(v) for k, v in value.items() if k not in ("id", "source"))
    if isinstance(value, list | tuple):
        return any(_has_template(v) for v in value)
    return False


def _quick_reply(qr: ir.QuickReply, render: Any) -> dict[str, Any]:
    if qr.content_type != "text":
        return {"content_type": qr.content_type}
    body: dict[str, Any] = {
        "content_type": "text",
        "title": render(qr.title or ""),
        "payload": render(qr.payload or ""),
    }
    if qr.image_url:
        body["image_url"] = render(qr.image_url)
    return body


def _button(button: ir.Button, render: Any) -> dict[str, Any]:
    if button.type == "web_url":
        body: dict[str, Any] = {
            "type": "web_url",
            "url": render(button.url or ""),
            "title": render(button.title),
        }
        if button.webview_height_ratio:
            body["webview_height_ratio"] = button.webview_height_ratio
        return body
    return {
        "type": button.type,
        "title": render(button.title),
        "payload": render(button.payload or ""),
    }


def _card(card: ir.Card, render: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"title": render(card.title)}
    if card.subtitle:
        body["subtitle"] = render(card.subtitle)
    if card.image_url:
        body["image_url"] = render(card.image_url)
    if card.default_action:
        default: dict[str, Any] = {"type": "web_url", "url": render(card.default_action.url)}
        if card.default_action.webview_height_ratio:
            default["webview_height_ratio"] = card.default_action.webview_height_ratio
        body["default_action"] = default
    if card.buttons:
        body["buttons"] = [_button(b, render) for b in card.buttons]
    return body


def _text_message(
    text: str, buttons: list[dict[str, Any]], quick_replies: list[dict[str, Any]]
) -> dict[str, Any]:
    """A text, or a button template when there are buttons; quick replies ride along."""
    if buttons:
        body: dict[str, Any] = {
            "attachment": {
                "type": "template",
                "payload": {"template_type": "button", "text": text, "buttons": buttons},
            }
        }
    else:
        body = {"text": text}
    if quick_replies:
        body["quick_replies"] = quick_replies
    return body


def _literal(text: str | None) -> str:
    return text or ""


def _out(
    kind: str, body: dict[str, Any], tag: str | None = None, source: str | None = None
) -> Outbound:
    # Outbound is a frozen dataclass; filling its __dict__ directly is a third of the cost of
    # __init__, and this runs for every message of every turn.
    out = _new(Outbound)
    fields = out.__dict__
    fields["kind"] = kind
    fields["body"] = body
    fields["seconds"] = 0.0
    fields["tag"] = tag
    fields["source"] = source
    return out


# ------------------------------------------ per flow version: tables, segments, prebuilt messages


class _Text(NamedTuple):
    """The plan of a `say` with one templated text and no buttons or quick replies."""

    text: str
    reads: bool  # True: only variables; False: the user/message/page namespaces too
    tag: str | None
    where: str | None


class _Tables:
    """What the engine works out once per flow version, on first use: for each action its
    run record `(action, kind, step, step trace entry, next action id, wait trace entry)`;
    for each question that a parser alone checks (see `validation.simple_parser`) the parser,
    the variable and the next action id; and the `start` / `trigger` / `end` trace entries,
    which are the same every time. Trace entries are immutable, so turns share them."""

    __slots__ = (
        "answers",
        "ends",
        "entry",
        "nodes",
        "parsers",
        "segments",
        "starts",
        "triggers",
    )

    def __init__(self, fi: FlowIndex) -> None:
        steps: dict[str, TraceEntry] = {}
        self.nodes: dict[str, tuple[Any, str, str, TraceEntry, str | None, Any]] = {}
        self.parsers: dict[str, Any] = {}
        #: The first action of the flow (`fi.start_of(None)`).
        self.entry = fi.start_of(None)
        for aid, action in fi.actions.items():
            step = fi.step_of[aid]
            entry = steps.get(step)
            if entry is None:
                entry = steps[step] = TraceEntry("step", fi.id, step, "")
            kind = action.kind
            wait = None
            if kind == "ask":
                wait = TraceEntry("wait", fi.id, step, aid)
                parse = simple_parser(action)
                self.parsers[aid] = (parse, action.var, fi.after[aid]) if parse else None
            self.nodes[aid] = (action, kind, step, entry, fi.after[aid], wait)
        self.starts: dict[str | None, TraceEntry] = {}
        self.triggers: dict[str, TraceEntry] = {}
        self.ends: dict[str | None, TraceEntry] = {}
        #: The segment starting at each action (built on first use; see `_segment`).
        self.segments: dict[str, Any] = {}
        #: What `_quick_turn` needs to take an answer to each question (see `_quick_answer`).
        self.answers: dict[str, Any] = {}


def _tables(fi: FlowIndex) -> _Tables:
    tables = fi.tables
    if tables is None:
        tables = fi.tables = _Tables(fi)
    return tables


def _trigger_entry(fi: FlowIndex, hit: TriggerHit) -> TraceEntry:
    entries = (fi.tables or _tables(fi)).triggers
    entry = entries.get(hit.kind)
    if entry is None or entry.flow != hit.flow_id:
        entry = entries[hit.kind] = TraceEntry("trigger", hit.flow_id, None, hit.kind)
    return entry


def _start_entry(fi: FlowIndex, step: str | None) -> TraceEntry:
    entries = (fi.tables or _tables(fi)).starts
    entry = entries.get(step)
    if entry is None:
        entry = entries[step] = TraceEntry("start", fi.id, step or fi.flow.entry, fi.version)
    return entry


def _end_entry(fi: FlowIndex, step: str | None) -> TraceEntry:
    entries = (fi.tables or _tables(fi)).ends
    entry = entries.get(step)
    if entry is None:
        entry = TraceEntry("end", fi.id, step, "")
        if step is None or fi.has_step(step):  # (a damaged state may name any step)
            entries[step] = entry
    return entry


class _Segment:
    """A straight run of actions that only send messages and move on, precomputed so a turn
    plays it in one go instead of action by action: `say` with one text (and buttons or
    quick replies only if nothing in it is a template); media, carousels, typing and pauses
    without templates; `goto` and `end`; then maybe an `ask` whose question has no template.

    - `size`: how many actions (the turn's action budget must cover all of them, else they
      run one by one and the budget fault comes at the right action);
    - `items`: the messages, prebuilt (`Outbound`) or a `_Text` to render; `static` when all
      are prebuilt;
    - `step`, `entry`: the step of the first action and its `step` trace entry (written only
      when the previous action ran in another step); `steps`: the `step` entries of the later
      step changes, `last_step` the step of the last action;
    - `wait`: the `wait` trace entry when the run ends with an `ask` (then `next` is its id);
      otherwise `next` is the action to continue with (None: the flow ends there);
    - for `_quick_turn`, when the segment ends with a question or the end of the flow:
      `trace`, its trace entries from the first step on, and `final`, the state fields it
      leaves (else `final` is None)."""

    __slots__ = (
        "entry",
        "final",
        "items",
        "last_step",
        "next",
        "size",
        "static",
        "step",
        "steps",
        "trace",
        "wait",
    )

    def __init__(self) -> None:
        self.size = 0
        self.items: list[Any] = []
        self.static = True
        self.step: str | None = None
        self.entry: TraceEntry | None = None
        self.steps: list[TraceEntry] = []
        self.last_step: str | None = None
        self.wait: TraceEntry | None = None
        self.next: str | None = None
        self.trace: tuple[TraceEntry, ...] = ()
        self.final: dict[str, Any] | None = None

    def finish(self, fi: FlowIndex) -> _Segment:
        """Fill in `trace` and `final` (see the class docstring)."""
        entries = (self.entry, *self.steps)
        if self.wait is not None:
            self.trace = (*entries, self.wait)
            self.final = {
                "flow_id": fi.id,
                "flow_version": fi.version,
                "step": self.last_step,
                "position": self.next,
                "status": "waiting",
                "tries": 0,
            }
        elif self.next is None:
            self.trace = (*entries, _end_entry(fi, self.last_step))
            self.final = dict.fromkeys(("flow_id", "flow_version", "step", "position"))
            self.final.update(status="idle", tries=0)
        return self


#: Marks an action a segment cannot start with.
_NO_SEGMENT: Any = object()
#: The longest segment (a guard for flows that `goto` in a circle without asking).
_SEGMENT_LIMIT = 64


def _segment(fi: FlowIndex, aid: str | None, renderer: Renderer) -> Any:
    """The segment that starts at `aid`, or `_NO_SEGMENT`."""
    nodes = (fi.tables or _tables(fi)).nodes
    segment = _Segment()
    seen: set[str] = set()
    while aid is not None and aid not in seen and segment.size < _SEGMENT_LIMIT:
        action, kind, step, entry, after, wait = nodes[aid]
        item = None
        if kind == "say":
            item = fi.cache.get(aid)
            if item is None:
                item = fi.cache[aid] = _Run.say_plan(action, fi.where.get(aid), renderer)
            if item.__class__ is not Outbound and item.__class__ is not _Text:
                break
        elif kind == "ask":
            item = _static_question(fi, action, False)
            if item is None:
                break
        elif kind in ("media", "carousel", "typing", "pause"):
            item = _static_items(fi, action)
            if item is None:
                break
        elif kind == "goto":
            if not fi.has_step(action.step):
                break  # the fault is reported by the action itself
        elif kind != "end":
            break
        seen.add(aid)
        if segment.size == 0:
            segment.step, segment.entry = step, entry
        elif step != segment.last_step:
            segment.steps.append(entry)
        segment.last_step = step
        segment.size += 1
        if item.__class__ is list:  # media, carousel, typing, pause: prebuilt
            segment.items += item
        elif item is not None:
            segment.items.append(item)
            segment.static = segment.static and item.__class__ is Outbound
        if kind == "ask":
            segment.wait = wait
            segment.next = aid
            return segment.finish(fi)
        if kind == "goto":
            aid = fi.start_of(action.step)
        elif kind == "end":
            aid = None
            break
        else:
            aid = after
    segment.next = aid
    return segment.finish(fi) if segment.size else _NO_SEGMENT


def _static_question(fi: FlowIndex, ask: ir.AskAction, reask: bool) -> Outbound | None:
    """The prebuilt message of a question that holds no template (built on first use), or
    None when it must be rendered each time."""
    if reask and ask.reask:
        texts, key = ask.reask, (ask.id, True)
    else:
        texts, key = ask.prompts, ask.id  # an ask has no other entry in the cache
    cached = fi.cache.get(key)
    if cached is None:
        static = len(texts) == 1 and not _has_template(
            ask.model_dump(include={"prompts", "reask", "quick_replies"})
        )
        if static:
            choices = [
                {"content_type": "text", "title": c.title, "payload": c.payload}
                for c in ask.choices
            ]
            extra = [_quick_reply(q, _literal) for q in ask.quick_replies]
            cached = _out(
                "message", _question_body(ask, texts[0], choices, extra), None, fi.where[ask.id]
            )
        else:
            cached = _DYNAMIC
        fi.cache[key] = cached
    return None if cached is _DYNAMIC else cached


def _static_message(action: Any, render: Any, where: str | None) -> list[Outbound] | None:
    """The items of a media, carousel, typing or pause action, its texts passed through
    `render`; None for any other kind of action."""
    kind = action.kind
    if kind == "media":
        body = {
            "attachment": {
                "type": action.media_type,
                "payload": {"url": render(action.url), "is_reusable": True},
            }
        }
        return [Outbound("message", body, source=where)]
    if kind == "carousel":
        body = {
            "attachment": {
                "type": "template",
                "payload": {
                    "template_type": "generic",
                    "elements": [_card(c, render) for c in action.cards],
                },
            }
        }
        if action.quick_replies:
            body["quick_replies"] = [_quick_reply(q, render) for q in action.quick_replies]
        return [Outbound("message", body, tag=action.tag, source=where)]
    if kind == "typing":
        items = [Outbound("sender_action", {"sender_action": "typing_on"}, source=where)]
        if action.seconds:
            items.append(Outbound("pause", seconds=float(action.seconds), source=where))
        return items
    if kind == "pause":
        return [Outbound("pause", seconds=float(action.seconds), source=where)]
    return None


def _static_items(fi: FlowIndex, action: Any) -> list[Outbound] | None:
    """The prebuilt items of a media, carousel, typing or pause action without templates
    (built on first use, shared with `_Run.send_static`), or None when they are rendered
    each time."""
    cached = fi.cache.get(action.id)
    if cached is None:
        items = None
        if not _has_template(action.model_dump()):
            items = _static_message(action, _literal, fi.where.get(action.id))
        cached = fi.cache[action.id] = _DYNAMIC if items is None else items
    return None if cached is _DYNAMIC else cached


def _question_body(
    ask: ir.AskAction, text: str, choices: list[dict[str, Any]], extra: list[dict[str, Any]]
) -> dict[str, Any]:
    """A question's message: quick-reply choices, or a button template for button choices."""
    if ask.choice_style == "buttons" and choices:
        buttons = [
            {"type": "postback", "title": c.title, "payload": c.payload} for c in ask.choices
        ]
        return _text_message(text, buttons, extra)
    return _text_message(text, [], choices + extra)


# ------------------------------------------------------------------------------ the quick path


#: Whether turns take the precomputed shortcuts: `_quick_turn`, and segments played in one go
#: (see `_Segment`). The tests switch them off to compare with the action-by-action path.
_SHORTCUTS = True


def _quick_turn(
    program: ProgramView,
    state: ConversationState,
    event: Inbound,
    renderer: Renderer,
    profile: Mapping[str, Any] | None,
    page: Mapping[str, Any] | None,
    budget: int,
) -> Turn | None:
    """The two commonest turns, without the general machinery of `_Run`: typed text that
    (1) answers the pending question well, or (2) starts a flow by keyword or regex while
    nothing is pending; either way followed by one segment (see `_Segment`) that ends with
    the next question or the end of the flow. Same result as the general path, which
    handles everything else: this returns None whenever the turn is not one of these, or
    anything is unusual (not yet indexed, a stack to return to, ...), and raises when
    something fails (then `advance` runs the turn again on the general path, which reports
    the fault).

    Pure like the rest: the input state is not modified; only caches are filled."""
    if state.state_version != STATE_VERSION:
        return None
    text = event.text
    triggers = program.triggers
    status = state.status
    stack: list[Frame]
    if status == "waiting":
        fi = program.flows.get(state.flow_id)  # type: ignore[arg-type]
        if fi is None or fi.version != state.flow_version or fi.tables is None:
            return None
        tables = fi.tables
        answer = tables.answers.get(state.position)  # type: ignore[arg-type]
        if answer is None:
            answer = _quick_answer(tables, state.position)
        if not answer:  # not (yet) known, or not a question a parser alone checks, or ...
            return None
        if triggers.has_interrupting_text and triggers.interrupting_text.may_match(text):
            return None  # the general path finds out whether it interrupts
        parse, var, segment = answer
        value = parse(text)
        if value is None:  # a wrong answer
            return None
        trace = [_entry(TraceEntry, ("answer", fi.id, state.step, repr(value)))]
        variables = dict(state.variables)
        if var:
            variables[var] = value
        stack = state.stack
        if segment.wait is None:
            if stack and stack[-1].reason == "call":
                return None  # the flow returns to its caller
            stack = []
        else:
            stack = list(stack)
    elif status == "idle":
        hit = triggers.text.match(text) if triggers.has_text else None
        if hit is None:
            return None
        fi = program.flows.get(hit.flow_id)
        if fi is None or fi.tables is None:
            return None
        tables = fi.tables
        trigger = tables.triggers.get(hit.kind)
        start = tables.starts.get(None)
        if trigger is None or trigger.flow != hit.flow_id or start is None:
            return None
        segment = tables.segments.get(tables.entry)  # type: ignore[arg-type]
        if segment is None or segment is _NO_SEGMENT or segment.final is None:
            return None  # not played yet, or it stops at an action the general path runs
        trace = [trigger, start]
        variables = dict(state.variables)
        stack = []
    else:
        return None
    if segment.size > budget:
        return None
    if segment.static:
        messages = list(segment.items)
    else:
        messages = []
        ctx = None
        for item in segment.items:
            if item.__class__ is not _Text:
                messages.append(item)
                continue
            text, reads, tag, where = item
            if reads:
                text = renderer.render(text, variables)
            else:
                if ctx is None:
                    ctx = _context(state, variables, event, profile, page)
                text = renderer.render(text, ctx)
            out = _new(Outbound)  # `_out`, inline
            fields = out.__dict__
            fields["kind"] = "message"
            fields["body"] = {"text": text}
            fields["seconds"] = 0.0
            fields["tag"] = tag
            fields["source"] = where
            messages.append(out)
    trace += segment.trace
    fields = state.__dict__.copy()
    fields.update(segment.final)
    fields["variables"] = variables
    fields["stack"] = stack
    new = _new(ConversationState)
    new.__dict__ = fields
    turn = _new(Turn)
    turn.state = new
    turn.outbox = messages
    turn.faults = []
    turn.trace = trace
    return turn


def _quick_answer(tables: _Tables, position: str | None) -> Any:
    """For `_quick_turn`: `(parser, variable, segment after it)` of a question that a parser
    alone checks and is followed by a quick segment, False for one that is not. None when it
    is too early to know (the segment after it has not been played yet)."""
    simple = tables.parsers.get(position)  # type: ignore[arg-type]
    if simple is None:
        if position not in tables.nodes:
            return False  # a damaged state: not worth remembering
        answer: Any = False
    else:
        parse, var, after = simple
        segment = tables.segments.get(after)  # type: ignore[arg-type]
        if segment is None:
            return None
        answer = (parse, var, segment) if segment is not _NO_SEGMENT and segment.final else False
    tables.answers[position] = answer  # type: ignore[index]
    return answer


# ------------------------------------------------------------------------------------ the run


class _Run:
    """The working area of one turn: a private copy of the state, the outbox and the trace."""

    __slots__ = (
        "_ctx",
        "_sfi",
        "_sstep",
        "_where",
        "budget",
        "event",
        "faults",
        "fi",
        "outbox",
        "page",
        "profile",
        "program",
        "renderer",
        "rng",
        "st",
        "trace",
    )

    def __init__(
        self,
        program: ProgramView,
        state: ConversationState,
        event: Inbound,
        renderer: Renderer,
        profile: Mapping[str, Any] | None,
        page: Mapping[str, Any] | None,
        rng: random.Random | None,
        budget: int,
    ) -> None:
        self.program = program
        # The private copy of the state (what `_clone` does, inline: this runs every turn).
        fields = state.__dict__.copy()
        fields["variables"] = dict(state.variables)
        fields["stack"] = list(state.stack)
        st = self.st = _new(ConversationState)
        st.__dict__ = fields
        self.event = event
        self.renderer = renderer
        self.profile = profile
        self.page = page
        self.rng = rng or _RNG
        self.budget = budget
        self.outbox: list[Outbound] = []
        self.faults: list[RuntimeFault] = []
        self.trace: list[TraceEntry] = []
        self.fi: FlowIndex | None = None
        self._ctx: dict[str, Any] | None = None
        # The (flow, step) last traced: a `step` entry is written when either changes.
        self._sfi: FlowIndex | None = None
        self._sstep: str | None = None
        self._where: str | None = None  # `file:line` of the template action being sent

    # -- bookkeeping
    def note(self, kind: str, detail: str = "", step: str | None = None) -> None:
        fi = self.fi
        entry = (kind, fi.id if fi else None, step or self.st.step, detail)
        self.trace.append(_entry(TraceEntry, entry))

    def fault(self, reason: str, aid: str | None = None, where: str | None = None) -> RuntimeFault:
        fi, st = self.fi, self.st
        step = st.step
        if fi is not None and aid is not None:
            step = fi.step_of.get(aid, step)
            where = where or fi.where.get(aid)
        return RuntimeFault(fi.id if fi else st.flow_id, step, where, reason)

    def fail(self, fault: RuntimeFault) -> None:
        """Log the fault, send the error message instead, and reset to idle (variables kept)."""
        self.faults.append(fault)
        self.trace.append(TraceEntry("fault", fault.flow_id, fault.step, fault.reason))
        fi = self.fi
        text = (fi.flow.error_message if fi else None) or self.program.error_message
        self.outbox.append(
            Outbound("message", {"text": text or DEFAULT_ERROR_MESSAGE}, source=fault.source)
        )
        self.go_idle()

    def go_idle(self) -> None:
        _set_idle(self.st)
        self.fi = None

    def enter(self, fi: FlowIndex) -> None:
        self.fi = fi
        self.st.flow_id = fi.id
        self.st.flow_version = fi.version

    @property
    def ctx(self) -> dict[str, Any]:
        """The template context: variables, then the `user`, `message` and `page` namespaces."""
        ctx = self._ctx
        if ctx is None:
            st = self.st
            ctx = self._ctx = _context(st, st.variables, self.event, self.profile, self.page)
        return ctx

    def set_var(self, name: str, value: Any) -> None:
        self.st.variables[name] = value
        if self._ctx is not None:
            self._ctx[name] = value

    # -- rendering
    def render(self, text: str, aid: str | None, ctx: Mapping[str, Any] | None = None) -> str:
        if "{" not in text:
            return text
        renderer = self.renderer
        if ctx is None:
            # A text that reads only variables renders against them directly: building the
            # user/message/page namespaces is most of the cost of a short text.
            names = renderer.names(text)
            ctx = self.st.variables if names is not None and names.isdisjoint(_SPACES) else self.ctx
        try:
            return renderer.render(text, ctx)
        except TemplateError as exc:
            raise _Fault(self.fault(exc.reason, aid, self._where)) from None

    def evaluate(self, expr: str, aid: str | None, ctx: Mapping[str, Any] | None = None) -> Any:
        try:
            return self.renderer.evaluate(expr, self.ctx if ctx is None else ctx)
        except TemplateError as exc:
            raise _Fault(self.fault(exc.reason, aid, self._where)) from None

    def pick(self, texts: Sequence[str]) -> str:
        return texts[0] if len(texts) == 1 else self.rng.choice(texts)

    # -- dispatch: which rule an event falls under
    def dispatch(self, event: Inbound) -> None:
        kind = event.kind
        if kind == "text":  # the common case, and what every branch below ends with
            # (an idle conversation has nothing pending, and `pending` would only say so)
            self.on_text(event.text, None if self.st.status == "idle" else self.pending())
            return
        program = self.program
        payload = event.payload
        if kind == "postback" and payload and payload == program.get_started_payload:
            kind = "get_started"
        pending = self.pending()
        triggers = program.triggers

        if kind in ("postback", "quick_reply") and payload:
            if pending is not None:
                fi, ask = pending
                index = find_choice(ask, None, payload)
                if index is not None and self._title_fits(ask, index, event):
                    self.answer(fi, ask, event.text, payload)
                    return
            if payload.startswith(ANSWER_PREFIX):
                # A choice of a question that is not the pending one (an old message): never
                # taken as an answer to something else.
                if pending is not None:
                    self.reask(pending, "stale", f"old choice {payload}")
                    return
                self.on_text(event.text, None)  # as if the user typed the button's title
                return
            if payload.startswith(STEP_PREFIX) and self.navigate(payload, pending):
                return
            hit = triggers.by_payload(payload)
            if hit is not None:
                self.start_hit(hit, pending)
                return
            if kind == "quick_reply":
                self.on_text(event.text if event.text is not None else payload, pending)
                return
            if pending is not None:
                self.reask(pending, "reask", f"postback {payload} is not an answer")
                return
            self.fallback()
            return

        if kind == "get_started":
            hit = (
                (triggers.by_referral(event.ref) if event.ref else None)
                or triggers.get_started()
                or (triggers.by_payload(payload) if payload else None)
            )
            if hit is not None:
                self.start_hit(hit, pending)
            elif pending is not None:
                self.reask(pending, "reask", "get started")
            else:
                self.fallback()
            return

        if kind == "referral":
            hit = triggers.by_referral(event.ref) if event.ref else None
            if hit is not None:
                self.start_hit(hit, pending)
            else:
                self.note("nothing", detail=f"no flow for referral {event.ref!r}")
            return

        self.on_text(event.text, pending)

    @staticmethod
    def _title_fits(ask: ir.AskAction, index: int, event: Inbound) -> bool:
        # An ANSWER payload names the question and the choice number; when the tap also
        # carries a title, it must be that choice's title (guards against a reused action id
        # on another version offering different choices).
        payload = event.payload or ""
        if not payload.startswith(ANSWER_PREFIX) or event.text is None:
            return True
        return event.text.strip() == ask.choices[index].title.strip()

    def on_text(self, text: str | None, pending: tuple[FlowIndex, ir.AskAction] | None) -> None:
        triggers = self.program.triggers
        if pending is not None:
            fi, ask = pending
            if (
                text
                and triggers.has_interrupting_text
                and (not ask.choices or find_choice(ask, text, None) is None)
            ):
                hit = triggers.by_text(text, interrupting_only=True)
                if hit is not None:
                    self.start_hit(hit, pending)
                    return
            self.answer(fi, ask, text, None)
            return
        hit = triggers.by_text(text) if text else None
        if hit is not None:
            self.start_hit(hit, None)
        else:
            self.fallback()

    def pending(self) -> tuple[FlowIndex, ir.AskAction] | None:
        """The question the conversation waits on, on the flow version it was asked from."""
        st = self.st
        if st.status != "waiting":
            if st.status != "idle":  # "running" is never saved by a finished turn
                self.note("lost", detail=f"status {st.status!r} reset")
                self.go_idle()
            return None
        fi = self.program.flows.get(st.flow_id)  # type: ignore[arg-type]
        if fi is None or fi.version != st.flow_version:
            fi = self.program.version(st.flow_id, st.flow_version)
        ask = fi.actions.get(st.position) if fi is not None and st.position else None
        if ask is None or ask.kind != "ask":
            # The version it waits in is unknown here (not deployed in this store) or the
            # state is damaged: log it and treat the event as the start of a conversation.
            reason = (
                f"flow `{st.flow_id}` version {str(st.flow_version)[:15]} is not available"
                if fi is None
                else f"no question `{st.position}` in flow `{st.flow_id}`"
            )
            self.faults.append(RuntimeFault(st.flow_id, st.step, None, reason))
            self.note("lost", detail=reason)
            self.go_idle()
            return None
        self.fi = fi  # the state already names this flow and version
        return fi, ask

    # -- starting flows
    def start_hit(self, hit: TriggerHit, pending: tuple[FlowIndex, ir.AskAction] | None) -> None:
        fi = self.program.current(hit.flow_id)
        if fi is None:  # cannot happen with a view built from one program
            raise _Fault(self.fault(f"no flow named `{hit.flow_id}`"))
        self.trace.append(_trigger_entry(fi, hit))
        st = self.st
        if pending is not None and hit.interrupting and hit.flow_id != st.flow_id:
            self.push(
                Frame(
                    flow_id=st.flow_id or "",
                    flow_version=st.flow_version or "",
                    step=st.step or "",
                    position=st.position,
                    reason="interrupt",
                    status="waiting",
                    tries=st.tries,
                )
            )
            self.note("interrupt", detail=f"by `{hit.flow_id}`")
        else:
            st.stack = []
        self.start(fi, None)

    def start(self, fi: FlowIndex, step: str | None) -> None:
        self.enter(fi)
        st = self.st
        st.tries = 0
        st.status = "running"
        st.position = None
        self.trace.append(_start_entry(fi, step))
        self.run(fi.start_of(step))

    def fallback(self) -> None:
        hit = self.program.triggers.fallback()
        if hit is None:
            self.note("nothing", detail="no flow matched and there is no fallback flow")
            return
        self.start_hit(hit, None)

    def navigate(self, payload: str, pending: tuple[FlowIndex, ir.AskAction] | None) -> bool:
        """A compiler-made `FLOW:flow[:step]` button. False when the flow is unknown."""
        _, _, rest = payload.partition(":")
        flow_id, _, step = rest.partition(":")
        st = self.st
        if step and pending is not None and pending[0].id == flow_id:
            fi = pending[0]
            if fi.has_step(step):
                # Same flow, same version: a jump inside the conversation (the stack stays).
                self.note("jump", detail=f"button to step `{step}`")
                st.tries = 0
                st.status = "running"
                self.run(fi.start_of(step))
                return True
        fi = self.program.current(flow_id)
        if fi is None:
            return False
        self.trace.append(TraceEntry("trigger", flow_id, step or None, f"button {payload!r}"))
        st.stack = []
        self.start(fi, step if step and fi.has_step(step) else None)
        return True

    def push(self, frame: Frame) -> None:
        if len(self.st.stack) >= MAX_STACK_DEPTH:
            raise _Fault(
                self.fault(f"more than {MAX_STACK_DEPTH} flows paused at once", self.st.position)
            )
        self.st.stack.append(frame)

    # -- answers
    def answer(self, fi: FlowIndex, ask: ir.AskAction, text: str | None, payload: str | None):
        st = self.st
        simple = (fi.tables or _tables(fi)).parsers.get(ask.id)
        try:
            if simple is not None:  # `judge`, for a question without choices
                parse = simple[0]
                value = parse(text) if text is not None else None
                index = None
                ok = value is not None
            else:
                verdict = judge(ask, text, payload)
                ok = verdict is not None
                if ok:
                    value, index = verdict
        except Exception as exc:  # e.g. a broken `expect pattern`
            raise _Fault(self.fault(f"cannot check the answer: {exc}", ask.id)) from None
        if ok:
            self.trace.append(_entry(TraceEntry, ("answer", fi.id, st.step, repr(value))))
            var = ask.var
            if var:
                st.variables[var] = value
                if self._ctx is not None:
                    self._ctx[var] = value
            st.tries = 0
            st.status = "running"
            st.position = None
            if index is not None:
                choice = ask.choices[index]
                if choice.target_step and choice.target_flow in (None, fi.id):
                    if not fi.has_step(choice.target_step):
                        raise _Fault(self.fault(f"no step `{choice.target_step}`", ask.id))
                    self.run(fi.start_of(choice.target_step))
                    return
                if choice.target_flow:
                    target = self.program.current(choice.target_flow)
                    if target is None:
                        raise _Fault(self.fault(f"no flow `{choice.target_flow}`", ask.id))
                    st.stack = []
                    self.start(target, choice.target_step)
                    return
            self.run(fi.after[ask.id])
            return
        st.tries += 1
        self.note("invalid", detail=f"try {st.tries} of {ask.max_tries}")
        if st.tries >= ask.max_tries:
            st.tries = 0
            st.status = "running"
            st.position = None
            self.note("gave_up", detail=ask.on_fail_step or "end")
            if ask.on_fail_step:
                if not fi.has_step(ask.on_fail_step):
                    raise _Fault(self.fault(f"no step `{ask.on_fail_step}`", ask.id))
                self.run(fi.start_of(ask.on_fail_step))
            else:
                self.run(None)
            return
        self.send_question(fi, ask, reask=True)

    def reask(self, pending: tuple[FlowIndex, ir.AskAction], kind: str, detail: str) -> None:
        """Ask the pending question again without counting a try."""
        fi, ask = pending
        self.note(kind, detail=detail)
        self.send_question(fi, ask, reask=False)

    def send_question(self, fi: FlowIndex, ask: ir.AskAction, *, reask: bool) -> None:
        question = _static_question(fi, ask, reask)
        if question is not None:
            self.outbox.append(question)
            return
        aid = ask.id
        texts = ask.reask if reask and ask.reask else ask.prompts

        def render(text: str) -> str:
            return self.render(text, aid)

        choices = [
            {"content_type": "text", "title": c.title, "payload": c.payload} for c in ask.choices
        ]
        extra = [_quick_reply(q, render) for q in ask.quick_replies]
        text = render(self.pick(texts))
        body = _question_body(ask, text, choices, extra)
        self.outbox.append(_out("message", body, None, fi.where[aid]))

    # -- running actions
    def run(self, aid: str | None) -> None:
        st = self.st
        fi = self.fi
        assert fi is not None
        tables = fi.tables or _tables(fi)
        nodes = tables.nodes
        trace = self.trace
        while True:
            while aid is None:
                # The flow ended: go back to the flow that called it, if any.
                trace.append(_end_entry(fi, st.step))
                if not st.stack or st.stack[-1].reason != "call":
                    self.go_idle()
                    return
                frame = st.stack.pop()
                caller = self.program.version(frame.flow_id, frame.flow_version)
                if caller is None or frame.position not in caller.after:
                    raise _Fault(
                        self.fault(f"cannot return to flow `{frame.flow_id}` (version missing)")
                    )
                self.enter(caller)
                fi = caller
                tables = fi.tables or _tables(fi)
                nodes = tables.nodes
                self.note("return", detail=f"after `{frame.position}`")
                aid = fi.after[frame.position]
            segment = tables.segments.get(aid)
            if segment is None:
                segment = tables.segments[aid] = _segment(fi, aid, self.renderer)
            if segment is not _NO_SEGMENT and self.budget >= segment.size and _SHORTCUTS:
                messages = self.play(segment)
                if messages is not None:
                    # What the actions below would do one by one, all at once.
                    self.budget -= segment.size
                    if fi is not self._sfi or segment.step != self._sstep:
                        self._sfi = fi
                        self._sstep = st.step = segment.step
                        trace.append(segment.entry)
                    if segment.steps:
                        trace.extend(segment.steps)
                        self._sstep = st.step = segment.last_step
                    self.outbox.extend(messages)
                    if segment.wait is not None:
                        st.position = segment.next
                        st.status = "waiting"
                        st.tries = 0
                        trace.append(segment.wait)
                        return
                    aid = segment.next
                    continue
            self.budget -= 1
            if self.budget < 0:
                raise _Fault(
                    self.fault(
                        "too many actions in one turn without waiting for the user "
                        "(a loop of goto or call?)",
                        aid,
                    )
                )
            action, kind, step, entry, after, wait = nodes[aid]
            if fi is not self._sfi or step != self._sstep:
                self._sfi = fi
                self._sstep = st.step = step
                trace.append(entry)
            if kind == "say":
                plan = fi.cache.get(aid)
                if plan.__class__ is Outbound:  # a message without templates, built once
                    self.outbox.append(plan)
                else:
                    self.say(fi, action)
            elif kind == "ask":
                st.position = aid
                st.status = "waiting"
                st.tries = 0
                self.send_question(fi, action, reask=False)
                trace.append(wait)
                return
            elif kind == "if":
                firsts, otherwise = fi.branches[aid]
                chosen = otherwise
                for index, branch in enumerate(action.branches):
                    if self.evaluate(branch.condition, aid):
                        chosen = firsts[index]
                        break
                aid = chosen
                continue
            elif kind == "goto":
                if not fi.has_step(action.step):
                    raise _Fault(self.fault(f"no step `{action.step}` to go to", aid))
                aid = fi.start_of(action.step)
                continue
            elif kind == "end":
                aid = None
                continue
            elif kind == "set":
                self.set_var(action.var, self._storable(self.evaluate(action.expr, aid), aid))
            elif kind == "call":
                callee = self.program.current(action.flow)
                if callee is None:
                    raise _Fault(self.fault(f"no flow named `{action.flow}` to call", aid))
                self.push(
                    Frame(
                        flow_id=fi.id,
                        flow_version=fi.version,
                        step=step,
                        position=aid,
                        reason="call",
                    )
                )
                self.enter(callee)
                fi = callee
                tables = fi.tables or _tables(fi)
                nodes = tables.nodes
                self.note("call", detail=f"`{callee.id}`")
                aid = fi.start_of(None)
                continue
            elif kind == "resume":
                if self.resume():
                    return
                aid = None
                continue
            elif kind == "hand_over":
                body: dict[str, Any] = {
                    "target_app_id": int(action.app_id)
                    if action.app_id.isdigit()
                    else action.app_id
                }
                if action.metadata:
                    body["metadata"] = self.render(action.metadata, aid)
                self.outbox.append(Outbound("pass_thread", body, source=fi.where[aid]))
                # The person now owns the thread: the flow (and any paused one) is over.
                self.note("hand_over", detail=str(body["target_app_id"]))
                st.handed_over = True
                self.go_idle()
                return
            elif kind == "take_back":
                body = {"metadata": self.render(action.metadata, aid)} if action.metadata else {}
                self.outbox.append(Outbound("take_thread", body, source=fi.where[aid]))
                st.handed_over = False
                self.note("take_back")
            elif kind == "template":
                self.use_template(fi, action, aid)
            else:  # media, carousel, typing, pause
                self.send_static(fi, action)
            aid = after

    def play(self, segment: _Segment) -> Sequence[Outbound] | None:
        """The messages of a segment, or None when one of its texts cannot be rendered (then
        the actions run one by one, and the failing one reports the fault as usual)."""
        if segment.static:
            return segment.items
        messages = []
        st = self.st
        try:
            for item in segment.items:
                if item.__class__ is not _Text:
                    messages.append(item)
                    continue
                text = self.renderer.render(item.text, st.variables if item.reads else self.ctx)
                messages.append(_out("message", {"text": text}, item.tag, item.where))
        except Exception:
            return None
        return messages

    def resume(self) -> bool:
        """Return to the flow an interrupting flow interrupted and ask its question again.
        False when nothing was interrupted (then `resume` acts like `end`)."""
        st = self.st
        index = next(
            (i for i in range(len(st.stack) - 1, -1, -1) if st.stack[i].reason == "interrupt"),
            None,
        )
        if index is None:
            self.note("resume", detail="nothing was interrupted: the flow ends")
            return False
        frame = st.stack[index]
        st.stack = st.stack[:index]
        fi = self.program.version(frame.flow_id, frame.flow_version)
        ask = fi.actions.get(frame.position or "") if fi is not None else None
        if fi is None or ask is None or ask.kind != "ask":
            raise _Fault(self.fault(f"cannot resume flow `{frame.flow_id}` (version missing)"))
        self.enter(fi)
        st.step = frame.step
        st.position = frame.position
        st.status = "waiting"
        st.tries = frame.tries
        self.note("resume", detail=str(frame.position))
        self.send_question(fi, ask, reask=False)
        return True

    @staticmethod
    def _is_storable(value: Any) -> bool:
        if value is None or isinstance(value, str | bool | int | float):
            return True
        if isinstance(value, list | tuple):
            return all(_Run._is_storable(v) for v in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) and _Run._is_storable(v) for k, v in value.items())
        return False

    def _storable(self, value: Any, aid: str) -> Any:
        # Variables are saved as JSON: anything else (a function, a Jinja object) is a fault
        # now rather than a crash in the store later.
        if not self._is_storable(value):
            raise _Fault(self.fault(f"the value {value!r} cannot be kept in a variable", aid))
        if isinstance(value, tuple):
            return list(value)
        return value

    # -- sending
    def say(
        self, fi: FlowIndex, action: ir.SayAction, ctx: Mapping[str, Any] | None = None
    ) -> None:
        """Send a text or button template. The parts without `{` are built once per action
        (its "plan"); only the parts that hold a template are rendered per turn."""
        aid = action.id
        if ctx is None:
            cache, key = fi.cache, aid
        else:  # a template's line: cached program-wide, by the action itself
            cache, key = self.program.cache, id(action)
        plan = cache.get(key)
        if plan is None:
            where = fi.where.get(aid) if ctx is None else self._where
            plan = cache[key] = self.say_plan(action, where, self.renderer)
        if plan.__class__ is Outbound:
            self.outbox.append(plan)
            return
        if plan.__class__ is _Text:
            texts, buttons, quick_replies, where = ((plan.text, plan.reads),), [], [], plan.where
        else:
            texts, buttons, quick_replies, where = plan
        text, reads = texts[0] if len(texts) == 1 else self.rng.choice(texts)
        if reads is not None:
            if ctx is None:
                # A text that reads only variables renders against them directly: building
                # the user/message/page namespaces is most of the cost of a short text.
                ctx = self.st.variables if reads else self.ctx
            try:
                text = self.renderer.render(text, ctx)
            except TemplateError as exc:
                raise _Fault(self.fault(exc.reason, aid, self._where)) from None
        if buttons is None or quick_replies is None:

            def render(text: str) -> str:
                return self.render(text, aid, ctx)

            buttons = [_button(b, render) for b in action.buttons]
            quick_replies = [_quick_reply(q, render) for q in action.quick_replies]
        if buttons or quick_replies:
            body = _text_message(text, buttons, quick_replies)
        else:
            body = {"text": text}
        self.outbox.append(_out("message", body, action.tag, where))

    @staticmethod
    def say_plan(action: ir.SayAction, where: str | None, renderer: Renderer) -> Any:
        """The prebuilt message of a `say` without templates, or what is needed to build it:
        `(texts, buttons, quick_replies, where)`, where each text comes with what it reads
        (None: no template; True: variables only; False: the namespaces too) and the buttons
        or quick replies are None when they hold templates."""
        buttons = quick_replies = None
        if not any(_has_template(b.model_dump()) for b in action.buttons):
            buttons = [_button(b, _literal) for b in action.buttons]
        if not any(_has_template(q.model_dump()) for q in action.quick_replies):
            quick_replies = [_quick_reply(q, _literal) for q in action.quick_replies]
        texts = action.texts
        static = buttons is not None and quick_replies is not None
        if static and len(texts) == 1 and "{" not in texts[0]:
            body = _text_message(texts[0], buttons or [], quick_replies or [])
            return _out("message", body, action.tag, where)
        marked = []
        for text in texts:
            reads = None
            if "{" in text:
                names = renderer.names(text)
                reads = names is not None and names.isdisjoint(_SPACES)
            marked.append((text, reads))
        if len(marked) == 1 and static and not buttons and not quick_replies:
            return _Text(texts[0], bool(marked[0][1]), action.tag, where)
        return (tuple(marked), buttons, quick_replies, where)

    def send_static(
        self, fi: FlowIndex | None, action: Any, ctx: Mapping[str, Any] | None = None
    ) -> None:
        """media, carousel, typing and pause: built once when they hold no template."""
        aid = action.id
        if ctx is None and fi is not None:
            cache, key, where = fi.cache, aid, fi.where.get(aid)
        else:  # a template's line: cached program-wide, by the action itself
            cache, key, where = self.program.cache, id(action), self._where
        cached = cache.get(key)
        if cached is not None and cached is not _DYNAMIC:
            self.outbox.extend(cached)
            return

        def render(text: str) -> str:
            return self.render(text, aid, ctx)

        items = _static_message(action, render, where)
        if items is None:
            raise _Fault(self.fault(f"unknown action kind {action.kind!r}", aid))
        if cached is None:
            cache[key] = _DYNAMIC if _has_template(action.model_dump()) else items
        self.outbox.extend(items)

    def use_template(self, fi: FlowIndex, action: ir.TemplateAction, aid: str) -> None:
        template = self.program.templates.get(action.template)
        if template is None:
            raise _Fault(self.fault(f"no template named `{action.template}`", aid))
        # Arguments are rendered in the flow's context; the template sees only its parameters
        # and the user/message/page namespaces, like a function sees only its arguments.
        ctx = self.ctx
        local: dict[str, Any] = {
            "user": ctx["user"],
            "message": ctx["message"],
            "page": ctx["page"],
        }
        for name, value in action.args.items():
            local[name] = self.render(value, aid)
        outer = self._where
        try:
            self.run_template(fi, template, template.actions, local, aid)
        finally:
            self._where = outer

    def run_template(
        self,
        fi: FlowIndex,
        template: ir.Template,
        actions: Sequence[Any],
        ctx: dict[str, Any],
        aid: str,
    ) -> None:
        for action in actions:
            self.budget -= 1
            if self.budget < 0:
                raise _Fault(self.fault("too many actions in one turn (template loop?)", aid))
            self._where = f"{action.source.file}:{action.source.line}"
            kind = action.kind
            if kind == "say":
                self.say(fi, action, ctx)
            elif kind in ("media", "carousel", "typing", "pause"):
                self.send_static(fi, action, ctx)
            elif kind == "set":
                ctx[action.var] = self._storable(self.evaluate(action.expr, aid, ctx), aid)
            elif kind == "if":
                body = action.else_actions or ()
                for branch in action.branches:
                    if self.evaluate(branch.condition, aid, ctx):
                        body = branch.actions
                        break
                self.run_template(fi, template, body, ctx, aid)
            elif kind == "template":
                inner = self.program.templates.get(action.template)
                if inner is None:
                    raise _Fault(self.fault(f"no template named `{action.template}`", aid))
                local = {k: ctx[k] for k in ("user", "message", "page")}
                for name, value in action.args.items():
                    local[name] = self.render(value, aid, ctx)
                self.run_template(fi, inner, inner.actions, local, aid)
            else:
                raise _Fault(
                    self.fault(
                        f"`{kind}` cannot be used inside template `{template.id}` "
                        "(templates only send messages)",
                        aid,
                    )
                )
