"""Rendering author texts and evaluating expressions in one sandboxed, strict Jinja environment.

Only texts written in `.flow` files are ever compiled as templates. What a user types reaches a
template as a *value* in the context, so `{{ 7*7 }}` typed by a user stays `{{ 7*7 }}`.
Compiled templates and expressions are cached by their source text (a program has a finite set
of texts, so the caches stay small). Texts without `{` skip Jinja entirely, and texts made only
of literal text and `{{ name }}` / `{{ name.key }}` lookups are rendered by a tiny fast path
with the same results as Jinja (anything unusual falls back to Jinja itself)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.runtime import Undefined
from jinja2.sandbox import SandboxedEnvironment

#: The longest string or list a template may build with `*` (a guard against memory bombs).
MAX_REPEAT_LENGTH = 10_000
#: The largest exponent `**` accepts.
MAX_EXPONENT = 100

_MISSING = object()


class TemplateError(Exception):
    """A text or expression could not be rendered; `reason` says why, in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Sandbox(SandboxedEnvironment):
    """The Jinja sandbox, plus limits on `*` and `**` so a template cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"the exponent {right} is too large (at most {MAX_EXPONENT})")
            return operator.pow(left, right)
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
            value = compiled(context)
            if isinstance(value, Undefined):
                str(value)  # StrictUndefined raises here with Jinja's own message
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
