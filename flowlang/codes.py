"""The catalogue of diagnostic codes: FL0xx syntax, FL1xx names, FL2xx flow graph,
FL3xx templates and expressions, FL4xx Messenger limits, FL5xx retired platform features,
FL900 internal errors. Codes are stable: never renumber or reuse one. Each has a page in
docs/errors.md and at least one golden case in tests/golden/errors/."""

from __future__ import annotations

from dataclasses import dataclass

from flowlang.diagnostics import Severity


@dataclass(frozen=True, slots=True)
class DiagnosticCode:
    """A stable code with its default severity and message template."""

    code: str
    name: str
    severity: Severity
    template: str


E, W = Severity.ERROR, Severity.WARNING

# -- FL0xx: reading and parsing
TAB_INDENT = DiagnosticCode("FL001", "tab-indent", E, "this line is indented with a tab")
SYNTAX = DiagnosticCode("FL002", "syntax", E, "{message}")
UNCLOSED_TEXT = DiagnosticCode("FL003", "unclosed-text", E, "this text has no closing quote")
BAD_INDENT = DiagnosticCode(
    "FL004", "bad-indent", E, "this line's indentation does not line up with any line above"
)
BAD_CHARACTER = DiagnosticCode("FL005", "bad-character", E, "{message}")
UNEXPECTED_END = DiagnosticCode("FL006", "unexpected-end", E, "{message}")
NOT_UTF8 = DiagnosticCode("FL007", "not-utf8", E, "this file is not UTF-8 text")
UNEXPECTED_INDENT = DiagnosticCode(
    "FL008", "unexpected-indent", E, "this line is indented more than {what} allows"
)

# -- FL1xx: names and references
DUPLICATE_FLOW = DiagnosticCode("FL101", "duplicate-flow", E, "there are two flows named `{name}`")
DUPLICATE_STEP = DiagnosticCode(
    "FL102", "duplicate-step", E, "flow `{flow}` has two steps named `{name}`"
)
DUPLICATE_TEMPLATE = DiagnosticCode(
    "FL103", "duplicate-template", E, "there are two templates named `{name}`"
)
UNKNOWN_STEP = DiagnosticCode("FL104", "unknown-step", E, "flow `{flow}` has no step `{name}`")
UNKNOWN_FLOW = DiagnosticCode("FL105", "unknown-flow", E, "there is no flow named `{name}`")
UNKNOWN_TEMPLATE = DiagnosticCode(
    "FL106", "unknown-template", E, "there is no template named `{name}`"
)
UNKNOWN_VARIABLE = DiagnosticCode(
    "FL107", "unknown-variable", E, "`{name}` is never set by any flow"
)
TEMPLATE_ARGUMENTS = DiagnosticCode("FL108", "template-arguments", E, "{message}")
DUPLICATE_SETTING = DiagnosticCode(
    "FL109", "duplicate-setting", E, "`{setting}` is given twice in {where}"
)
DUPLICATE_PAGE = DiagnosticCode(
    "FL110", "duplicate-page", E, "the page is configured in more than one place"
)
RESERVED_NAME = DiagnosticCode(
    "FL111", "reserved-name", E, "`{name}` is a reserved name and cannot be set"
)
NOT_ALLOWED_HERE = DiagnosticCode("FL112", "not-allowed-here", E, "{message}")
DUPLICATE_CHOICE = DiagnosticCode(
    "FL113", "duplicate-choice", E, "the choice `{title}` is offered twice in this question"
)
NO_STEPS = DiagnosticCode("FL114", "no-steps", E, "flow `{flow}` has no steps")
UNKNOWN_USER_FIELD = DiagnosticCode(
    "FL115", "unknown-user-field", E, "the user profile has no field `{field}`"
)

# -- FL2xx: the flow graph
UNREACHABLE_STEP = DiagnosticCode(
    "FL201", "unreachable-step", W, "step `{name}` can never be reached"
)
READ_BEFORE_SET = DiagnosticCode(
    "FL202", "read-before-set", W, "`{name}` may be used here before it is set"
)
LOOP_WITHOUT_WAIT = DiagnosticCode(
    "FL203", "loop-without-wait", E, "this loop can run forever without waiting for the user"
)
TRIGGER_CONFLICT = DiagnosticCode("FL204", "trigger-conflict", E, "{message}")
FLOW_NEVER_STARTS = DiagnosticCode(
    "FL205", "flow-never-starts", W, "flow `{flow}` has no trigger and no other flow starts it"
)
UNREACHABLE_CODE = DiagnosticCode(
    "FL206", "unreachable-code", W, "this line can never run: the line before it leaves the step"
)
CALL_CYCLE = DiagnosticCode("FL207", "call-cycle", E, "flow `{flow}` ends up calling itself")

# -- FL3xx: templates, expressions and patterns
TEMPLATE_SYNTAX = DiagnosticCode(
    "FL301", "template-syntax", E, "this text has a broken `{{{{ }}}}` part: {message}"
)
EXPRESSION_SYNTAX = DiagnosticCode(
    "FL302", "expression-syntax", E, "this expression is not valid: {message}"
)
BAD_PATTERN = DiagnosticCode(
    "FL303", "bad-pattern", E, "this pattern is not a valid regular expression: {message}"
)
GREETING_TOKEN = DiagnosticCode(
    "FL304",
    "greeting-token",
    E,
    "a greeting can only use `{{{{user_first_name}}}}`, `{{{{user_last_name}}}}` and "
    "`{{{{user_full_name}}}}`",
)

# -- FL4xx: Messenger limits
TEXT_TOO_LONG = DiagnosticCode(
    "FL401",
    "text-too-long",
    E,
    "this text can be {length} characters long; Messenger allows {limit}",
)
TOO_MANY_BUTTONS = DiagnosticCode(
    "FL402", "too-many-buttons", E, "this message has {count} buttons; Messenger allows {limit}"
)
TOO_MANY_CARDS = DiagnosticCode(
    "FL403", "too-many-cards", E, "this carousel has {count} cards; Messenger allows {limit}"
)
TOO_MANY_QUICK_REPLIES = DiagnosticCode(
    "FL404",
    "too-many-quick-replies",
    E,
    "this message has {count} quick replies; Messenger allows {limit}",
)
TITLE_TOO_LONG = DiagnosticCode(
    "FL405",
    "title-too-long",
    E,
    "this {what} title is {length} characters long; Messenger allows {limit}",
)
PAYLOAD_TOO_LONG = DiagnosticCode(
    "FL406",
    "payload-too-long",
    E,
    "this payload is {length} characters long; Messenger allows {limit}",
)
MENU_TOO_LARGE = DiagnosticCode(
    "FL407", "menu-too-large", E, "this menu has {count} items; Messenger allows {limit}"
)
TOO_MANY_ICE_BREAKERS = DiagnosticCode(
    "FL408", "too-many-ice-breakers", E, "there are {count} ice breakers; Messenger allows {limit}"
)
BAD_URL = DiagnosticCode("FL409", "bad-url", E, "{message}")
MISSING_DEFAULT_LOCALE = DiagnosticCode(
    "FL410",
    "missing-default-locale",
    E,
    "the {what} has versions for other languages but none for everyone",
)
MENU_WITHOUT_GET_STARTED = DiagnosticCode(
    "FL411", "menu-without-get-started", E, "a persistent menu needs a Get Started button"
)
EMPTY_TEXT = DiagnosticCode("FL412", "empty-text", E, "this text is empty")
BAD_NUMBER = DiagnosticCode("FL413", "bad-number", E, "{message}")
TOO_MANY_DOMAINS = DiagnosticCode(
    "FL414",
    "too-many-domains",
    E,
    "there are {count} whitelisted domains; Messenger allows {limit}",
)

# -- FL5xx: platform features Meta retired
LIST_TEMPLATE = DiagnosticCode(
    "FL501", "list-template", E, "Messenger no longer supports the list template"
)
NESTED_MENU = DiagnosticCode(
    "FL502", "nested-menu", E, "Messenger no longer supports menus inside the persistent menu"
)
RETIRED_TAG = DiagnosticCode(
    "FL503", "retired-tag", E, "the message tag `{tag}` was retired by Meta on 27 April 2026"
)
UNKNOWN_TAG = DiagnosticCode("FL504", "unknown-tag", E, "`{tag}` is not a Messenger message tag")

# -- FL9xx: bugs in flowc itself
INTERNAL = DiagnosticCode(
    "FL900", "internal", E, "flowc hit an internal error; this is a bug in flowc, not in your flow"
)

ALL_CODES: tuple[DiagnosticCode, ...] = tuple(
    value for value in globals().values() if isinstance(value, DiagnosticCode)
)
BY_CODE: dict[str, DiagnosticCode] = {c.code: c for c in ALL_CODES}
