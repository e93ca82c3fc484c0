"""`flowc test`: run the transcript tests beside the flows and print the report.

Exit codes: 0 every test passed (and coverage met `--min-coverage`), 1 something failed
(a test, a transcript mistake, a compile error), 2 the command was used wrongly (no such
path, no `.flow` or `.transcript` files found, an unknown option)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click

from flowlang.render import render
from runtime.testing import FlowCoverage, TestReport, TestResult, run_tests

_FORMATS = ("text", "json")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def render_result(result: TestResult) -> list[str]:
    """One test's lines: PASS/FAIL with its name and, on failure, where and the diff."""
    if result.failure is None:
        return [f"  PASS  {result.name}"]
    failure = result.failure
    lines = [
        f"  FAIL  {result.name}  ({result.file}:{result.line})",
        f"        line {failure.line}: {failure.message}",
    ]
    if failure.diff:
        lines.append("        - what the test expects   + what the bot sent")
        for entry in failure.diff:
            where = f"line {entry.line}" if entry.line is not None else ""
            lines.append(f"        {where:>9} {entry.sign} {entry.text}".rstrip())
    return lines


def _percent(value: float) -> str:
    return f"{round(value, 1):g}%"


def render_coverage(coverage: Sequence[FlowCoverage], min_coverage: float) -> list[str]:
    """The coverage table: visited/all steps per flow, then the steps no test visited."""
    if not coverage:
        return []
    width = max(len(c.flow) for c in coverage)
    lines = ["Step coverage (steps the tests visited / all steps):"]
    for c in coverage:
        low = "  below the minimum" if c.percent < min_coverage else ""
        lines.append(
            f"  {c.flow:<{width}}  {c.visited:>3}/{c.steps:<3} {_percent(c.percent):>5}"
            f"   {c.file}:{c.line}{low}"
        )
        for step in c.uncovered:
            lines.append(f"  {'':<{width}}    not visited: step {step.step} (line {step.line})")
    return lines


def render_text(report: TestReport) -> str:
    """The whole report as text, for people."""
    out: list[str] = []
    if report.compile is not None and report.compile.diagnostics:
        out.append(render(report.compile.diagnostics, report.compile.sources, "rich"))
        out.append("")
    if report.compile_errors:
        count = _plural(len(report.compile_errors), "error")
        out.append(f"The flows have {count}: fix them first, no test was run.")
        return "\n".join(out)
    errors = report.transcript_errors
    if errors:
        out.append(render(errors, report.transcript_sources, "rich"))
        out.append("")
    by_file: dict[str, list[TestResult]] = {}
    for result in report.results:
        by_file.setdefault(result.file, []).append(result)
    for file, results in by_file.items():
        out.append(file)
        for result in results:
            out.extend(render_result(result))
        out.append("")
    coverage = render_coverage(report.coverage, report.min_coverage)
    if coverage:
        out.extend([*coverage, ""])
    out.append(summary(report))
    return "\n".join(out)


def summary(report: TestReport) -> str:
    """The last line: "5 tests: 4 passed, 1 failed" (plus unreadable files, low coverage)."""
    failed = len(report.failed)
    parts = [f"{len(report.results) - failed} passed"]
    if failed:
        parts.append(f"{failed} failed")
    broken = sum(1 for t in report.transcripts if t.errors)
    if broken:
        parts.append(f"{_plural(broken, 'transcript file')} with mistakes (not run)")
    low = report.low_coverage
    if low:
        parts.append(f"{_plural(len(low), 'flow')} below {report.min_coverage:g}% step coverage")
    return f"{_plural(len(report.results), 'test')}: {', '.join(parts)}"


@click.command("test")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_FORMATS, case_sensitive=False),
    default="text",
    show_default=True,
    help="text (for people) or json (for programs; see docs/testing.md).",
)
@click.option(
    "--min-coverage",
    type=click.FloatRange(0, 100),
    default=0,
    show_default=True,
    metavar="PERCENT",
    help="Fail when the tests visit fewer than this share of a flow's steps "
    "(100: every step of every flow must be tested).",
)
def test_command(paths: tuple[str, ...], fmt: str, min_coverage: float) -> None:
    """Run the transcript tests written beside your flows.

    A transcript (a file ending in .transcript) is a script of a conversation: what the
    person does and what the bot must answer. flowc plays each test against your flows, as
    if a real person were writing, and tells you which tests pass, what the bot said instead
    when one fails, and which steps of your flows no test has visited yet.

    PATH can be a folder (every .flow and .transcript file inside it is used), a .flow file
    or a .transcript file. All the .flow files are compiled together; mistakes in them are
    shown like `flowc check` shows them, and then no test runs.

    \b
    Examples:
      flowc test flows/
      flowc test flows/welcome.transcript
      flowc test flows/ --min-coverage 100 --format json

    The result is 0 when every test passes, 1 when something failed, and 2 when the command
    itself was wrong (for example a folder that does not exist). The format of transcripts
    is explained in docs/testing.md.
    """
    for raw in paths:
        if not Path(raw).exists():
            raise click.UsageError(f"there is no file or folder named {raw!r}")
    report = run_tests(paths, min_coverage=min_coverage)
    where = ", ".join(repr(p) for p in paths)
    if not report.flow_files:
        raise click.UsageError(f"no .flow files found in {where}")
    if not report.transcript_files:
        raise click.UsageError(
            f"no .transcript files found in {where}; write one beside your flows "
            "(see docs/testing.md)"
        )
    if fmt.lower() == "json":
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(report))
    raise SystemExit(0 if report.ok else 1)
