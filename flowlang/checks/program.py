"""The symbol table of a whole program and the walkers every check family shares."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowlang import ast

#: Namespaces the runtime provides; they are read, never set.
NAMESPACES = frozenset({"user", "message", "page"})

#: What a template may contain: lines that only send messages.
MESSAGE_ACTIONS = (
    ast.Say, ast.Media, ast.Carousel, ast.Typing, ast.Pause, ast.UseTemplate, ast.ListTemplate
)  # fmt: skip


@dataclass
class Program:
    """Every flow, template and page of a program, with names resolved to their first
    definition (later duplicates are reported by the name checks)."""

    modules: Sequence[ast.Module]
    flows: list[ast.Flow] = field(default_factory=list)
    templates: list[ast.Template] = field(default_factory=list)
    pages: list[ast.Page] = field(default_factory=list)
    flow_by_name: dict[str, ast.Flow] = field(default_factory=dict)
    template_by_name: dict[str, ast.Template] = field(default_factory=dict)
    #: Conversation variables set somewhere (`set x …` or `ask … as x`).
    set_vars: frozenset[str] = frozenset()

    @classmethod
    def of(cls, modules: Sequence[ast.Module]) -> Program:
        """Collect the symbols of `modules` (in the order the files were given)."""
        program = cls(modules)
        for module in modules:
            program.flows.extend(module.flows)
            program.templates.extend(module.templates)
            program.pages.extend(module.pages)
        for flow in program.flows:
            program.flow_by_name.setdefault(flow.name.text, flow)
        for template in program.templates:
            program.template_by_name.setdefault(template.name.text, template)
        set_vars: set[str] = set()
        for flow in program.flows:
            set_vars.update(variables_set(flow))
        for template in program.templates:
            set_vars.update(_vars_in(walk(template.body)))
        program.set_vars = frozenset(set_vars)
        return program


def steps_by_name(flow: ast.Flow) -> dict[str, int]:
    """The index of each step name in `flow` (the first one, when a name is repeated)."""
    index: dict[str, int] = {}
    for i, step in enumerate(flow.steps):
        index.setdefault(step.name.text, i)
    return index


def flow_actions(flow: ast.Flow) -> Iterator[ast.Action]:
    """Every action of every step of `flow`, nested ones included, in source order."""
    for step in flow.steps:
        yield from walk(step.body)


def walk(body: Iterable[ast.Action]) -> Iterator[ast.Action]:
    """Every action of `body`, then (depth first) the actions inside `if` blocks."""
    stack: list[Iterator[ast.Action]] = [iter(body)]
    while stack:
        action = next(stack[-1], None)
        if action is None:
            stack.pop()
            continue
        yield action
        if isinstance(action, ast.If):
            inner: list[ast.Action] = [a for b in action.branches for a in b.body]
            inner += action.else_body or ()
            stack.append(iter(inner))


def variables_set(flow: ast.Flow) -> set[str]:
    """The conversation variables a flow sets itself."""
    return _vars_in(flow_actions(flow))


def _vars_in(actions: Iterable[ast.Action]) -> set[str]:
    found: set[str] = set()
    for action in actions:
        var = action.var if isinstance(action, (ast.Set, ast.Ask)) else None
        if var is not None:
            found.add(var.text)
    return found


def buttons_of(action: ast.Action) -> tuple[ast.Button, ...]:
    """The buttons an action shows (a carousel's are those of its cards)."""
    if isinstance(action, (ast.Say, ast.Ask)):
        return action.buttons
    if isinstance(action, ast.Carousel):
        return tuple(b for card in action.cards for b in card.buttons)
    return ()


def quick_replies_of(action: ast.Action) -> tuple[ast.QuickReply, ...]:
    """The quick replies an action shows (an ask's choices are not included)."""
    if isinstance(action, (ast.Say, ast.Ask, ast.Carousel)):
        return action.quick_replies
    return ()


def targets_of(action: ast.Action) -> Iterator[ast.Target]:
    """Every target of an action: buttons, quick replies, choices, retry limits, cards."""
    for button in buttons_of(action):
        yield button.target
    for reply in quick_replies_of(action):
        if reply.target is not None:
            yield reply.target
    if isinstance(action, ast.Ask):
        for choice in action.choices:
            if choice.target is not None:
                yield choice.target
        for retry in action.retry_limits:
            if retry.target is not None:
                yield retry.target
    if isinstance(action, ast.Carousel):
        for card in action.cards:
            if card.default_action is not None:
                yield card.default_action


def templated_texts(action: ast.Action) -> Iterator[ast.Text]:
    """The texts of one action (not of nested blocks) that are rendered as Jinja templates:
    messages, prompts, re-asks, card texts, URLs, template arguments and notes."""
    if isinstance(action, (ast.Say, ast.Ask)):
        yield from action.texts
    if isinstance(action, ast.Ask):
        for texts in action.reasks:
            yield from texts
    if isinstance(action, ast.Media):
        yield action.url
    if isinstance(action, ast.Carousel):
        for card in action.cards:
            yield card.title
            if card.subtitle is not None:
                yield card.subtitle
            if card.image is not None:
                yield card.image
    for target in targets_of(action):
        if target.kind == "url" and isinstance(target.value, ast.Text):
            yield target.value
    for reply in quick_replies_of(action):
        if reply.image is not None:
            yield reply.image
    if isinstance(action, ast.UseTemplate):
        for arg in action.args:
            yield arg.value
    if isinstance(action, (ast.HandOver, ast.TakeBack)) and action.note is not None:
        yield action.note


def target_name(target: ast.Target) -> ast.Name | None:
    """The step or flow name of a `goto`/`starts` target (None for payloads, URLs, phones)."""
    if target.kind in ("step", "flow") and isinstance(target.value, ast.Name):
        return target.value
    return None


def menu_items(items: Iterable[ast.MenuItem]) -> Iterator[ast.MenuItem]:
    """Every item of a persistent menu, items of (retired) submenus included."""
    for item in items:
        yield item
        if item.children:
            yield from menu_items(item.children)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A `help` text with the closest known name, if one is close enough."""
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"did you mean `{close[0]}`?" if close else None


def strongly_connected(
    nodes: Iterable[Hashable], successors: Callable[[Any], Iterable[Any]]
) -> list[list[Any]]:
    """Tarjan's strongly connected components, without recursion (flows can be long).

    Components come out in reverse topological order: a component comes after every
    component it can reach (so callees come before their callers)."""
    index: dict[Any, int] = {}
    low: dict[Any, int] = {}
    on_stack: set[Any] = set()
    stack: list[Any] = []
    components: list[list[Any]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[Any, Iterator[Any]]] = [(root, iter(successors(root)))]
        while work:
            node, pending = work[-1]
            descended = False
            for succ in pending:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(successors(succ))))
                    descended = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components
