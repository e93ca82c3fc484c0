"""The conversation engine: one inbound event + the conversation state → the new state and what
to send. Pure: no I/O, no clock, no globals it writes to; the renderer, the user's profile and
the random source are passed in, and the input state is never modified.

`docs/runtime.md` explains every rule in plain words; the comments here say why the code is
shaped the way it is. A turn runs actions until the flow waits for an answer (`ask`) or ends,
bounded by `max_actions`."""

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
from runtime.validation import check_answer, find_choice

#: Sent when a fault happens and neither the flow nor the page has an `error message`.
DEFAULT_ERROR_MESSAGE = "Sorry, something went wrong on our side. Please try again."
#: How many flows may be paused on the stack (calls and interrupts) before it is a fault.
MAX_STACK_DEPTH = 32
#: The standard profile fields: a flow may always read them (empty when unknown).
PROFILE_FIELDS = ("first_name", "last_name", "profile_pic", "locale", "timezone", "gender")

_RNG = random.Random()
#: Builds a TraceEntry without the Python-level NamedTuple constructor (it runs every turn).
_entry = tuple.__new__
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
    run = _Run(program, state, event, renderer or shared_renderer(), profile, page, rng)
    run.budget = max_actions
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
    return Turn(st, run.outbox, run.faults, run.trace)


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
    # Cheaper than dataclasses.replace; variables and the stack get their own containers, and
    # Frame objects are never mutated (they are replaced), so sharing them is safe.
    new = object.__new__(ConversationState)
    new.__dict__.update(state.__dict__)
    new.variables = dict(state.variables)
    new.stack = list(state.stack)
    return new


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
    # Outbound is a frozen dataclass; filling its __dict__ directly is half the cost of
    # __init__, and this runs for every message of every turn.
    out = object.__new__(Outbound)
    out.__dict__.update(kind=kind, body=body, seconds=0.0, tag=tag, source=source)
    return out


# ------------------------------------------------------------------------------------ the run


class _Run:
    """The working area of one turn: a private copy of the state, the outbox and the trace."""

    # Rarely changed fields are class-level defaults: a turn only pays for what it uses.
    fi: FlowIndex | None = None
    budget = 200
    _ctx: dict[str, Any] | None = None
    _step: tuple[FlowIndex, str] | None = None  # (flow, step) last traced
    _where: str | None = None  # `file:line` of the template action being sent

    def __init__(
        self,
        program: ProgramView,
        state: ConversationState,
        event: Inbound,
        renderer: Renderer,
        profile: Mapping[str, Any] | None,
        page: Mapping[str, Any] | None,
        rng: random.Random | None,
    ) -> None:
        self.program = program
        self.st = _clone(state)
        self.event = event
        self.renderer = renderer
        self.profile = profile
        self.page = page
        self.rng = rng or _RNG
        self.outbox: list[Outbound] = []
        self.faults: list[RuntimeFault] = []
        self.trace: list[TraceEntry] = []

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
            st, event, profile = self.st, self.event, self.profile
            if profile:
                user = {**_BLANK_USER, **profile, "id": st.psid}
                if None in user.values():
                    user = {k: "" if v is None else v for k, v in user.items()}
            else:
                user = {**_BLANK_USER, "id": st.psid}
            ctx = self._ctx = dict(st.variables)
            ctx["user"] = user
            ctx["message"] = {
                "text": event.text,
                "payload": event.payload,
                "ref": event.ref,
                "kind": event.kind,
                "attachments": [dict(a) for a in event.attachments],
            }
            ctx["page"] = {"id": st.page_id, **self.page} if self.page else {"id": st.page_id}
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
        program = self.program
        kind = event.kind
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
            if text and triggers.has_interrupting_text and find_choice(ask, text, None) is None:
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
        self.trace.append(_entry(TraceEntry, ("trigger", hit.flow_id, None, hit.kind)))
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
        self.trace.append(_entry(TraceEntry, ("start", fi.id, step or fi.flow.entry, fi.version)))
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
        try:
            verdict = check_answer(ask, text, payload)
        except Exception as exc:  # e.g. a broken `expect pattern`
            raise _Fault(self.fault(f"cannot check the answer: {exc}", ask.id)) from None
        if verdict.ok:
            self.trace.append(_entry(TraceEntry, ("answer", fi.id, st.step, repr(verdict.value))))
            if ask.var:
                self.set_var(ask.var, verdict.value)
            st.tries = 0
            st.status = "running"
            st.position = None
            if verdict.choice is not None:
                choice = ask.choices[verdict.choice]
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
        texts = ask.reask if reask and ask.reask else ask.prompts
        key = (ask.id, texts is ask.reask)
        cached = fi.cache.get(key)
        if cached is not None and cached is not _DYNAMIC:
            self.outbox.append(cached)
            return
        aid = ask.id

        def render(text: str) -> str:
            return self.render(text, aid)

        choices = [
            {"content_type": "text", "title": c.title, "payload": c.payload} for c in ask.choices
        ]
        extra = [_quick_reply(q, render) for q in ask.quick_replies]
        text = render(self.pick(texts))
        if ask.choice_style == "buttons" and choices:
            buttons = [
                {"type": "postback", "title": c.title, "payload": c.payload} for c in ask.choices
            ]
            body = _text_message(text, buttons, extra)
        else:
            body = _text_message(text, [], choices + extra)
        out = _out("message", body, None, fi.where[aid])
        if cached is None:
            static = len(texts) == 1 and not _has_template(
                ask.model_dump(include={"prompts", "reask", "quick_replies"})
            )
            fi.cache[key] = out if static else _DYNAMIC
        self.outbox.append(out)

    # -- running actions
    def run(self, aid: str | None) -> None:
        st = self.st
        fi = self.fi
        assert fi is not None
        while True:
            while aid is None:
                # The flow ended: go back to the flow that called it, if any.
                if not st.stack or st.stack[-1].reason != "call":
                    self.note("end")
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
                self.note("return", detail=f"after `{frame.position}`")
                aid = fi.after[frame.position]
            self.budget -= 1
            if self.budget < 0:
                raise _Fault(
                    self.fault(
                        "too many actions in one turn without waiting for the user "
                        "(a loop of goto or call?)",
                        aid,
                    )
                )
            action = fi.actions[aid]
            step = fi.step_of[aid]
            last = self._step
            if last is None or last[1] != step or last[0] is not fi:
                self._step = (fi, step)
                st.step = step
                self.trace.append(_entry(TraceEntry, ("step", fi.id, step, "")))
            kind = action.kind
            if kind == "say":
                self.say(fi, action)
            elif kind == "ask":
                st.position = aid
                st.status = "waiting"
                st.tries = 0
                self.send_question(fi, action, reask=False)
                self.trace.append(_entry(TraceEntry, ("wait", fi.id, step, aid)))
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
            aid = fi.after[aid]

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
            plan = cache[key] = self._say_plan(action, where)
        if plan.__class__ is Outbound:
            self.outbox.append(plan)
            return
        texts, buttons, quick_replies, where = plan
        text = texts[0] if len(texts) == 1 else self.rng.choice(texts)
        if "{" in text:
            text = self.render(text, aid, ctx)
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
    def _say_plan(action: ir.SayAction, where: str | None) -> Any:
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
        return (texts, buttons, quick_replies, where)

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

        kind = action.kind
        items: list[Outbound]
        if kind == "media":
            body = {
                "attachment": {
                    "type": action.media_type,
                    "payload": {"url": render(action.url), "is_reusable": True},
                }
            }
            items = [Outbound("message", body, source=where)]
        elif kind == "carousel":
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
            items = [Outbound("message", body, tag=action.tag, source=where)]
        elif kind == "typing":
            items = [Outbound("sender_action", {"sender_action": "typing_on"}, source=where)]
            if action.seconds:
                items.append(Outbound("pause", seconds=float(action.seconds), source=where))
        elif kind == "pause":
            items = [Outbound("pause", seconds=float(action.seconds), source=where)]
        else:
            raise _Fault(self.fault(f"unknown action kind {kind!r}", aid))
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
