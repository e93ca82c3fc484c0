"""Building: a checked syntax tree becomes the IR (`flowlang.ir.FlowProgram`).

Runs only when the checks found no errors, so references here are known to resolve."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from flowlang import ast, ir
from flowlang.source import SourceFile, Span


class _Builder:
    def __init__(self, sources: dict[str, SourceFile]) -> None:
        self.sources = sources
        self.flow: str | None = None

    def ref(self, span: Span) -> ir.SourceRef:
        pos = self.sources[span.file].position(span.start)
        return ir.SourceRef(file=span.file, line=pos.line, column=pos.column)

    # -- targets
    def button(self, button: ast.Button) -> ir.Button:
        return self.target_button(button.title.value, button.target)

    def target_button(self, title: str, target: ast.Target) -> ir.Button:
        kind, value = target.kind, target.value
        if kind == "url":
            return ir.Button(
                type="web_url",
                title=title,
                url=value.text if isinstance(value, ast.Name) else value.value,
                webview_height_ratio=target.webview,  # type: ignore[arg-type]
            )
        if kind == "phone":
            assert isinstance(value, ast.Text)
            return ir.Button(type="phone_number", title=title, payload=value.value)
        payload, flow, step = self.postback(target)
        return ir.Button(
            type="postback", title=title, payload=payload, target_flow=flow, target_step=step
        )

    def postback(self, target: ast.Target) -> tuple[str, str | None, str | None]:
        """Payload, target flow and target step of a step/flow/payload target."""
        value = target.value
        if target.kind == "step":
            assert self.flow is not None and isinstance(value, ast.Name)
            return ir.step_payload(self.flow, value.text), self.flow, value.text
        if target.kind == "flow":
            assert isinstance(value, ast.Name)
            return ir.flow_payload(value.text), value.text, None
        assert isinstance(value, ast.Text)
        return value.value, None, None

    def quick_reply(self, qr: ast.QuickReply) -> ir.QuickReply:
        if qr.kind == "email":
            return ir.QuickReply(content_type="user_email")
        if qr.kind == "phone":
            return ir.QuickReply(content_type="user_phone_number")
        assert qr.title is not None
        payload, flow, step = (qr.title.value, None, None)
        if qr.target is not None:
            payload, flow, step = self.postback(qr.target)
        return ir.QuickReply(
            content_type="text",
            title=qr.title.value,
            payload=payload,
            image_url=qr.image.value if qr.image else None,
            target_flow=flow,
            target_step=step,
        )

    # -- actions
    def actions(self, body: Sequence[ast.Action], prefix: str) -> tuple[Any, ...]:
        out = []
        for index, action in enumerate(body):
            built = self.action(action, f"{prefix}.{index}")
            if built is not None:
                out.append(built)
        return tuple(out)

    def action(self, node: ast.Action, aid: str) -> Any:
        common: dict[str, Any] = {"id": aid, "source": self.ref(node.span)}
        match node:
            case ast.Say():
                return ir.SayAction(
                    **common,
                    texts=tuple(t.value for t in node.texts),
                    buttons=tuple(self.button(b) for b in node.buttons),
                    quick_replies=tuple(self.quick_reply(q) for q in node.quick_replies),
                    tag=node.tags[0].name.text if node.tags else None,
                )
            case ast.Media():
                return ir.MediaAction(**common, media_type=node.kind, url=node.url.value)
            case ast.Carousel():
                return ir.CarouselAction(
                    **common,
                    cards=tuple(self.card(c) for c in node.cards),
                    quick_replies=tuple(self.quick_reply(q) for q in node.quick_replies),
                    tag=node.tags[0].name.text if node.tags else None,
                )
            case ast.Typing():
                return ir.TypingAction(
                    **common, seconds=node.seconds.value if node.seconds else None
                )
            case ast.Pause():
                return ir.PauseAction(**common, seconds=node.seconds.value)
            case ast.Set():
                return ir.SetAction(**common, var=node.var.text, expr=node.expr.source)
            case ast.Ask():
                return self.ask(node, common)
            case ast.If():
                return ir.IfAction(
                    **common,
                    branches=tuple(
                        ir.Branch(
                            condition=b.condition.source,
                            actions=self.actions(b.body, f"{aid}.{i}"),
                            source=self.ref(b.span),
                        )
                        for i, b in enumerate(node.branches)
                    ),
                    else_actions=(
                        self.actions(node.else_body, f"{aid}.else")
                        if node.else_body is not None
                        else None
                    ),
                )
            case ast.Goto():
                return ir.GotoAction(**common, step=node.step.text)
            case ast.End():
                return ir.EndAction(**common)
            case ast.Call():
                return ir.CallAction(**common, flow=node.flow.text)
            case ast.Resume():
                return ir.ResumeAction(**common)
            case ast.HandOver():
                app = node.app_id.raw if node.app_id else ir.PAGE_INBOX_APP_ID
                return ir.HandOverAction(
                    **common, app_id=app, metadata=node.note.value if node.note else None
                )
            case ast.TakeBack():
                return ir.TakeBackAction(**common, metadata=node.note.value if node.note else None)
            case ast.UseTemplate():
                return ir.TemplateAction(
                    **common,
                    template=node.name.text,
                    args={a.name.text: a.value.value for a in node.args},
                )
        return None  # ListTemplate: always an error, never built

    def card(self, card: ast.Card) -> ir.Card:
        default = None
        if card.default_action is not None:
            value = card.default_action.value
            assert isinstance(value, ast.Text)
            default = ir.DefaultAction(
                url=value.value,
                webview_height_ratio=card.default_action.webview,  # type: ignore[arg-type]
            )
        return ir.Card(
            title=card.title.value,
            subtitle=card.subtitle.value if card.subtitle else None,
            image_url=card.image.value if card.image else None,
            default_action=default,
            buttons=tuple(self.button(b) for b in card.buttons),
        )

    def ask(self, node: ast.Ask, common: dict[str, Any]) -> ir.AskAction:
        assert self.flow is not None
        offered = [(c.title, c.target) for c in node.choices]
        offered += [
            (b.title, b.target)
            for b in node.buttons
            if b.target.kind in ("step", "flow", "payload")
        ]
        choices = []
        for index, (title, target) in enumerate(offered):
            payload, flow, step = ir.answer_payload(self.flow, common["id"], index), None, None
            if target is not None and target.kind in ("step", "flow"):
                _, flow, step = self.postback(target)
            elif target is not None:
                assert isinstance(target.value, ast.Text)
                payload = target.value.value
            choices.append(
                ir.Choice(title=title.value, payload=payload, target_flow=flow, target_step=step)
            )
        expect = node.expects[0] if node.expects else None
        kind = expect.kind if expect else ("choice" if choices else "text")
        retry = node.retry_limits[0] if node.retry_limits else None
        on_fail = None
        if retry is not None and retry.target is not None:
            assert isinstance(retry.target.value, ast.Name)
            on_fail = retry.target.value.text
        return ir.AskAction(
            **common,
            prompts=tuple(t.value for t in node.texts),
            var=node.var.text if node.var else None,
            expect=kind,
            pattern=expect.pattern.value if expect and expect.pattern else None,
            choices=tuple(choices),
            choice_style="buttons" if node.buttons else "quick_replies",
            quick_replies=tuple(self.quick_reply(q) for q in node.quick_replies),
            reask=tuple(t.value for t in node.reasks[0]) if node.reasks else (),
            max_tries=int(retry.count.value) if retry else 3,
            on_fail_step=on_fail,
        )

    # -- top level
    def flow_ir(self, flow: ast.Flow) -> ir.Flow:
        self.flow = flow.name.text
        steps: dict[str, ir.Step] = {}
        for index, step in enumerate(flow.steps):
            following = flow.steps[index + 1].name.text if index + 1 < len(flow.steps) else None
            steps[step.name.text] = ir.Step(
                id=step.name.text,
                actions=self.actions(step.body, step.name.text),
                next=following,
                source=self.ref(step.span),
            )
        fields: dict[str, Any] = {
            "id": flow.name.text,
            "title": flow.title.value
            if flow.title
            else flow.name.text.replace("_", " ").capitalize(),
            "priority": int(flow.priority.value) if flow.priority else 0,
            "active": not flow.inactive,
            "triggers": tuple(
                ir.Trigger(
                    kind=t.kind,
                    values=tuple(v.value for v in t.values),
                    interrupting=t.interrupting,
                    source=self.ref(t.span),
                )
                for t in flow.triggers
            ),
            "entry": flow.steps[0].name.text,
            "steps": steps,
            "error_message": flow.error_message.value if flow.error_message else None,
            "source": self.ref(flow.span),
        }
        fields["content_hash"] = content_hash(fields)
        self.flow = None
        return ir.Flow(**fields)

    def template_ir(self, template: ast.Template) -> ir.Template:
        return ir.Template(
            id=template.name.text,
            params=tuple(p.text for p in template.params),
            actions=self.actions(template.body, template.name.text),
            source=self.ref(template.span),
        )

    def page_ir(self, page: ast.Page) -> ir.PageConfig:
        def locale(name: ast.Name | None) -> str:
            return name.text if name else "default"

        return ir.PageConfig(
            greeting=tuple(
                ir.Greeting(locale=locale(g.locale), text=g.text.value) for g in page.greetings
            ),
            get_started_payload=page.get_started.value if page.get_started else None,
            persistent_menu=tuple(
                ir.Menu(
                    locale=locale(m.locale),
                    composer_input_disabled=m.composer_disabled,
                    call_to_actions=tuple(
                        self.target_button(i.title.value, i.target)
                        for i in m.items
                        if i.target is not None
                    ),
                )
                for m in page.menus
            ),
            ice_breakers=tuple(
                ir.IceBreakers(
                    locale=locale(ib.locale),
                    call_to_actions=tuple(
                        ir.IceBreaker(question=q.question.value, payload=self.postback(q.target)[0])
                        for q in ib.questions
                    ),
                )
                for ib in page.ice_breakers
            ),
            whitelisted_domains=tuple(d.value for d in page.domains),
            error_message=page.error_message.value if page.error_message else None,
            source=self.ref(page.span),
        )


def _without_source(obj: dict[str, Any]) -> dict[str, Any]:
    obj.pop("source", None)
    return obj


def _strip_sources(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_sources(v) for k, v in value.items() if k != "source"}
    if isinstance(value, (list, tuple)):
        return [_strip_sources(v) for v in value]
    if isinstance(value, ir.BaseModel):
        # pydantic writes the JSON natively and json's C decoder rebuilds it; the hook drops
        # sources while decoding, so no Python walk over every value is needed.
        return json.loads(value.model_dump_json(), object_hook=_without_source)
    return value


def content_hash(value: Any) -> str:
    """A SHA-256 of the meaning of `value`: source positions excluded, so moving lines or
    editing comments does not make a new version."""
    canonical = json.dumps(_strip_sources(value), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def build(modules: Sequence[ast.Module], sources: dict[str, SourceFile]) -> ir.FlowProgram:
    """Build the IR of a checked program (no errors may remain)."""
    builder = _Builder(sources)
    flows = {f.name.text: builder.flow_ir(f) for m in modules for f in m.flows}
    templates = {t.name.text: builder.template_ir(t) for m in modules for t in m.templates}
    pages = [p for m in modules for p in m.pages]
    page = builder.page_ir(pages[0]) if pages else None
    parts = {
        "flows": {k: f.content_hash for k, f in sorted(flows.items())},
        "templates": {k: t for k, t in sorted(templates.items())},
        "page": page,
    }
    return ir.FlowProgram(
        content_hash=content_hash(parts), flows=flows, templates=templates, page=page
    )
