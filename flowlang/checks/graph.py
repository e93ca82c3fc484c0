"""Flow graph checks: unreachable steps and lines, loops that never wait for the user, flows
that call themselves, and flows that nothing starts (FL201, FL203, FL205–FL207).

A step falls through to the next one when its lines can finish; `goto`, `end` and `resume`
leave it. Every check here is one pass over the steps plus linear graph searches."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from flowlang import ast, codes
from flowlang.checks.program import (
    Program,
    flow_actions,
    menu_items,
    steps_by_name,
    strongly_connected,
    target_name,
    targets_of,
    walk,
)
from flowlang.diagnostics import DiagnosticSink, Label
from flowlang.source import Span


def check_graph(program: Program, sink: DiagnosticSink) -> None:
    """Report problems in the shape of each flow and of the calls between flows."""
    calls = {name: _calls(flow) for name, flow in program.flow_by_name.items()}
    known = program.flow_by_name
    components = strongly_connected(
        known, lambda name: [callee for callee, _ in calls[name] if callee in known]
    )
    in_cycle: dict[str, set[str]] = {}
    order = {flow.name.text: i for i, flow in reversed(list(enumerate(program.flows)))}
    for component in components:
        first = component[0]
        if len(component) > 1 or any(c == first for c, _ in calls[first]):
            members = set(component)
            for name in component:
                in_cycle[name] = members
            _report_call_cycle(min(component, key=order.__getitem__), members, calls, sink)
    # Callees are analysed before their callers, so a call knows whether it may return
    # without having waited for the user.
    returns_early: dict[str, bool] = {}
    for component in components:
        for name in component:
            flow = known[name]
            graph = _FlowGraph(flow, returns_early, in_cycle.get(name, set()), sink)
            returns_early[name] = graph.run()
    for flow in program.flows:
        if known[flow.name.text] is not flow:  # a duplicate (FL101): still check its steps
            _FlowGraph(flow, returns_early, set(), sink).run()
    _check_never_started(program, sink)


def _calls(flow: ast.Flow) -> list[tuple[str, ast.Name]]:
    return [(a.flow.text, a.flow) for a in flow_actions(flow) if isinstance(a, ast.Call)]


def _report_call_cycle(
    start: str,
    members: set[str],
    calls: dict[str, list[tuple[str, ast.Name]]],
    sink: DiagnosticSink,
) -> None:
    # Shortest way round the cycle from `start`, following calls inside the component.
    came_from: dict[str, tuple[str, ast.Name]] = {}
    queue = deque([start])
    closing: ast.Name | None = None
    last = start
    while queue and closing is None:
        name = queue.popleft()
        for callee, site in calls[name]:
            if callee == start:
                closing, last = site, name
                break
            if callee in members and callee not in came_from:
                came_from[callee] = (name, site)
                queue.append(callee)
    assert closing is not None  # `start` is on a cycle
    hops: list[tuple[str, ast.Name]] = [(last, closing)]
    while last != start:
        last, site = came_from[last]
        hops.append((last, site))
    hops.reverse()
    first_site = hops[0][1]
    path = " → ".join([start, *(site.text for _, site in hops)])
    sink.report(
        codes.CALL_CYCLE,
        first_site.span,
        flow=start,
        label="this call leads back to `" + start + "`" if len(hops) > 1 else "calls itself",
        secondary=tuple(Label(site.span, f"which calls `{site.text}`") for _, site in hops[1:]),
        notes=(f"the calls go round: {path}",),
        help="use `goto` to repeat steps inside a flow, or `starts` to switch to another flow "
        "without coming back",
    )


class _FlowGraph:
    """The steps of one flow as a graph, built by one walk over its lines."""

    def __init__(
        self,
        flow: ast.Flow,
        returns_early: dict[str, bool],
        cycle: set[str],
        sink: DiagnosticSink,
    ) -> None:
        self.flow = flow
        self.index = steps_by_name(flow)
        self.returns_early = returns_early
        self.cycle = cycle
        self.sink = sink
        count = len(flow.steps)
        self.edges: list[set[int]] = [set() for _ in range(count)]
        # Edges taken without waiting for the user since the step began; a goto's edge keeps
        # the span of its step name.
        self.eager: list[list[tuple[int, Span | None]]] = [[] for _ in range(count)]
        self.exits_eagerly = [False] * count
        self.current = 0
        # A misspelled step name (FL104) hides where the flow goes; then unreachable steps are
        # not reported, as they would mostly be echoes of that one mistake.
        self.unresolved = False

    def run(self) -> bool:
        """Check the flow; return whether it may end without waiting for the user."""
        steps = self.flow.steps
        if not steps:
            return True
        for i, step in enumerate(steps):
            self.current = i
            finishes, eager = self.block(step.body, True)
            if not finishes:
                continue
            if i + 1 < len(steps):
                self.edges[i].add(i + 1)
                if eager:
                    self.eager[i].append((i + 1, None))
            elif eager:
                self.exits_eagerly[i] = True
        self.report_unreachable()
        self.report_loops()
        reached = _search(0, lambda i: (t for t, _ in self.eager[i]))
        return any(self.exits_eagerly[i] for i in reached)

    # -- the walk
    def block(self, body: Iterable[ast.Action], eager: bool) -> tuple[bool, bool]:
        """Walk lines in order; return whether the block can finish and whether it can get
        to its end without having waited for the user."""
        previous: ast.Action | None = None
        for action in body:
            if previous is not None:
                self.sink.report(
                    codes.UNREACHABLE_CODE,
                    action.span,
                    label="never runs",
                    secondary=(Label(previous.span, _leaves(previous)),),
                    help="remove this line, or move it above the line that leaves the step",
                )
                return False, eager
            finishes, eager = self.action(action, eager)
            if not finishes:
                previous = action
        return previous is None, eager

    def action(self, action: ast.Action, eager: bool) -> tuple[bool, bool]:
        match action:
            case ast.Goto():
                target = self.index.get(action.step.text)
                self.unresolved |= target is None
                if target is not None:
                    self.edges[self.current].add(target)
                    if eager:
                        self.eager[self.current].append((target, action.step.span))
                return False, eager
            case ast.End() | ast.Resume():
                self.exits_eagerly[self.current] |= eager
                return False, eager
            case ast.If():
                ends = [self.block(branch.body, eager) for branch in action.branches]
                if action.else_body is None:
                    ends.append((True, eager))
                else:
                    ends.append(self.block(action.else_body, eager))
                open_ends = [e for finishes, e in ends if finishes]
                return bool(open_ends), any(open_ends)
            case ast.Call():
                callee = action.flow.text
                # An unknown callee (FL105) or one on a call cycle (FL207) counts as waiting,
                # so one mistake is not reported twice.
                transparent = callee not in self.cycle and self.returns_early.get(callee, False)
                return True, eager and transparent
        for target in targets_of(action):
            name = target_name(target)
            if target.kind != "step" or name is None:
                continue
            if name.text in self.index:
                self.edges[self.current].add(self.index[name.text])
            else:
                self.unresolved = True
        if isinstance(action, ast.Ask):
            return True, False
        return True, eager

    # -- reports
    def report_unreachable(self) -> None:
        if self.unresolved:
            return
        reached = _search(0, lambda i: self.edges[i])
        for i, step in enumerate(self.flow.steps):
            if i not in reached:
                self.sink.report(
                    codes.UNREACHABLE_STEP,
                    step.name.span,
                    name=step.name.text,
                    label="nothing leads here",
                    help=f"add `goto {step.name.text}` (or a button or choice with `goto "
                    f"{step.name.text}`) where the conversation should continue here, or "
                    "remove the step",
                )

    def report_loops(self) -> None:
        successors = [[t for t, _ in edges] for edges in self.eager]
        components = strongly_connected(range(len(self.flow.steps)), successors.__getitem__)
        for component in components:
            members = set(component)
            first = component[0]
            if len(component) == 1 and first not in successors[first]:
                continue
            # Fall-through only goes forward, so every loop has a goto back to an earlier step
            # (or to its own step).
            back = min(
                (source, target, span)
                for source in members
                for target, span in self.eager[source]
                if target in members and target <= source and span is not None
            )
            source, target, span = back
            names = self._path(target, source, members, successors)
            step_name = self.flow.steps[target].name
            assert span is not None
            self.sink.report(
                codes.LOOP_WITHOUT_WAIT,
                span,
                label=f"goes back to `{step_name.text}` without waiting for an answer",
                secondary=(Label(step_name.span, "the loop starts here"),),
                notes=("the loop: " + " → ".join([*names, step_name.text]),),
                help="add an `ask` inside the loop so it waits for the user, or leave the loop "
                "with `end`",
            )

    def _path(
        self, start: int, goal: int, members: set[int], successors: list[list[int]]
    ) -> list[str]:
        came_from = {start: start}
        queue = deque([start])
        while queue and goal not in came_from:
            node = queue.popleft()
            for succ in successors[node]:
                if succ in members and succ not in came_from:
                    came_from[succ] = node
                    queue.append(succ)
        path = [goal]
        while path[-1] != start:
            path.append(came_from[path[-1]])
        return [self.flow.steps[i].name.text for i in reversed(path)]


def _leaves(action: ast.Action) -> str:
    if isinstance(action, ast.If):
        return "every branch of this `if` leaves the step"
    return "the step is left here"


def _search(start: int, successors: Callable[[int], Iterable[int]]) -> set[int]:
    """The nodes reachable from `start` (breadth first)."""
    seen = {start}
    queue = deque([start])
    while queue:
        for succ in successors(queue.popleft()):
            if succ not in seen:
                seen.add(succ)
                queue.append(succ)
    return seen


def _check_never_started(program: Program, sink: DiagnosticSink) -> None:
    started: set[str] = set()
    bodies = [flow_actions(f) for f in program.flows]
    bodies += [walk(t.body) for t in program.templates]
    for actions in bodies:
        for action in actions:
            if isinstance(action, ast.Call):
                started.add(action.flow.text)
            for target in targets_of(action):
                name = target_name(target)
                if target.kind == "flow" and name is not None:
                    started.add(name.text)
    for page in program.pages:
        targets = [i.target for m in page.menus for i in menu_items(m.items) if i.target]
        targets += [q.target for group in page.ice_breakers for q in group.questions]
        for target in targets:
            name = target_name(target)
            if target.kind == "flow" and name is not None:
                started.add(name.text)
    for flow in program.flows:
        if flow.triggers or flow.inactive or flow.name.text in started:
            continue
        sink.report(
            codes.FLOW_NEVER_STARTS,
            flow.name.span,
            flow=flow.name.text,
            label="nothing starts this flow",
            help='add a `when …` line (for example `when user says "hello"`), or start it '
            f"from another flow with `call {flow.name.text}` or a button that "
            f"`starts {flow.name.text}`",
        )
