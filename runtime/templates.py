"""Rendering author texts and evaluating expressions in one sandboxed, strict Jinja environment.

Only texts written in `.flow` files are ever compiled as templates. What a user types reaches a
template as a *value* in the context, so `{{ 7*7 }}` typed by a user stays `{{ 7*7 }}`.
Compiled templates and expressions are cached by their source text (a program has a finite set
of texts, so the caches stay small). Texts without `{` skip Jinja entirely, and texts made only
of literal text and `{{ name }}` / `{{ name.key }}` lookups are rendered by a tiny fast path
with the same results as Jinja (anything unusual falls back to Jinja itself)."""

from __future__ import annotations

import functools
import itertools
import operator
import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from jinja2 import (
    StrictUndefined,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
    pass_context,
    pass_environment,
)
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.runtime import Undefined
from jinja2.sandbox import SandboxedEnvironment, modifies_known_mutable
from jinja2.utils import generate_lorem_ipsum

#: The longest string or list a template may build with `*` (a guard against memory bombs).
MAX_REPEAT_LENGTH = 10_000
#: The largest exponent `**` accepts.
MAX_EXPONENT = 100
#: The longest text (or the most items in a list) a template may build or print, and the
#: largest number a size argument may be (`center`, `indent`, `round`, `ljust`, `zfill` …).
#: Messenger texts hold at most 2,000 characters; this is ten times that.
MAX_LENGTH = 20_000
#: The most bits a number built with `*` or `**` may have (about 30,000 digits).
MAX_BITS = 100_000
#: Loop turns and macro calls in one render, and how long one render may take: the budget of
#: a text that would otherwise loop for hours (`{% for %}` inside `{% for %}` …).
MAX_STEPS = 100_000
MAX_RENDER_SECONDS = 2.0

_MISSING = object()


class TemplateError(Exception):
    """A text or expression could not be rendered; `reason` says why, in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------- the sandbox
#
# Jinja's sandbox keeps templates away from Python internals (no `_` attributes, no unsafe
# callables); it does not bound what a template computes. These limits do, so that a text can
# fail (a RuntimeFault: the user gets the flow's error message) but never hang the worker or
# exhaust the process's memory:
# - loops and macro calls tick a per-render budget of steps and time;
# - every operation that can make a text, list or number much larger than its operands
#   (`*`, `**`, `+`, `%`, `~`, str.format, padding and joining filters and methods) checks the
#   size of its result *before* building it;
# - printing a value (`{{ }}`, `~`, `%`, a filter) first checks that its text is not huge (a
#   list can hold the same big list many times over: its text would be enormous);
# - lists, dicts and sets cannot be changed in place (`append`, `update` …): the values in the
#   context (the profile, the conversation's variables) are not the template's to change.


class _Budget(threading.local):
    """What the render running in this thread has spent (renders do not nest)."""

    steps = 0
    next_clock = 0
    deadline = 0.0


_budget = _Budget()
#: Steps between two looks at the clock (a step costs about a microsecond).
_CLOCK_EVERY = 256


def _start_budget() -> None:
    _budget.steps = 0
    _budget.next_clock = _CLOCK_EVERY
    _budget.deadline = time.monotonic() + MAX_RENDER_SECONDS


def _spend(steps: int = 1) -> None:
    budget = _budget
    budget.steps += steps
    if budget.steps >= budget.next_clock:
        if budget.steps > MAX_STEPS:
            raise SecurityError(f"the text loops too much (more than {MAX_STEPS} steps)")
        if time.monotonic() > budget.deadline:
            raise SecurityError(f"the text takes too long (more than {MAX_RENDER_SECONDS:g} s)")
        budget.next_clock = budget.steps + _CLOCK_EVERY


# The three hooks `_Sandbox._generate` puts into every template, as filters: the generated
# code calls a filter directly (a sandboxed call costs several times more). `pass_context`
# keeps Jinja from running them at compile time on constant arguments.


@pass_context
def _tick(_context: Any, _value: Any) -> str:
    """At the start of every macro call and recursive loop turn."""
    _spend()
    return ""


@pass_context
def _counted(_context: Any, iterable: Any) -> Iterator[Any]:
    """A `{% for %}` loop's items, each one a step of the budget."""
    for item in iterable:
        _spend()
        yield item


@pass_context
def _tilde(_context: Any, values: list[Any]) -> str:
    """`a ~ b ~ c`: the values as text, joined."""
    for value in values:
        _check_printable(value)
    return _concat([str(value) for value in values])


def _too_long(what: str) -> SecurityError:
    return SecurityError(f"{what} would be too long (at most {MAX_LENGTH} characters or items)")


def _printed_size(value: Any, limit: int = MAX_LENGTH) -> int:
    """About how many characters `str(value)` has, counted only up to just past `limit` (the
    count stops there, so it costs at most `limit` steps). Shared items count every time, as
    their text appears every time."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item) + 2
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            stack.extend(itertools.islice(item, limit - total + 1))
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            for key, inner in itertools.islice(item.items(), limit - total + 1):
                stack += (key, inner)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        else:
            total += 1
    _spend(min(total, limit) // 64)
    return total


def _check_printable(value: Any) -> None:
    if not isinstance(value, str) and _printed_size(value) > MAX_LENGTH:
        raise _too_long("the text of this value")


def _check_size_argument(value: Any) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_LENGTH:
        raise SecurityError(f"the number {value} is too large here (at most {MAX_LENGTH})")


def _check_result(value: Any) -> Any:
    if isinstance(value, str | bytes | list | tuple) and len(value) > MAX_LENGTH:
        raise _too_long("the result")
    return value


# printf-style conversions: `%(name)-10.3f`; a `*` takes the width from the arguments.
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?.")
_FORMAT_WIDTH = re.compile(r"\d+")


def _check_printf(template: str, arguments: Any) -> None:
    for conversion in _PRINTF.finditer(template):
        for number in conversion.groups():
            if number == "*":
                raise SecurityError("a width taken from the values (`*`) is not allowed")
            if number is not None:
                _check_size_argument(int(number))
    _check_printable(arguments)


def _check_format(template: str, args: Any, kwargs: Any) -> None:
    for _, _, spec, _ in string.Formatter().parse(template):
        if spec and "{" in spec:
            raise SecurityError("a width taken from the values (`{:{}}`) is not allowed")
        for number in _FORMAT_WIDTH.findall(spec or ""):
            _check_size_argument(int(number))
    _check_printable(args)
    _check_printable(kwargs)


@pass_environment
def _join(
    environment: Any, values: Iterable[Any], separator: str = "", attribute: Any = None
) -> str:
    """The `join` filter, refusing before it builds a text that is too long."""
    if attribute is not None:
        values = map(make_attrgetter(environment, attribute), values)
    parts: list[str] = []
    size = 0
    for value in values:
        _check_printable(value)
        part = str(value)
        size += len(part) + len(separator)
        if size > MAX_LENGTH:
            raise _too_long("the joined text")
        parts.append(part)
    return separator.join(parts)


def _guard_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """`original` with size checks around it: its size arguments are bounded, the values it
    turns into text are not huge, and its result is not too long."""
    # Filters marked pass_context/pass_environment get that first: the value is next.
    first = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0
    reads_containers = name in _CONTAINER_FILTERS
    sizes = name in _SIZE_FILTERS

    def guarded(*args: Any, **kwargs: Any) -> Any:
        value = args[first] if len(args) > first else None
        if not reads_containers:
            _check_printable(value)
        elif isinstance(value, list | tuple | dict | set | frozenset | str | range):
            _spend(len(value) // 64)  # they walk it (an Undefined is Sized too, and raises)
        for argument in (*args[first + 1 :], *kwargs.values()):
            if sizes:
                _check_size_argument(argument)
            _check_printable(argument)
        if name == "indent" and isinstance(value, str):
            width = args[first + 1] if len(args) > first + 1 else kwargs.get("width", 4)
            pad = len(width) if isinstance(width, str) else int(width)
            if (value.count("\n") + 1) * pad + len(value) > MAX_LENGTH:
                raise _too_long("the indented text")
        elif name == "wordwrap":
            wrap = kwargs.get("wrapstring") or (args[first + 3] if len(args) > first + 3 else "")
            width = kwargs.get("width") or (args[first + 1] if len(args) > first + 1 else 79)
            if isinstance(value, str) and len(value) // max(int(width), 1) * len(wrap or "") > (
                MAX_LENGTH
            ):
                raise _too_long("the wrapped text")
        elif name == "replace" and isinstance(value, str) and len(args) > first + 2:
            old, new = str(args[first + 1]), str(args[first + 2])
            if len(value) + (value.count(old) + (not old)) * len(new) > MAX_LENGTH:
                raise _too_long("the text after replacing")
        elif name == "format" and isinstance(value, str):
            _check_printf(value, (args[first + 1 :], kwargs))
        elif name == "sum":
            start = kwargs.get("start", args[first + 2] if len(args) > first + 2 else 0)
            if not isinstance(start, int | float):
                raise SecurityError("`sum` adds numbers only")
        return _check_result(original(*args, **kwargs))

    functools.update_wrapper(guarded, original)
    return guarded


#: Filters whose number arguments are sizes: widths, lengths, counts, digits.
_SIZE_FILTERS = frozenset({"batch", "center", "indent", "round", "slice", "truncate", "wordwrap"})
#: Filters that look at a list's items without turning the whole list into text.
_CONTAINER_FILTERS = frozenset(
    {
        "attr", "batch", "bool", "count", "d", "default", "dictsort", "first", "groupby", "int",
        "items", "join", "last", "length", "list", "map", "max", "min", "reject", "rejectattr",
        "reverse", "select", "selectattr", "slice", "sort", "sum", "unique",
    }
)  # fmt: skip


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n > 100 or min > 1000 or max > 1000:
        raise SecurityError("`lipsum` makes at most 100 paragraphs of at most 1000 words")
    return generate_lorem_ipsum(n, html, min, max)


class _Sandbox(SandboxedEnvironment):
    """The Jinja sandbox, plus the limits described above."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters["join"] = _guard_filter("join", _join)
        self.globals["lipsum"] = _lipsum  # (Jinja's `range` stops at 100,000 numbers itself)
        self.concat = _concat  # type: ignore[method-assign]  # every text a template makes
        self.finalize = _finalize
        self.filters.update({_TICK: _tick, _COUNTED: _counted, _TILDE: _tilde})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return super().is_safe_attribute(obj, attr, value) and not modifies_known_mutable(obj, attr)

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        """Put the budget into the tree before it becomes Python: each loop's items are
        counted, each macro call and recursive loop turn ticks, and `a ~ b` checks sizes."""
        for node in list(source.find_all((nodes.For, nodes.Macro, nodes.CallBlock))):
            if isinstance(node, nodes.For):
                node.iter = _filter(_COUNTED, node.iter)
            if not isinstance(node, nodes.For) or node.recursive:
                node.body.insert(0, nodes.ExprStmt(_filter(_TICK, nodes.Const(""))))
        for parent in list(source.find_all(nodes.Node)):
            for field in parent.fields:
                value = getattr(parent, field, None)
                if isinstance(value, nodes.Concat):
                    setattr(parent, field, _filter(_TILDE, nodes.List(value.nodes)))
                elif isinstance(value, list):
                    value[:] = [
                        _filter(_TILDE, nodes.List(v.nodes)) if isinstance(v, nodes.Concat) else v
                        for v in value
                    ]
        return super()._generate(source, *args, **kwargs)

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"the exponent {right} is too large (at most {MAX_EXPONENT})")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() * right > MAX_BITS
            ):
                raise SecurityError("the number would be too large")
            return operator.pow(left, right)
        if operator_ == "%":
            if isinstance(left, str):
                _check_printf(left, right)
                return _check_result(operator.mod(left, right))
            return operator.mod(left, right)
        if operator_ == "+":
            if (
                isinstance(left, str | list | tuple)
                and isinstance(right, str | list | tuple)
                and len(left) + len(right) > MAX_LENGTH
            ):
                raise _too_long("the sum")
            return operator.add(left, right)
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_BITS:
                raise SecurityError("the number would be too large")
            return operator.mul(left, right)
        for seq, times in ((left, right), (right, left)):
            if (
                isinstance(seq, str | list | tuple)
                and isinstance(times, int)
                and len(seq) * times > MAX_REPEAT_LENGTH
            ):
                raise SecurityError(
                    f"repeating a text or list that many times is not allowed "
                    f"(at most {MAX_REPEAT_LENGTH} items)"
                )
        return operator.mul(left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes | int | float):
            for argument in (*args, *kwargs.values()):
                _check_size_argument(argument)
            name = getattr(__obj, "__name__", "")
            if name == "join":
                return _check_result(owner.join(_join_parts(args[0] if args else ())))
            if name == "replace" and len(args) >= 2 and isinstance(owner, str):
                old, new = str(args[0]), str(args[1])
                if len(owner) + (owner.count(old) + (not old)) * len(new) > MAX_LENGTH:
                    raise _too_long("the text after replacing")
            elif name == "expandtabs" and isinstance(owner, str):
                size = args[0] if args else kwargs.get("tabsize", 8)
                if len(owner) + owner.count("\t") * int(size) > MAX_LENGTH:
                    raise _too_long("the text")
        return _check_result(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            if value.__name__ == "format_map" and args:
                _check_format(template, (), args[0])
            else:
                _check_format(template, args, kwargs)
            return _check_result(wrapped(*args, **kwargs))

        return checked


#: The hooks' filter names: a template could use them too, to no effect but counting.
_TICK, _COUNTED, _TILDE = "flow_tick", "flow_counted", "flow_join"


def _filter(name: str, value: nodes.Expr) -> nodes.Filter:
    return nodes.Filter(value, name, [], [], None, None)


def _join_parts(values: Iterable[Any]) -> list[Any]:
    parts = []
    size = 0
    for value in values:
        size += len(value) if isinstance(value, str | bytes) else 1
        if size > MAX_LENGTH:
            raise _too_long("the joined text")
        parts.append(value)
    return parts


def _concat(parts: Iterable[str]) -> str:
    """Jinja's `concat` (joins every piece of output), refusing a text that grows too long."""
    out = []
    size = 0
    for part in parts:
        size += len(part)
        if size > MAX_LENGTH:
            raise _too_long("the text")
        out.append(part)
    return "".join(out)


def _finalize(value: Any) -> Any:
    """Called on every `{{ value }}` before it is turned into text."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    _check_printable(value)
    return value


def _reason(exc: BaseException) -> str:
    """Turn a Jinja (or Python) exception into a sentence for the fault log."""
    if isinstance(exc, SecurityError):
        return f"unsafe template operation: {exc}"
    if isinstance(exc, UndefinedError):
        return f"undefined variable: {exc.message}"
    if isinstance(exc, TemplateSyntaxError):
        return f"template syntax error: {exc.message} (line {exc.lineno} of the text)"
    return f"{type(exc).__name__}: {exc}"


# The fast-path form of a text: the literal text before the first lookup, then for each
# `{{ name }}` / `{{ name.key }}` lookup the name, the key (or None) and the literal after it.
_Fast = tuple[str, tuple[tuple[str, str | None, str], ...]]


class _Compiled:
    __slots__ = ("fast", "names", "source", "template")

    def __init__(self, source: str, fast: _Fast | None, names: frozenset[str]) -> None:
        self.source = source
        self.fast = fast
        self.names = names
        self.template: Template | None = None


class Renderer:
    """Renders `.flow` texts and evaluates `.flow` expressions in a Jinja sandbox.

    One instance holds one `SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)`
    and its caches; share it between conversations (it keeps no per-conversation state).

    >>> Renderer().render("Hi {{ user.first_name }}!", {"user": {"first_name": "Ada"}})
    'Hi Ada!'
    """

    def __init__(self) -> None:
        self.env = _Sandbox(undefined=StrictUndefined, autoescape=False)
        self._texts: dict[str, _Compiled] = {}
        self._expressions: dict[str, Callable[..., Any]] = {}

    # -- texts
    def render(self, source: str, context: Mapping[str, Any]) -> str:
        """Render one text. Raises `TemplateError` on an undefined variable, an unsafe
        operation, a syntax error or any other failure inside the template."""
        if "{" not in source:
            return source
        compiled = self._texts.get(source)
        if compiled is None:
            compiled = self._compile(source)
        fast = compiled.fast
        if fast is not None:
            # Literal text and plain lookups, inline (this runs for most texts of most turns).
            text, lookups = fast
            for name, key, tail in lookups:
                value = context.get(name, _MISSING)
                if key is not None:
                    # Jinja's sandbox tries the attribute first, then the item; for dicts and
                    # keys that are not dict attributes (checked at compile time) the item is
                    # the answer.
                    if type(value) is not dict:
                        break
                    value = value.get(key, _MISSING)
                if type(value) is str:
                    text += value + tail
                elif value is _MISSING or isinstance(value, Undefined):
                    break  # Jinja knows the globals and words the error message
                else:
                    text += str(value) + tail
            else:
                return text
        return self._slow(compiled, context)

    def _compile(self, source: str) -> _Compiled:
        try:
            tree = self.env.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(_reason(exc)) from None
        names = frozenset(meta.find_undeclared_variables(tree))
        compiled = _Compiled(source, _fast_form(tree), names)
        self._texts[source] = compiled
        return compiled

    def names(self, source: str) -> frozenset[str] | None:
        """The top-level names a text reads (variables, namespaces, Jinja globals), so a
        caller can leave out context entries nobody reads. None for a text with a syntax
        error (rendering it reports the error)."""
        if "{" not in source:
            return frozenset()
        compiled = self._texts.get(source)
        if compiled is None:
            try:
                compiled = self._compile(source)
            except TemplateError:
                return None
        return compiled.names

    def _slow(self, compiled: _Compiled, context: Mapping[str, Any]) -> str:
        try:
            if compiled.template is None:
                compiled.template = self.env.from_string(compiled.source)
            _start_budget()
            return compiled.template.render(context)
        except Exception as exc:  # every failure inside a template is the author's to fix
            raise TemplateError(_reason(exc)) from None

    # -- expressions
    def evaluate(self, expression: str, context: Mapping[str, Any]) -> Any:
        """Evaluate one Jinja expression (an `if` condition or a `set` value).

        An expression whose value is undefined is an error here too, not a silent None."""
        compiled = self._expressions.get(expression)
        try:
            if compiled is None:
                compiled = self.env.compile_expression(expression, undefined_to_none=False)
                self._expressions[expression] = compiled
            _start_budget()
            value = compiled(context)
            if isinstance(value, Undefined):
                str(value)  # StrictUndefined raises here with Jinja's own message
            _finalize(value)  # a value kept in a variable is stored with the conversation
        except Exception as exc:
            raise TemplateError(_reason(exc)) from None
        return value

    def check(self, source: str) -> str | None:
        """The syntax error in a text, or None. (Undefined names are only known when run.)"""
        try:
            self.env.parse(source)
        except TemplateSyntaxError as exc:
            return _reason(exc)
        return None


def _fast_form(tree: nodes.Template) -> _Fast | None:
    """The fast-path form of a parsed text, or None when it needs real Jinja."""
    head = ""
    lookups: list[list[Any]] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                if lookups:
                    lookups[-1][2] += child.data
                else:
                    head += child.data
            elif isinstance(child, nodes.Name) and child.ctx == "load":
                lookups.append([child.name, None, ""])
            elif (
                isinstance(child, nodes.Getattr)
                and isinstance(child.node, nodes.Name)
                and child.ctx == "load"
                and not child.attr.startswith("_")
                and not hasattr(dict, child.attr)
            ):
                lookups.append([child.node.name, child.attr, ""])
            else:
                return None
    return head, tuple((name, key, tail) for name, key, tail in lookups)


_shared: Renderer | None = None


def shared_renderer() -> Renderer:
    """The process-wide renderer (one sandbox, one cache), created on first use."""
    global _shared
    if _shared is None:
        _shared = Renderer()
    return _shared
