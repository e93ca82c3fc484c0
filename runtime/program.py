"""Indexes over a compiled program, built once per flow version and reused for every turn.

`FlowIndex` maps each action id of one flow version to the action, the action that runs after
it (falling through into the next step) and its step. `ProgramView` is what the engine runs:
the current program, its trigger index, and a way to find older versions of flows, so a
conversation waiting in an old version finishes on it after a deploy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from flowlang import ir
from runtime.matching import TriggerIndex

#: What a button or quick reply may hold besides plain text: the compiler's own payloads.
STEP_PREFIX = "FLOW:"
ANSWER_PREFIX = "ANSWER:"


class FlowIndex:
    """One version of one flow, indexed by action id.

    - `after[id]`: the action that runs next (the rest of its block, then what follows the
      enclosing `if`, then the first action of the next step); None = the flow ends there;
    - `branches[id]`: for an `if`, the first action of each branch and of the else part;
    - `step_of[id]`, `where[id]` (`file:line` for faults and logs), `first[step]`."""

    __slots__ = (
        "actions",
        "after",
        "branches",
        "cache",
        "first",
        "flow",
        "id",
        "step_of",
        "tables",
        "version",
        "where",
    )

    def __init__(self, flow: ir.Flow) -> None:
        self.flow = flow
        self.id = flow.id
        self.version = flow.content_hash
        self.actions: dict[str, Any] = {}
        self.after: dict[str, str | None] = {}
        self.branches: dict[str, tuple[tuple[str | None, ...], str | None]] = {}
        self.step_of: dict[str, str] = {}
        self.where: dict[str, str] = {}
        #: Per-action values the engine computes once (prebuilt static messages).
        self.cache: dict[Any, Any] = {}
        #: The engine's per-version run tables, built on first use (see runtime.engine).
        self.tables: Any = None
        self.first: dict[str, str | None] = {}
        for step_id in flow.steps:
            self.first[step_id] = self._chase(step_id)
        for step_id, step in flow.steps.items():
            following = self.first[step.next] if step.next in flow.steps else None
            self._index(step.actions, following, step_id)

    def _chase(self, step_id: str) -> str | None:
        """The first action reached from a step (skipping empty steps, which the grammar does
        not allow but a hand-written IR might hold)."""
        seen: set[str] = set()
        current: str | None = step_id
        while current is not None and current in self.flow.steps and current not in seen:
            seen.add(current)
            step = self.flow.steps[current]
            if step.actions:
                return step.actions[0].id
            current = step.next
        return None

    def _index(self, actions: Sequence[Any], after: str | None, step_id: str) -> str | None:
        for position, action in enumerate(actions):
            following = actions[position + 1].id if position + 1 < len(actions) else after
            aid = action.id
            self.actions[aid] = action
            self.after[aid] = following
            self.step_of[aid] = step_id
            self.where[aid] = f"{action.source.file}:{action.source.line}"
            if action.kind == "if":
                firsts = tuple(self._index(b.actions, following, step_id) for b in action.branches)
                otherwise = self._index(action.else_actions or (), following, step_id)
                self.branches[aid] = (firsts, otherwise)
        return actions[0].id if actions else after

    def has_step(self, step: str) -> bool:
        """Whether this version has a step of that name."""
        return step in self.flow.steps

    def start_of(self, step: str | None = None) -> str | None:
        """The first action of `step` (default: the entry step)."""
        return self.first.get(step or self.flow.entry)

    def __repr__(self) -> str:
        return f"FlowIndex({self.id!r}, {self.version[:15]!r})"


class FlowLookup(Protocol):
    """Finds a deployed version of a flow by id and content hash (None when unknown)."""

    def __call__(self, flow_id: str, content_hash: str, /) -> ir.Flow | None: ...


class FlowCatalogue:
    """Every version of every flow seen so far, in memory, keyed by (flow id, content hash).

    The server's store keeps the same catalogue in the database; anything with a
    `get(flow_id, content_hash)` works as the `versions` of a `ProgramView`."""

    def __init__(self, programs: Iterable[ir.FlowProgram] = ()) -> None:
        self._flows: dict[tuple[str, str], ir.Flow] = {}
        for program in programs:
            self.add(program)

    def add(self, program: ir.FlowProgram) -> None:
        """Remember every flow version of a program."""
        for flow in program.flows.values():
            self._flows[(flow.id, flow.content_hash)] = flow

    def get(self, flow_id: str, content_hash: str) -> ir.Flow | None:
        """A remembered flow version, or None."""
        return self._flows.get((flow_id, content_hash))

    __call__ = get

    def __len__(self) -> int:
        return len(self._flows)


class ProgramView:
    """The compiled program as the engine sees it: current flows, older flow versions,
    templates, triggers and page settings, with every index built once.

    >>> view = ProgramView(program, versions=catalogue)   # doctest: +SKIP
    """

    def __init__(self, program: ir.FlowProgram, *, versions: FlowLookup | None = None) -> None:
        self.program = program
        self.versions = versions
        self.triggers = TriggerIndex(program.flows.values())
        self.templates = program.templates
        page = program.page
        self.get_started_payload = page.get_started_payload if page else None
        self.error_message = page.error_message if page else None
        #: The current version of every flow, by id.
        self.flows: dict[str, FlowIndex] = {
            flow_id: FlowIndex(flow) for flow_id, flow in program.flows.items()
        }
        self._current = self.flows
        self._old: dict[tuple[str, str], FlowIndex | None] = {}
        #: Values the engine computes once for template lines (prebuilt static messages).
        self.cache: dict[Any, Any] = {}

    def current(self, flow_id: str) -> FlowIndex | None:
        """The current version of a flow (None when the program has no such flow)."""
        return self._current.get(flow_id)

    def version(self, flow_id: str | None, content_hash: str | None) -> FlowIndex | None:
        """A specific version of a flow: the current one when the hash matches, else an old
        one from `versions`. None when neither knows it."""
        if flow_id is None or content_hash is None:
            return None
        current = self._current.get(flow_id)
        if current is not None and current.version == content_hash:
            return current
        key = (flow_id, content_hash)
        if key in self._old:
            return self._old[key]
        flow = self.versions(flow_id, content_hash) if self.versions is not None else None
        index = FlowIndex(flow) if flow is not None else None
        if index is not None or self.versions is None:
            self._old[key] = index  # a miss is not cached: the store may learn it later
        return index
