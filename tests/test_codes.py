"""The diagnostic code catalogue: stable-looking unique codes, a golden case for each, and
message templates whose fields are exactly what the compiler passes when it reports them."""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_golden_errors import CASES, compile_case

from flowlang import codes
from flowlang.diagnostics import Severity

ROOT = Path(__file__).resolve().parent.parent
FLOWLANG = ROOT / "flowlang"

#: Codes with a direct test in test_golden_errors.py instead of a golden case: a file that is
#: not UTF-8 cannot be a chunk of a text file, and an internal error needs a broken check.
DIRECT_TESTS = {codes.NOT_UTF8.code, codes.INTERNAL.code}

#: Keyword arguments of DiagnosticSink.report that are not message fields.
REPORT_OPTIONS = {"label", "help", "secondary", "notes", "severity"}


def template_fields(code: codes.DiagnosticCode) -> set[str]:
    """The `{field}` names a message template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(code.template) if name}


def test_codes_are_unique_and_well_formed() -> None:
    numbers = [c.code for c in codes.ALL_CODES]
    names = [c.name for c in codes.ALL_CODES]
    assert len(numbers) == len(set(numbers))
    assert len(names) == len(set(names))
    for code in codes.ALL_CODES:
        assert re.fullmatch(r"FL\d{3}", code.code), code
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", code.name), code
        assert code.severity in (Severity.ERROR, Severity.WARNING), code
        assert code.template and not code.template.endswith("."), code
    assert {c.code: c for c in codes.ALL_CODES} == codes.BY_CODE


def test_codes_are_grouped_by_hundreds() -> None:
    """FL0xx syntax, FL1xx names, FL2xx graph, FL3xx templates, FL4xx limits, FL5xx retired
    features, FL9xx flowc's own bugs; the catalogue lists them in order."""
    numbers = [int(c.code[2:]) for c in codes.ALL_CODES]
    assert numbers == sorted(numbers)
    assert {n // 100 for n in numbers} <= {0, 1, 2, 3, 4, 5, 9}


def test_every_template_formats_with_its_own_fields() -> None:
    for code in codes.ALL_CODES:
        fields = {name: "x" for name in template_fields(code)}
        message = code.template.format(**fields)
        assert "{x}" not in message and message.strip(), code


def _golden_codes() -> set[str]:
    return {e.code for case in CASES for e in case.expectations}


def test_every_code_has_a_golden_case() -> None:
    missing = sorted({c.code for c in codes.ALL_CODES} - _golden_codes() - DIRECT_TESTS)
    assert not missing, f"codes without a golden error case: {missing}"


def test_golden_cases_only_use_known_codes() -> None:
    assert _golden_codes() <= set(codes.BY_CODE)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_reported_diagnostic_formats_its_template(case: object) -> None:
    """Formatting a template with missing fields would raise inside a check and become FL900;
    so every golden diagnostic must be free of FL900 and carry a non-empty message."""
    result = compile_case(case)  # type: ignore[arg-type]
    for diagnostic in result.diagnostics:
        assert diagnostic.code != codes.INTERNAL.code, diagnostic.notes
        assert diagnostic.message.strip()
        assert "{" not in diagnostic.message.replace("{{", "").replace("{%", "")


# ------------------------------------------------------------------ call sites


class CallSite:
    """One `sink.report(codes.X, …)` in the compiler's source."""

    def __init__(self, code: str, fields: set[str] | None, where: str) -> None:
        self.code = code
        self.fields = fields  # None: passed through **kwargs, not checkable
        self.where = where


def _is_report(call: ast.Call) -> bool:
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "report"):
        return False
    receiver = func.value
    name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
    return name.endswith("sink")


def _code_names(expr: ast.expr, function: ast.FunctionDef | None, tree: ast.Module) -> list[str]:
    """The `codes.X` an argument stands for: written directly, or a parameter of the
    enclosing function that its callers (in the same module) pass as `codes.X`."""
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        return [expr.attr] if expr.value.id == "codes" else []
    if not isinstance(expr, ast.Name) or function is None:
        return []
    params = [a.arg for a in function.args.args]
    if expr.id not in params:
        return []
    position = params.index(expr.id) - (1 if params and params[0] in ("self", "cls") else 0)
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func
        called = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
        if called != function.name:
            continue
        args = [k.value for k in node.keywords if k.arg == expr.id]
        if position < len(node.args):
            args.append(node.args[position])
        for arg in args:
            found += _code_names(arg, None, tree)
    return found


def call_sites() -> Iterator[CallSite]:
    """Every report call under flowlang/, with the code(s) it reports and its fields."""
    for path in sorted(FLOWLANG.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        enclosing: dict[int, ast.FunctionDef] = {}
        for function in functions:  # outer functions first, so inner ones win
            for node in ast.walk(function):
                enclosing[id(node)] = function
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _is_report(node)):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            first = node.args[0] if node.args else None
            assert first is not None, f"{where}: report() without a code"
            names = _code_names(first, enclosing.get(id(node)), tree)
            assert names, f"{where}: cannot tell which code this reports"
            keywords = [k.arg for k in node.keywords]
            fields = None if None in keywords else {k for k in keywords if k} - REPORT_OPTIONS
            for name in names:
                yield CallSite(name, fields, where)


SITES = list(call_sites())


def test_call_sites_pass_exactly_the_template_fields() -> None:
    assert SITES, "no report() call found"
    wrong = []
    for site in SITES:
        code = getattr(codes, site.code)
        if site.fields is not None and site.fields != template_fields(code):
            wrong.append(
                f"{site.where}: {code.code} gets {sorted(site.fields)}, "
                f"template needs {sorted(template_fields(code))}"
            )
    assert not wrong, "\n".join(wrong)


def test_every_code_is_reported_somewhere() -> None:
    reported = {getattr(codes, site.code).code for site in SITES}
    unused = sorted({c.code for c in codes.ALL_CODES} - reported)
    assert not unused, f"codes no part of flowc reports: {unused}"
