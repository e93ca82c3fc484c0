"""Drawing flows: the step graph of compiled flows as Mermaid or Graphviz DOT text.

Pure functions over the IR. Steps are boxes; an arrow is every way the conversation can move
on, labelled with what takes it (a button or choice title, an `if` condition, "after 3 tries")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flowlang import ir

#: Labels of the special nodes every flow may point to.
END_LABEL = "end"
RESUME_LABEL = "back to the interrupted flow"


@dataclass(frozen=True, slots=True)
class Node:
    """A box in the drawing. `kind` is step, start, end, resume or flow."""

    id: str
    label: str
    kind: str


@dataclass(frozen=True, slots=True)
class Edge:
    """An arrow. `call` arrows run another flow and come back (drawn dashed)."""

    source: str
    target: str
    label: str = ""
    call: bool = False


@dataclass
class Graph:
    """The nodes and edges of some flows, grouped by flow (special nodes may be shared)."""

    groups: list[tuple[ir.Flow, list[Node]]] = field(default_factory=list)
    shared: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)


def build_graph(flows: ir.Flow | Sequence[ir.Flow]) -> Graph:
    """The graph of one or several flows. A button or call to a flow that is drawn too
    points at that flow's start; any other flow gets one shared box."""
    flow_list = [flows] if isinstance(flows, ir.Flow) else list(flows)
    drawn = {flow.id: index for index, flow in enumerate(flow_list)}
    graph = Graph()
    shared: dict[str, Node] = {}
    edges: dict[Edge, None] = {}  # ordered set: the same arrow twice is drawn once

    for index, flow in enumerate(flow_list):
        walker = _FlowWalker(index, flow, drawn, shared)
        for edge in walker.walk():
            edges.setdefault(edge, None)
        graph.groups.append((flow, walker.nodes()))
    graph.shared = list(shared.values())
    graph.edges = list(edges)
    return graph


class _FlowWalker:
    """Collects the nodes and edges of one flow."""

    def __init__(
        self, index: int, flow: ir.Flow, drawn: dict[str, int], shared: dict[str, Node]
    ) -> None:
        self.index = index
        self.flow = flow
        self.drawn = drawn
        self.shared = shared
        self.used_end = False
        self.used_resume = False

    # Node ids: a letter for the kind, the flow's position, then the step name. Names are
    # [A-Za-z_][A-Za-z0-9_]*, so ids never collide and are never a Mermaid keyword like `end`.
    def step_id(self, step: str) -> str:
        return f"s{self.index}_{step}"

    def start_id(self, index: int | None = None) -> str:
        return f"b{self.index if index is None else index}"

    def end_id(self) -> str:
        self.used_end = True
        return f"e{self.index}"

    def resume_id(self) -> str:
        self.used_resume = True
        return f"r{self.index}"

    def flow_id(self, name: str) -> str:
        if name in self.drawn:
            return self.start_id(self.drawn[name])
        node = self.shared.setdefault(name, Node(f"F_{name}", f"flow {name}", "flow"))
        return node.id

    def nodes(self) -> list[Node]:
        out = [Node(self.start_id(), self.flow.title, "start")]
        out += [Node(self.step_id(name), name, "step") for name in self.flow.steps]
        if self.used_end:
            out.append(Node(f"e{self.index}", END_LABEL, "end"))
        if self.used_resume:
            out.append(Node(f"r{self.index}", RESUME_LABEL, "resume"))
        return out

    def walk(self) -> Iterable[Edge]:
        yield Edge(self.start_id(), self.step_id(self.flow.entry))
        for step in self.flow.steps.values():
            here = self.step_id(step.id)
            yield from self.actions(here, step.actions, "")
            if not _always_leaves(step.actions):
                target = self.step_id(step.next) if step.next else self.end_id()
                yield Edge(here, target)

    def actions(self, here: str, actions: Sequence[ir.Action], condition: str) -> Iterable[Edge]:
        for action in actions:
            yield from self.action(here, action, condition)

    def action(self, here: str, action: ir.Action, condition: str) -> Iterable[Edge]:
        match action:
            case ir.SayAction():
                yield from self.targets(here, action.buttons)
                yield from self.targets(here, action.quick_replies)
            case ir.CarouselAction():
                for card in action.cards:
                    yield from self.targets(here, card.buttons)
                yield from self.targets(here, action.quick_replies)
            case ir.AskAction():
                yield from self.targets(here, action.choices)
                yield from self.targets(here, action.quick_replies)
                retry = f"after {action.max_tries} tries"
                if action.on_fail_step is not None:
                    yield Edge(here, self.step_id(action.on_fail_step), retry)
                elif action.expect != "text":  # any text is a valid answer: it never fails
                    yield Edge(here, self.end_id(), retry)
            case ir.IfAction():
                for branch in action.branches:
                    yield from self.actions(here, branch.actions, branch.condition)
                if action.else_actions is not None:
                    yield from self.actions(here, action.else_actions, "else")
            case ir.GotoAction():
                yield Edge(here, self.step_id(action.step), condition)
            case ir.EndAction():
                yield Edge(here, self.end_id(), condition)
            case ir.ResumeAction():
                yield Edge(here, self.resume_id(), condition)
            case ir.CallAction():
                label = f"{condition} (call)" if condition else "call"
                yield Edge(here, self.flow_id(action.flow), label, call=True)
            case _:
                pass

    def targets(
        self, here: str, items: Iterable[ir.Button | ir.QuickReply | ir.Choice]
    ) -> Iterable[Edge]:
        for item in items:
            title = item.title or ""
            if item.target_step is not None and item.target_flow == self.flow.id:
                yield Edge(here, self.step_id(item.target_step), title)
            elif item.target_flow is not None:
                yield Edge(here, self.flow_id(item.target_flow), title)


def _always_leaves(actions: Sequence[ir.Action]) -> bool:
    """Whether running these actions always leaves the step (so it never falls through)."""
    for action in actions:
        if isinstance(action, ir.GotoAction | ir.EndAction | ir.ResumeAction):
            return True
        if _question_always_leaves(action):
            return True
        if (
            isinstance(action, ir.IfAction)
            and action.else_actions is not None
            and all(_always_leaves(b.actions) for b in action.branches)
            and _always_leaves(action.else_actions)
        ):
            return True
    return False


def _question_always_leaves(action: ir.Action) -> bool:
    """A choice question whose every choice goes somewhere: only a choice is a valid answer,
    and giving up goes to `after N tries goto` or ends, so nothing continues below it."""
    return (
        isinstance(action, ir.AskAction)
        and action.expect == "choice"
        and bool(action.choices)
        and all(c.target_step or c.target_flow for c in action.choices)
    )


# -- Mermaid

_MERMAID_SHAPES = {
    "step": ('["', '"]'),
    "start": ('(["', '"])'),
    "end": ('(("', '"))'),
    "resume": ('(("', '"))'),
    "flow": ('[["', '"]]'),
}

# Mermaid reads `#…;` as an entity, so `#` itself must be written as one. Quotes and pipes
# would end the label, `<`, `>` and `&` would be read as HTML, and a backtick as Markdown.
_MERMAID_ESCAPES = {
    "#": "#35;",
    '"': "#quot;",
    "&": "#38;",
    "<": "#60;",
    ">": "#62;",
    "|": "#124;",
    "`": "#96;",
}


def mermaid_label(text: str) -> str:
    """A label written safely inside Mermaid's double quotes (one line)."""
    text = " ".join(text.split())
    return "".join(_MERMAID_ESCAPES.get(char, char) for char in text)


def _mermaid_node(node: Node) -> str:
    left, right = _MERMAID_SHAPES[node.kind]
    return f"{node.id}{left}{mermaid_label(node.label)}{right}"


def _mermaid_edge(edge: Edge) -> str:
    arrow = "-.->" if edge.call else "-->"
    label = f'|"{mermaid_label(edge.label)}"|' if edge.label else ""
    return f"{edge.source} {arrow}{label} {edge.target}"


def to_mermaid(flows: ir.Flow | Sequence[ir.Flow]) -> str:
    """A Mermaid flowchart of one flow, or of several flows (one box around each).

    Paste it into a Markdown file on GitHub (in a ```mermaid block) to see the picture."""
    graph = build_graph(flows)
    lines = ["flowchart TD"]
    boxed = len(graph.groups) > 1
    for index, (flow, nodes) in enumerate(graph.groups):
        indent = "    " if boxed else "  "
        if boxed:
            lines.append(f'  subgraph g{index}["{mermaid_label(flow.id)}"]')
        lines += [indent + _mermaid_node(node) for node in nodes]
        if boxed:
            lines.append("  end")
    lines += ["  " + _mermaid_node(node) for node in graph.shared]
    lines += ["  " + _mermaid_edge(edge) for edge in graph.edges]
    return "\n".join(lines) + "\n"


# -- Graphviz DOT

_DOT_SHAPES = {
    "step": 'shape=box, style="rounded"',
    "start": 'shape=box, style="rounded,bold"',
    "end": "shape=doublecircle",
    "resume": "shape=ellipse",
    "flow": "shape=component",
}


def dot_string(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, one line."""
    text = " ".join(text.split())
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_node(node: Node) -> str:
    return f"{dot_string(node.id)} [label={dot_string(node.label)}, {_DOT_SHAPES[node.kind]}];"


def _dot_edge(edge: Edge) -> str:
    attrs = []
    if edge.label:
        attrs.append(f"label={dot_string(edge.label)}")
    if edge.call:
        attrs.append("style=dashed")
    suffix = f" [{', '.join(attrs)}]" if attrs else ""
    return f"{dot_string(edge.source)} -> {dot_string(edge.target)}{suffix};"


def to_dot(flows: ir.Flow | Sequence[ir.Flow]) -> str:
    """A Graphviz DOT digraph of one flow, or of several flows (one cluster around each).

    Turn it into a picture with `dot -Tsvg flow.dot -o flow.svg`."""
    graph = build_graph(flows)
    name = graph.groups[0][0].id if len(graph.groups) == 1 else "flows"
    lines = [
        f"digraph {dot_string(name)} {{",
        '  graph [fontname="Helvetica"];',
        '  node [fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    boxed = len(graph.groups) > 1
    for index, (flow, nodes) in enumerate(graph.groups):
        indent = "    " if boxed else "  "
        if boxed:
            lines.append(f'  subgraph "cluster_{index}" {{')
            lines.append(f"    label={dot_string(flow.id)};")
        lines += [indent + _dot_node(node) for node in nodes]
        if boxed:
            lines.append("  }")
    lines += ["  " + _dot_node(node) for node in graph.shared]
    lines += ["  " + _dot_edge(edge) for edge in graph.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"
