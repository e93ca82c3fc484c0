"""Variables possibly read before they are set (FL202): a definite-assignment analysis over
the steps of each flow.

Only variables the flow sets itself are followed; one set somewhere else (another flow, an
earlier conversation) may well be there already. Sets of variables are bit masks, and each
step is walked again only when what is certainly set at its start shrinks, so a flow is
walked a small number of times whatever its length."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from flowlang import ast, codes
from flowlang.checks.program import (
    Program,
    steps_by_name,
    strongly_connected,
    target_name,
    targets_of,
    templated_texts,
    variables_set,
    walk,
)
from flowlang.checks.texts import (
    locate_in_expression,
    locate_in_text,
    parse_expression,
    parse_text,
)
from flowlang.diagnostics import DiagnosticSink, Label
from flowlang.source import Span


def check_reads(program: Program, sink: DiagnosticSink) -> None:
    """Warn where a flow may read one of its own variables before setting it."""
    sets = _sets_with_callees(program)
    for flow in program.flows:
        _FlowReads(flow, sets, sink).run()


def _sets_with_callees(program: Program) -> dict[str, frozenset[str]]:
    """The variables each flow sets, itself or through the flows it calls."""
    own = {name: variables_set(flow) for name, flow in program.flow_by_name.items()}
    callees = {
        name: {
            a.flow.text for a in _flow_walk(flow) if isinstance(a, ast.Call) and a.flow.text in own
        }
        for name, flow in program.flow_by_name.items()
    }
    result: dict[str, frozenset[str]] = {}
    for component in strongly_connected(own, lambda n: callees[n]):
        found: set[str] = set()
        for name in component:
            found |= own[name]
            found.update(v for c in callees[name] if c in result for v in result[c])
        for name in component:
            result[name] = frozenset(found)
    return result


def _flow_walk(flow: ast.Flow) -> Iterable[ast.Action]:
    for step in flow.steps:
        yield from walk(step.body)


class _FlowReads:
    def __init__(
        self,
        flow: ast.Flow,
        sets: dict[str, frozenset[str]],
        sink: DiagnosticSink,
    ) -> None:
        self.flow = flow
        self.sets = sets
        self.sink = sink
        self.index = steps_by_name(flow)
        self.first_set: dict[str, ast.Name] = {}
        for action in _flow_walk(flow):
            var = action.var if isinstance(action, (ast.Set, ast.Ask)) else None
            if var is not None:
                self.first_set.setdefault(var.text, var)
        self.bit = {name: 1 << i for i, name in enumerate(self.first_set)}
        count = len(flow.steps)
        self.entry_state = [0] * count
        self.seen = [False] * count
        self.queued = [False] * count
        # Steps waiting to be walked, earliest first: most flows go forward, so one pass in
        # source order settles everything but loops.
        self.queue: list[int] = []
        self.walks = 0
        self.reporting = False

    def run(self) -> None:
        if not self.bit or not self.flow.steps:
            return
        self.seen[0] = self.queued[0] = True
        self.queue.append(0)
        while self.queue:
            i = heapq.heappop(self.queue)
            self.walks += 1
            self.queued[i] = False
            self.step(i)
        # What is certainly set no longer changes: walk each step once more, reporting.
        self.reporting = True
        for i, seen in enumerate(self.seen):
            if seen:
                self.step(i)

    def flow_to(self, target: int, state: int) -> None:
        if self.reporting:
            return
        new = self.entry_state[target] & state if self.seen[target] else state
        if self.seen[target] and new == self.entry_state[target]:
            return
        self.seen[target] = True
        self.entry_state[target] = new
        if not self.queued[target]:
            self.queued[target] = True
            heapq.heappush(self.queue, target)

    def step(self, i: int) -> None:
        finishes, state = self.block(self.flow.steps[i].body, self.entry_state[i])
        if finishes and i + 1 < len(self.flow.steps):
            self.flow_to(i + 1, state)

    def block(self, body: Iterable[ast.Action], state: int) -> tuple[bool, int]:
        for action in body:
            finishes, state = self.action(action, state)
            if not finishes:
                return False, state
        return True, state

    def action(self, action: ast.Action, state: int) -> tuple[bool, int]:
        if self.reporting:
            for text in templated_texts(action):
                self.read_text(text, state)
        match action:
            case ast.Set():
                self.read_expression(action.expr, state)
                return True, state | self.bit[action.var.text]
            case ast.If():
                ends: list[int] = []
                for branch in action.branches:
                    self.read_expression(branch.condition, state)
                    finishes, after = self.block(branch.body, state)
                    if finishes:
                        ends.append(after)
                if action.else_body is None:
                    ends.append(state)
                else:
                    finishes, after = self.block(action.else_body, state)
                    if finishes:
                        ends.append(after)
                if not ends:
                    return False, state
                joined = ends[0]
                for after in ends[1:]:
                    joined &= after
                return True, joined
            case ast.Goto():
                self.go(action.step, state)
                return False, state
            case ast.End() | ast.Resume():
                return False, state
            case ast.Call():
                for var in self.sets.get(action.flow.text, ()):
                    state |= self.bit.get(var, 0)
                return True, state
            case ast.Ask():
                answered = state | (self.bit[action.var.text] if action.var else 0)
                for choice in action.choices:
                    if choice.target is not None:
                        self.go(target_name(choice.target), answered)
                for button in action.buttons:
                    self.go(target_name(button.target), answered)
                for retry in action.retry_limits:
                    if retry.target is not None:
                        self.go(target_name(retry.target), state)
                return True, answered
        for target in targets_of(action):
            self.go(target_name(target), state)
        return True, state

    def go(self, name: ast.Name | None, state: int) -> None:
        if name is None:
            return
        target = self.index.get(name.text)
        if target is not None:
            self.flow_to(target, state)

    # -- reads
    def read_text(self, text: ast.Text, state: int) -> None:
        parsed = parse_text(text.value)
        for name in sorted(parsed.reads - parsed.guarded):
            if self.unset(name, state):
                self.report(name, locate_in_text(text, name))

    def read_expression(self, expr: ast.Expr, state: int) -> None:
        if not self.reporting:
            return
        parsed = parse_expression(expr.source)
        for name in sorted(parsed.reads - parsed.guarded):
            if self.unset(name, state):
                self.report(name, locate_in_expression(expr, name))

    def unset(self, name: str, state: int) -> bool:
        bit = self.bit.get(name)
        return bit is not None and not state & bit

    def report(self, name: str, span: Span) -> None:
        self.sink.report(
            codes.READ_BEFORE_SET,
            span,
            name=name,
            label="may not be set yet",
            secondary=(Label(self.first_set[name].span, f"`{name}` is set here"),),
            help=f"make sure every way to this line goes through a line that sets `{name}`, "
            f'or write `{name} | default("")` where a missing value is fine',
        )
