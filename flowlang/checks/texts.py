"""Reading Jinja in texts and expressions: parsing (cached), the variables they read, and
spans that point inside a text.

One sandboxed environment parses everything, as the runtime renders with one."""

from __future__ import annotations

import functools
import re

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment

from flowlang import ast
from flowlang.source import Span

ENV = SandboxedEnvironment(autoescape=False)

#: Names Jinja itself provides: its globals and the variables of `{% for %}` and macros.
JINJA_NAMES = frozenset(ENV.globals) | {"loop", "self", "super", "caller", "varargs", "kwargs"}

_JINJA_START = re.compile(r"\{[{%#]")
_BLOCKS = re.compile(r"\{\{.*?(?:\}\}|$)|\{%.*?(?:%\}|$)", re.S)


class Parsed:
    """The outcome of parsing one text or expression: the names it reads, or an error.

    `guarded` names are also read through `is defined`, `is undefined` or `| default(…)`,
    which work before the variable is set."""

    __slots__ = ("error", "guarded", "reads")

    def __init__(
        self,
        reads: frozenset[str],
        error: str | None = None,
        guarded: frozenset[str] = frozenset(),
    ) -> None:
        self.reads = reads
        self.error = error
        self.guarded = guarded


_PLAIN = Parsed(frozenset())


def has_jinja(text: str) -> bool:
    """Whether a text has any `{{`, `{%` or `{#` (most texts have none and skip Jinja)."""
    return _JINJA_START.search(text) is not None


_TOO_DEEP = "it is nested too deeply (brackets, `not`s or `{% if %}`s inside each other)"


@functools.lru_cache(maxsize=65536)
def parse_text(text: str) -> Parsed:
    """Parse a templated text; `reads` are its top-level undeclared names."""
    if not has_jinja(text):
        return _PLAIN
    simple = _simple_reads(text)
    if simple is not None:
        return Parsed(simple)
    try:
        tree = ENV.parse(text)
        scan = _Scan(tree)
        if scan.error:
            return Parsed(frozenset(), scan.error)
        # Only statements (`{% for %}`, `{% set %}`…) declare names, and only they need
        # Jinja's own scoping rules, which cost far more than the scan.
        reads = meta.find_undeclared_variables(tree) if "{%" in text else scan.loads
    except TemplateSyntaxError as exc:
        return Parsed(frozenset(), humanize(exc.message or str(exc)))
    except RecursionError:  # Jinja's parser and visitors recurse once per level
        return Parsed(frozenset(), _TOO_DEEP)
    return Parsed(frozenset(reads) - JINJA_NAMES, guarded=scan.guarded)


@functools.lru_cache(maxsize=65536)
def parse_expression(source: str) -> Parsed:
    """Parse a Jinja expression (as `Environment.compile_expression` does)."""
    simple = _simple_expression(source)
    if simple is not None:
        return Parsed(simple)
    try:
        parser = Parser(ENV, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            return Parsed(frozenset(), f"unexpected `{token.value}` after the expression")
        scan = _Scan(expr)
    except TemplateSyntaxError as exc:
        return Parsed(frozenset(), humanize(exc.message or str(exc), "expression"))
    except RecursionError:
        return Parsed(frozenset(), _TOO_DEEP)
    if scan.error:
        return Parsed(frozenset(), scan.error)
    return Parsed(frozenset(scan.loads) - JINJA_NAMES, guarded=scan.guarded)


#: `{{ name }}` or `{{ name.attribute }}`: by far the most common use, read without Jinja.
_SIMPLE = re.compile(r"\{\{\s*([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)*)\s*\}\}")
_KEYWORD_LIST = """and or not in is if else elif true false none True False None import from as
with recursive for block set include extends macro call filter raw endraw"""
_KEYWORDS = frozenset(_KEYWORD_LIST.split())


def _simple_reads(text: str) -> frozenset[str] | None:
    names: set[str] = set()
    for found in _SIMPLE.finditer(text):
        parts = [found.group(1), *found.group(2).split(".")[1:]]
        if any(part in _KEYWORDS for part in parts):
            return None
        names.add(found.group(1))
    if has_jinja(_SIMPLE.sub("", text)):
        return None
    return frozenset(names) - JINJA_NAMES


_EXPRESSION_TOKEN = re.compile(
    r"""\s*(?:(\d+(?:\.\d+)?(?![\w.]))|("[^"\\]*"|'[^'\\]*')|([A-Za-z_]\w*)"""
    r"|(==|!=|<=|>=|<|>|\+|-|\*|/(?!/)|~|\.))"
)
_CONSTANTS = frozenset({"true", "false", "none", "True", "False", "None"})
_BINARY_WORDS = frozenset({"and", "or", "in"})


def _simple_expression(source: str) -> frozenset[str] | None:
    """The names read by an expression made only of names (with `.attributes`), numbers,
    plain strings, comparisons, `+ - * / ~`, `and`, `or`, `not` and `in`, which Jinja always
    accepts; None for anything else, which goes to Jinja's parser. Most conditions and
    `set` expressions look like this, and reading them here is many times faster."""
    reads: set[str] = set()
    position, end = 0, len(source.rstrip())
    operand = True  # an operand is expected next
    negatable = True  # `not` may come next (at the start, after `and` / `or`)
    while position < end:
        token = _EXPRESSION_TOKEN.match(source, position)
        if token is None:
            return None
        position = token.end()
        number, text, name, operator = token.groups()
        if operand:
            if name == "not" and negatable:
                negatable = False
                continue
            if name is not None:
                if name in _KEYWORDS and name not in _CONSTANTS:
                    return None
                if name not in _CONSTANTS:
                    reads.add(name)
                while source.startswith(".", position):  # attributes: `user.first_name`
                    attribute = _EXPRESSION_TOKEN.match(source, position + 1)
                    if attribute is None or attribute.group(3) is None:
                        return None
                    position = attribute.end()
            elif number is None and text is None:
                return None
            operand = negatable = False
        elif name in _BINARY_WORDS or (operator is not None and operator != "."):
            operand, negatable = True, name in ("and", "or")
        elif name == "not":
            follow = _EXPRESSION_TOKEN.match(source, position)
            if follow is None or follow.group(3) != "in":
                return None
            position, operand = follow.end(), True
        else:
            return None
    if operand:
        return None
    return frozenset(reads) - JINJA_NAMES


_GUARDS = frozenset({"defined", "undefined", "default", "d"})


class _Scan:
    """One walk over a parsed template: the names it loads and stores, the names it reads
    through a guard (`is defined`, `| default`), and the first unknown filter or test."""

    def __init__(self, tree: nodes.Node) -> None:
        self.loads: set[str] = set()
        self.guarded: frozenset[str] = frozenset()
        self.error: str | None = None
        guarded: set[str] = set()
        stack = [tree]
        while stack:
            node = stack.pop()
            kind = type(node)
            if kind is nodes.Name:
                if node.ctx == "load":  # type: ignore[attr-defined]
                    self.loads.add(node.name)  # type: ignore[attr-defined]
                continue
            if kind is nodes.Filter or kind is nodes.Test:
                name = node.name  # type: ignore[attr-defined]
                known = ENV.filters if kind is nodes.Filter else ENV.tests
                if name not in known and self.error is None:
                    word = "filter" if kind is nodes.Filter else "test"
                    self.error = f"there is no {word} named `{name}`"
                if name in _GUARDS and type(node.node) is nodes.Name:  # type: ignore[attr-defined]
                    guarded.add(node.node.name)  # type: ignore[attr-defined]
            for field in node.fields:
                value = getattr(node, field, None)
                if isinstance(value, nodes.Node):
                    stack.append(value)
                elif type(value) is list:
                    stack.extend(v for v in value if isinstance(v, nodes.Node))
        self.guarded = frozenset(guarded)


_FILTER = re.compile(r"No (filter|test) named '([^']*)'")
_UNCLOSED = re.compile(r"The innermost block that needs to be closed is '(\w+)'")
_UNKNOWN_TAG = re.compile(r"Encountered unknown tag '(\w+)'")
_QUOTED = re.compile(r"'([^'\s]*)'")
_WORDS = (
    ("expected token ", "expected "),
    ("unexpected '}'", "a single `}` where `}}` was expected"),
    ("Unexpected end of template", "the {what} ended too early"),
    ("unexpected end of template", "the {what} ended too early"),
    ("unexpected 'end of template'", "the {what} ended too early"),
    ("'end of print statement'", "`}}`"),
    ("'end of statement block'", "`%}`"),
)


def humanize(message: str, what: str = "text") -> str:
    """Jinja's error message with its parser words replaced by what an author wrote."""
    unknown = _FILTER.match(message)
    if unknown:
        return f"there is no {unknown.group(1)} named `{unknown.group(2)}`"
    unclosed = _UNCLOSED.search(message)
    if unclosed:
        block = unclosed.group(1)
        return f"the {what} ended before `{{% end{block} %}}` closed the `{{% {block} %}}`"
    tag = _UNKNOWN_TAG.match(message)
    if tag:
        return f"`{{% {tag.group(1)} %}}` is not known here"
    for old, new in _WORDS:
        message = message.replace(old, new.replace("{what}", what))
    message = _QUOTED.sub(r"`\1`", message.rstrip("."))
    return message[:1].lower() + message[1:]


def reads_of_text(text: str) -> frozenset[str]:
    """The variables a templated text reads (none if it does not parse)."""
    return parse_text(text).reads


def reads_of_expression(source: str) -> frozenset[str]:
    """The variables an expression reads (none if it does not parse)."""
    return parse_expression(source).reads


def inner_span(text: ast.Text, start: int, end: int) -> Span:
    """The span of `text.value[start:end]` in the file, or the whole text when escapes make
    the offsets differ between the value and what was written."""
    span = text.span
    if span.end - span.start != len(text.value) + 2:
        return span
    return Span(span.file, span.start + 1 + start, span.start + 1 + end)


def locate_in_text(text: ast.Text, name: str) -> Span:
    """Where `name` is read inside the `{{ }}` / `{% %}` parts of a text (else the text)."""
    pattern = _name_pattern(name)
    for block in _BLOCKS.finditer(text.value):
        found = pattern.search(block.group(0))
        if found:
            start = block.start() + found.start()
            return inner_span(text, start, start + len(name))
    return text.span


def locate_in_expression(expr: ast.Expr, name: str) -> Span:
    """Where `name` is read in an expression (else the whole expression)."""
    found = _name_pattern(name).search(expr.source)
    if not found:
        return expr.span
    start = expr.span.start + found.start()
    return Span(expr.span.file, start, start + len(name))


def blocks_of(value: str) -> list[tuple[int, str]]:
    """The `{{ … }}` and `{% … %}` parts of a text, with their offsets in it."""
    return [(block.start(), block.group(0)) for block in _BLOCKS.finditer(value)]


def broken_block(text: ast.Text) -> Span:
    """The first `{{ … }}` part of a text that does not parse on its own (else the text)."""
    for block in _BLOCKS.finditer(text.value):
        chunk = block.group(0)
        if chunk.startswith("{{") and parse_text(chunk).error is not None:
            return inner_span(text, block.start(), block.end())
    return text.span


@functools.lru_cache(maxsize=4096)
def _name_pattern(name: str) -> re.Pattern[str]:
    # Not after a dot (`user.name` reads `user`) and not inside a longer name.
    return re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)")
