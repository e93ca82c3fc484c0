"""The Lark facade: text in, syntax tree or plain-language syntax errors out.

The LALR parser is built once per process. Lark's exceptions and terminal names end here:
every failure becomes a Diagnostic that says in words what was expected, what was found, and
which block was open."""

from __future__ import annotations

import difflib
import functools
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.indenter import Indenter

from flowlang import ast, codes
from flowlang.diagnostics import DiagnosticSink
from flowlang.lower import RULES, Lowering
from flowlang.source import SourceFile

GRAMMAR_PATH = Path(__file__).resolve().parent.parent / "grammar" / "flow.lark"


#: The deepest block nesting a file may use (flow, step and 30 levels of `if` inside it). Far
#: more than any flow needs, and far from the recursion limits of the checks and the build.
MAX_NESTING = 32


class _TooDeep(Exception):
    """A line opens a block deeper than MAX_NESTING (raised inside the postlexer)."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class _BadIndent(Exception):
    """A line dedents to a column that no open block uses (raised inside the postlexer)."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class FlowIndenter(Indenter):
    """Turns indentation into _INDENT/_DEDENT tokens and remembers where a bad dedent is."""

    NL_type = "_NL"
    OPEN_PAREN_types: list[str] = []  # noqa: RUF012 - Lark's Indenter interface
    CLOSE_PAREN_types: list[str] = []  # noqa: RUF012
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8

    def handle_NL(self, token: Token) -> Iterator[Token]:  # Lark's name for it
        indent_str = token.rsplit("\n", 1)[1]
        indent = len(indent_str)
        yield token
        if indent > self.indent_level[-1]:
            self.indent_level.append(indent)
            if len(self.indent_level) > MAX_NESTING + 1:
                raise _TooDeep(token.end_pos)
            yield Token.new_borrow_pos(self.INDENT_type, indent_str, token)
            return
        while indent < self.indent_level[-1]:
            self.indent_level.pop()
            yield Token.new_borrow_pos(self.DEDENT_type, indent_str, token)
        if indent != self.indent_level[-1]:
            raise _BadIndent(token.end_pos)


# Named terminals (`NAME: ...`) are kept in Lark's tree; keywords and `_`-names are not.
_TERMINAL_DEF = re.compile(r"^([A-Z][A-Z0-9_]*)(?:\.-?\d+)?\s*:", re.MULTILINE)
_KEEP_ALL_RULE = re.compile(r"^!\??([a-z][a-z0-9_]*)(?:\.-?\d+)?\s*:", re.MULTILINE)
_LOCK = threading.Lock()
_NO_SOURCE = SourceFile("<none>", "")


@functools.cache
def _parser_and_lowering() -> tuple[Lark, Lowering]:
    """The one LALR parser of the process; it lowers to the AST as it parses (no parse tree)."""
    grammar = GRAMMAR_PATH.read_text(encoding="utf-8")
    lowering = Lowering(
        kept_terminals=_TERMINAL_DEF.findall(grammar),
        keep_all_rules=_KEEP_ALL_RULE.findall(grammar),
    )
    parser = Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        postlex=FlowIndenter(),
        transformer=lowering,  # type: ignore[arg-type]  # any object with rule callbacks
        keep_all_tokens=True,  # keyword tokens give lowering its spans
        propagate_positions=False,
        maybe_placeholders=False,
    )
    # Lark calls `lowering.<rule>` for every rule that has such an attribute, `_rules` too.
    names = {r.origin.name for r in parser.rules}
    missing = {n for n in names if not n.startswith("_")} - set(RULES)
    clashing = {n for n in names if n.startswith("_") and hasattr(lowering, n)}
    if missing or clashing:
        raise RuntimeError(f"Lowering does not match the grammar: {sorted(missing | clashing)}")
    return parser, lowering


def _parser() -> Lark:
    return _parser_and_lowering()[0]


def parse(source: SourceFile, sink: DiagnosticSink) -> ast.Module | None:
    """Parse and lower one file. On a syntax error, report it and return None."""
    text = source.text
    if _report_tabs(source, sink) or _report_lone_cr(source, sink):
        return None
    if not text.endswith("\n"):
        text += "\n"
    parser, lowering = _parser_and_lowering()
    # Lowering reports (FL109) go in their own sink: a file with a syntax error gets only that.
    lowered = DiagnosticSink()
    try:
        with _LOCK:
            lowering.begin(source, lowered)
            try:
                module: ast.Module = parser.parse(text)
            finally:
                lowering.begin(_NO_SOURCE, DiagnosticSink())  # do not keep the text alive
    except _BadIndent as exc:
        line = source.position(exc.offset).line
        sink.report(
            codes.BAD_INDENT,
            source.line_span(line),
            label="this indentation",
            help="indent this line exactly as much as the lines it belongs with (usually 2 more "
            "spaces than the line that opens its block)",
        )
    except _TooDeep as exc:
        line = source.position(exc.offset).line
        sink.report(
            codes.UNEXPECTED_INDENT,
            source.line_span(line),
            what=f"the deepest nesting ({MAX_NESTING} blocks)",
            label="nested too deeply",
            help="move the inner lines into a step of their own and `goto` it, or use `elif` "
            "instead of an `if` inside `else`",
        )
    except UnexpectedInput as exc:
        _report_syntax_error(source, exc, sink)
    else:
        sink.diagnostics.extend(lowered.diagnostics)
        return module
    return None


# ------------------------------------------------------------------ tabs


def _report_tabs(source: SourceFile, sink: DiagnosticSink) -> bool:
    found = False
    for number, line in enumerate(source.text.split("\n"), start=1):
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        indent = line[: len(line) - len(stripped)]
        if "\t" in indent:
            start = source.line_starts[number - 1]
            tab = start + indent.index("\t")
            sink.report(
                codes.TAB_INDENT,
                source.span(tab, tab + 1),
                label="tab",
                help="indent with spaces only (2 per level); most editors can convert tabs to "
                "spaces",
            )
            found = True
    return found


_LONE_CR = re.compile(r"\r(?!\n)")


def _report_lone_cr(source: SourceFile, sink: DiagnosticSink) -> bool:
    """A carriage return not followed by a line feed (old Mac line endings, or a stray one)
    is a line break in an editor but not here: a comment would silently swallow every line
    after it, so such a file is refused as a whole, at the first one."""
    found = _LONE_CR.search(source.text)
    if found is None:
        return False
    sink.report(
        codes.BAD_CHARACTER,
        source.span(found.start(), found.start() + 1),
        message="this line ends with a lone carriage return (`\\r`), not a line feed",
        label="here",
        help="save the file with LF (Unix) or CRLF (Windows) line endings; most editors offer "
        "it in the status bar or in 'Save as'",
    )
    return True


# ------------------------------------------------------------------ syntax errors

_TERMINAL_WORDS = {
    "NAME": "a name",
    "STRING": 'a text in double quotes ("…")',
    "NUMBER": "a number",
    "EXPR": "an expression",
    "_NL": "the end of the line",
    "_INDENT": "an indented line",
    "_DEDENT": "the end of the block",
    "GOTO": "`goto`",
    "WEBVIEW": "a window height (`compact`, `tall` or `full`)",
    "UNIT": "`seconds`",
    "TRIES": "`tries`",
    "INTERRUPT": "`interrupt`",
    "$END": "the end of the file",
}

# Keywords that only ever start a longer phrase are shown as the phrase.
_PHRASES = {
    "user": "user says", "get": "get started", "quick": "quick reply", "referral": "referral",
    "message": "message matches", "nothing": "nothing else matches", "error": "error message",
    "hand": "hand over", "take": "take back", "ice": "ice breakers",
    "whitelisted": "whitelisted domains", "after": "after … tries",
}  # fmt: skip

# Words to show first when many are possible (what an author most likely meant).
_PREFERRED = (
    "say", "ask", "set", "if", "goto", "end", "send", "step", "when", "user says",
    "get started", "postback", "title", "priority", "flow", "template", "page", "button",
    "quick reply", "choice", "expect", "or", "as", "with",
)  # fmt: skip

_BLOCK_OPENERS = re.compile(
    r"(flow|step|template)\s+([A-Za-z_][A-Za-z0-9_]*)|(page|ask|say|if|elif|else|carousel|card"
    r"|menu|submenu|ice breakers|list)\b"
)


def _words_for(expected: set[str]) -> list[str]:
    terminals = {t.name: t for t in _parser().terminals}
    words: list[str] = []
    for name in expected:
        if name in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            keyword = terminals[name].pattern.value
            words.append(f"`{_PHRASES.get(keyword, keyword)}`")
        elif not name.startswith("_"):
            words.append(name.lower())
    order = {f"`{w}`": i for i, w in enumerate(_PREFERRED)}
    return sorted(set(words), key=lambda w: (order.get(w, len(order)), w))


def _keywords_for(expected: set[str]) -> list[str]:
    terminals = {t.name: t for t in _parser().terminals}
    words = [
        terminals[n].pattern.value
        for n in expected
        if n in terminals and terminals[n].pattern.type == "str"
    ]
    if "GOTO" in expected:  # a pattern terminal (`goto` / `go to`), not a plain keyword
        words.append("goto")
    return words


def _join(words: list[str], limit: int = 8) -> str:
    if len(words) > limit:
        words = [*words[:limit], "…"]
        return ", ".join(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _describe_found(token: Token) -> tuple[str, str]:
    """Describe a token in words; also return its first word (for spelling suggestions)."""
    if token.type in ("_NL", "$END", "_DEDENT", "_INDENT"):
        return _TERMINAL_WORDS[token.type], ""
    value = str(token)
    if value.startswith('"'):
        shown = value if len(value) <= 30 else value[:27] + '…"'
        return f"the text {shown}", ""
    word = re.match(r"\S+", value)
    first = word.group(0) if word else value
    if token.type == "NUMBER":
        return f"the number {first}", ""
    return f"`{first}`", first


def _open_blocks(source: SourceFile, line: int) -> str:
    """Name the blocks that enclose a line, innermost first, from the indentation above it."""
    text = source.line_text(line)
    indent = len(text) - len(text.lstrip(" ")) if text.strip() else 10**9
    parts: list[str] = []
    for number in range(line - 1, 0, -1):
        above = source.line_text(number)
        stripped = above.strip()
        if not stripped or stripped.startswith("#"):
            continue
        level = len(above) - len(above.lstrip(" "))
        if level >= indent:
            continue
        indent = level
        match = _BLOCK_OPENERS.match(stripped)
        if match and match.group(1):
            parts.append(f"{match.group(1)} `{match.group(2)}`")
        elif match:
            parts.append(f"the `{match.group(3)}` on line {number}")
        if level == 0:
            break
    if not parts:
        return ""
    return "inside " + " of ".join(parts)


def _report_syntax_error(source: SourceFile, exc: UnexpectedInput, sink: DiagnosticSink) -> None:
    text = source.text
    if isinstance(exc, UnexpectedCharacters):
        _report_bad_character(source, exc.pos_in_stream, sink)
        return
    if not isinstance(exc, UnexpectedToken):
        offset = getattr(exc, "pos_in_stream", None) or len(text)
        sink.report(codes.SYNTAX, source.span(offset, offset), message="this line is not valid")
        return
    token = exc.token
    expected = _expected_by_parser(exc)
    first = str(token)[:1]
    if (
        token.type == "EXPR"
        and token.start_pos is not None
        and not (first.isalnum() or first in '_"{')
    ):
        # The root lexer swallowed a stray character into an expression; report the character.
        _report_bad_character(source, token.start_pos, sink)
        return
    if token.type == "$END" or token.start_pos is None:
        start = len(text.rstrip())
        where = _open_blocks(source, source.position(start).line + 1)
        sink.report(
            codes.UNEXPECTED_END,
            source.span(start, start),
            message=f"the file ended too early; expected {_join(_words_for(expected))}",
            notes=(f"the file ended {where}",) if where else (),
        )
        return
    offset = token.start_pos
    if token.type in ("_INDENT", "_DEDENT", "_NL"):
        # Positions of layout tokens are the line break before them; point at the next line.
        offset = token.end_pos if token.type == "_NL" else offset
        offset = _next_content(text, offset if token.type != "_NL" else token.start_pos)
    line = source.position(offset).line
    where = _open_blocks(source, line)
    if token.type == "_INDENT":
        sink.report(
            codes.UNEXPECTED_INDENT,
            source.line_span(line),
            what=f"the line above ({where})" if where else "the line above",
            label="indented too far",
            help="line this up with the line above, or remove the extra spaces",
        )
        return
    if "_INDENT" in expected and len(expected) <= 2:
        # A layout token sits at the end of the line that opened the block; any other token is
        # on a later line.
        if token.type in ("_DEDENT", "_NL"):
            opener = source.position(token.start_pos).line
        else:
            opener = _previous_content_line(source, line)
        sink.report(
            codes.UNEXPECTED_END,
            source.line_span(opener),
            message=f"`{_code_of(source.line_text(opener))}` needs indented lines below it",
            label="this block is empty",
            help="add at least one line below it, indented 2 spaces more",
        )
        return
    found, first_word = _describe_found(token)
    if token.type not in ("_NL", "_DEDENT", "_INDENT") and len(expected) > 1:
        line_start = source.line_starts[line - 1]
        if not text[line_start:offset].strip():
            expected = expected - {"_NL"}  # "the end of the line" means nothing at its start
    if token.type in ("_NL",):
        span = source.span(token.start_pos, token.start_pos)
    else:
        length = len(first_word) if first_word else len(str(token).split("\n")[0])
        span = source.span(offset, offset + max(1, length))
    message = f"expected {_join(_words_for(expected))}, found {found}"
    help_text = None
    if first_word:
        close = _closest_keyword(first_word.lower(), _keywords_for(expected))
        if close:
            help_text = f"did you mean `{close}`?"
        elif expected <= {"_NL", "_DEDENT"}:
            help_text = (
                f"this line is complete before `{first_word}`: remove it, or if it starts "
                "something new, put it on a line of its own"
            )
    sink.report(
        codes.SYNTAX,
        span,
        message=message,
        label="not expected here",
        help=help_text,
        notes=(f"this line is {where}",) if where else (),
    )


def _closest_keyword(word: str, keywords: list[str]) -> str | None:
    """The keyword most like `word`; on a tie, the more common one (`sey` → `say`, not `set`)."""
    close = difflib.get_close_matches(word, keywords, n=5)
    if not close:
        return None
    rank = {k: i for i, k in enumerate(_PREFERRED)}

    def score(keyword: str) -> tuple[float, int]:
        ratio = difflib.SequenceMatcher(None, word, keyword).ratio()
        return (ratio, -rank.get(keyword, len(rank)))

    return max(close, key=score)


def _expected_by_parser(exc: UnexpectedToken) -> set[str]:
    """The terminals the parser would accept next, exactly. Lark's `expected` is what the
    contextual lexer allowed (missing layout tokens such as _INDENT), and a parse-table row
    also holds rule names and, as LALR merges states, terminals that are only valid in other
    places (`as` after `say "Hi"`); trying each terminal on a copy of the parser settles it."""
    interactive = getattr(exc, "interactive_parser", None)
    if interactive is not None:
        try:
            accepted: set[str] = interactive.accepts()
        except Exception:  # an unexpected parser state: fall back on the table below
            accepted = set()
        if accepted:
            return accepted
    state = getattr(exc, "state", None)
    try:
        row = state.parse_conf.parse_table.states[state.position]  # type: ignore[union-attr]
    except AttributeError:
        return set(exc.expected)
    return {name for name in row if name.isupper()}  # terminals; rule names are lowercase


def _report_bad_character(source: SourceFile, offset: int, sink: DiagnosticSink) -> None:
    text = source.text
    char = text[offset] if offset < len(text) else ""
    line = source.position(offset).line
    line_end = source.line_starts[line - 1] + len(source.line_text(line))
    if char == '"':
        sink.report(
            codes.UNCLOSED_TEXT,
            source.span(offset, max(offset + 1, line_end)),
            label="this text starts here",
            help='end the text with a closing " on the same line (write \\" for a quote inside '
            "a text)",
        )
        return
    if char in "“”„‘’":
        message = f'`{char}` is a curly quote; texts need straight double quotes (")'
        help_text = 'replace the curly quotes around this text with "'
    elif char == "'":
        message = "texts go in double quotes (\"), not single quotes (')"
        help_text = "write \"like this\" instead of 'like this'"
    else:
        message = f"`{char}` cannot be used here"
        before = text[max(0, offset - 1)]
        help_text = (
            "names can only contain letters, digits and underscores (_)"
            if before.isalnum() or before == "_"
            else None
        )
    sink.report(
        codes.BAD_CHARACTER,
        source.span(offset, offset + 1),
        message=message,
        label="here",
        help=help_text,
    )


def _next_content(text: str, offset: int) -> int:
    """The first non-blank character at or after `offset`, skipping comment lines."""
    n = len(text)
    while offset < n:
        ch = text[offset]
        if ch in " \t\r\n":
            offset += 1
        elif ch == "#":
            nl = text.find("\n", offset)
            offset = n if nl == -1 else nl
        else:
            return offset
    return min(offset, max(0, n - 1))


def _code_of(line: str) -> str:
    """A line without its indentation and trailing comment (a `#` inside a text stays)."""
    in_text = False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            in_text = not in_text
        elif ch == "#" and not in_text:
            return line[:i].strip()
    return line.strip()


def _previous_content_line(source: SourceFile, line: int) -> int:
    for number in range(line - 1, 0, -1):
        stripped = source.line_text(number).strip()
        if stripped and not stripped.startswith("#"):
            return number
    return line
