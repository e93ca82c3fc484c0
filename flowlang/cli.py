"""The `flowc` command line: check, compile, schema and graph (runtime commands plug in).

Exit codes: 0 all good, 1 the flows have errors (or flowc failed), 2 the command was used
wrongly (no such file, no .flow files, an unknown option)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from flowlang.compiler import CompileResult
from flowlang.diagnostics import Diagnostic, Severity
from flowlang.graph import to_dot, to_mermaid
from flowlang.ir import FlowProgram
from flowlang.load import compile_paths, find_flow_files
from flowlang.render import STYLES, Style, render

#: Set this environment variable to see the Python traceback of an unexpected failure.
DEBUG_ENV = "FLOWC_DEBUG"

BUG_MESSAGE = (
    "flowc stopped because of an unexpected problem ({kind}). This is a bug in flowc, not in "
    "your flows. Please report it to the Flowlang maintainers with the command you ran and "
    "the .flow files it used (run it again with {debug}=1 to see the technical details)."
)


class _FlowcGroup(click.Group):
    """A click group that turns any unexpected exception into one plain message, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # The reader went away (`flowc schema | head`); there is nobody left to tell.
            _silence_stdout()
            ctx.exit(1)
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            click.echo(BUG_MESSAGE.format(kind=type(exc).__name__, debug=DEBUG_ENV), err=True)
            ctx.exit(1)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and _RUNTIME_LOAD_ERROR is not None:
            ctx.fail(
                f"No such command '{cmd_name}'. The chat and server commands could not be "
                f"loaded ({_RUNTIME_LOAD_ERROR}); this is a bug in flowc, please report it."
            )
        return command


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _use_color(choice: bool | None, err: bool = False) -> bool:
    """Colour when asked with --color; otherwise only on a terminal and without NO_COLOR."""
    if choice is not None:
        return choice
    if os.environ.get("NO_COLOR"):
        return False
    stream = sys.stderr if err else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def _flow_files(paths: Sequence[str]) -> list[Path]:
    """The .flow files named by `paths` (folders are searched); usage errors exit 2."""
    for raw in paths:
        if not Path(raw).exists():
            raise click.UsageError(f"there is no file or folder named {raw!r}")
    files = find_flow_files(paths)
    if not files:
        where = ", ".join(repr(p) for p in paths)
        raise click.UsageError(f"no .flow files found in {where}")
    return files


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summary(files: int, diagnostics: Sequence[Diagnostic]) -> str:
    """The last line of `flowc check`: "checked 4 files: 2 errors, 1 warning"."""
    errors = sum(d.severity is Severity.ERROR for d in diagnostics)
    warnings = sum(d.severity is Severity.WARNING for d in diagnostics)
    parts = []
    if errors:
        parts.append(_plural(errors, "error"))
    if warnings:
        parts.append(_plural(warnings, "warning"))
    return f"checked {_plural(files, 'file')}: {', '.join(parts) or 'no problems'}"


def check_exit_code(diagnostics: Sequence[Diagnostic], strict: bool) -> int:
    """1 when there are errors (or, with `strict`, warnings), else 0."""
    failing = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
    return 1 if any(d.severity in failing for d in diagnostics) else 0


def _echo_diagnostics(result: CompileResult, color: bool) -> None:
    """Diagnostics in the rich form on stderr (used by compile and graph)."""
    if result.diagnostics:
        text = render(result.diagnostics, result.sources, "rich", color=color)
        # click strips ANSI codes unless told the colour is wanted (e.g. `--color | less -R`).
        click.echo(text, err=True, color=color)


def _fail_on_errors(result: CompileResult, color: bool, what: str) -> FlowProgram:
    """The compiled program; on errors, show them on stderr and exit 1 (`what` was not done)."""
    _echo_diagnostics(result, color)
    if result.errors or result.program is None:
        count = _plural(len(result.errors), "error")
        click.echo(f"\n{what}: {count} to fix first", err=True)
        raise SystemExit(1)
    return result.program


@click.group(
    cls=_FlowcGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def main() -> None:
    """Flowlang's tool for .flow files: check them for mistakes, compile them for the bot,
    and draw them as diagrams.

    \b
    Start with:
      flowc check flows/        look for mistakes in every flow
      flowc graph flows/welcome.flow
                                draw a flow as a diagram

    Run `flowc COMMAND --help` to learn more about a command.
    """
    if os.environ.get(DEBUG_ENV):
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


_COLOR_OPTION = click.option(
    "--color/--no-color",
    default=None,
    help="Colour the problems shown. Default: colour only when writing to a terminal and the "
    "NO_COLOR environment variable is not set; --color always colours.",
)


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option(
    "--format",
    "style",
    type=click.Choice(STYLES, case_sensitive=False),
    default="rich",
    show_default=True,
    help="How to show problems: rich (the line with the mistake underlined), short (one line "
    "each), json (for programs) or github (annotations in GitHub pull requests).",
)
@click.option("--strict", is_flag=True, help="Treat warnings as errors (the check fails on them).")
@_COLOR_OPTION
def check(paths: tuple[str, ...], style: str, strict: bool, color: bool | None) -> None:
    """Look for mistakes in .flow files and explain how to fix them.

    PATH can be a .flow file or a folder (every .flow file inside it is checked). All files
    are checked together, so a flow may start or call a flow from another file. Every problem
    in every file is shown in one run.

    \b
    Examples:
      flowc check flows/
      flowc check flows/welcome.flow flows/page.flow
      flowc check flows/ --format github --strict

    When it finishes, flowc check tells scripts and CI how it went with its exit code: 0 when
    there are no errors, 1 when there are (or warnings, with --strict), and 2 when the command
    itself was wrong (for example a folder that does not exist).
    """
    files = _flow_files(paths)
    result = compile_paths(files)
    chosen: Style = style.lower()  # type: ignore[assignment]
    painted = _use_color(color) and chosen in ("rich", "short")
    output = render(result.diagnostics, result.sources, chosen, color=painted)
    if chosen in ("json", "github"):
        if output:
            click.echo(output)
    else:
        if output:
            click.echo(output + ("\n" if chosen == "rich" else ""), color=painted)
        click.echo(summary(len(files), result.diagnostics))
    raise SystemExit(check_exit_code(result.diagnostics, strict))


@main.command("compile")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the compiled flows to this file instead of showing them.",
)
@_COLOR_OPTION
def compile_command(paths: tuple[str, ...], output: str | None, color: bool | None) -> None:
    """Turn .flow files into the compiled form (JSON) that the bot runs.

    PATH can be a .flow file or a folder; all files are compiled together into one program.
    When there are mistakes, they are shown and nothing is written. Warnings are shown but do
    not stop the compile.

    \b
    Examples:
      flowc compile flows/ -o build/flows.json
      flowc compile flows/lead_generation.flow
    """
    files = _flow_files(paths)
    result = compile_paths(files)
    program = _fail_on_errors(result, _use_color(color, err=True), "nothing was written")
    text = program.model_dump_json(indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        click.echo(f"cannot write {output}: {exc.strerror or exc}", err=True)
        raise SystemExit(1) from None
    click.echo(f"wrote {_plural(len(program.flows), 'flow')} to {output}", err=True)


@main.command()
def schema() -> None:
    """Show the JSON Schema of the compiled form.

    Tools and editors can use it to check a compiled file (the output of `flowc compile`).

    \b
    Example:
      flowc schema > flowlang.schema.json
    """
    click.echo(json.dumps(FlowProgram.model_json_schema(), indent=2))


@main.command()
@click.argument("file", metavar="FILE")
@click.option(
    "--format",
    "style",
    type=click.Choice(["mermaid", "dot"], case_sensitive=False),
    default="mermaid",
    show_default=True,
    help="mermaid (shown as a picture by GitHub and many Markdown editors) or dot (Graphviz).",
)
@click.option("--flow", "flow_name", metavar="NAME", help="Draw only the flow with this name.")
@_COLOR_OPTION
def graph(file: str, style: str, flow_name: str | None, color: bool | None) -> None:
    """Draw the flows of a .flow file as a diagram.

    Each step is a box, and each arrow shows how the conversation moves on, labelled with the
    button, choice or condition that takes it. A dashed arrow calls another flow and comes back.

    The other .flow files in the same folder are read too, so buttons and calls to their
    flows are understood, but only the flows written in FILE are drawn.

    \b
    Examples:
      flowc graph flows/lead_generation.flow > lead_generation.mmd
      flowc graph flows/welcome.flow --format dot | dot -Tsvg > welcome.svg
      flowc graph flows/welcome.flow --flow welcome
    """
    path = Path(file)
    if not path.is_file():
        raise click.UsageError(f"there is no file named {file!r}")
    siblings = sorted(path.parent.glob("*.flow"))
    result = compile_paths([path, *siblings])
    program = _fail_on_errors(result, _use_color(color, err=True), "no diagram was drawn")
    if flow_name is not None:
        if flow_name not in program.flows:
            known = ", ".join(sorted(program.flows)) or "none"
            raise click.UsageError(f"there is no flow named {flow_name!r} (flows: {known})")
        flows = [program.flows[flow_name]]
    else:
        flows = [f for f in program.flows.values() if f.source.file == str(path)]
        if not flows:
            raise click.UsageError(f"{file} has no flows to draw")
    drawn = to_dot(flows) if style.lower() == "dot" else to_mermaid(flows)
    click.echo(drawn, nl=False)


# -- Optional runtime commands (chat, test, serve, …) live in runtime/commands.py, which may
# not exist in every installation; `COMMANDS` there lists click commands to add.
_RUNTIME_LOAD_ERROR: str | None = None


def _add_runtime_commands() -> None:
    global _RUNTIME_LOAD_ERROR
    try:
        if importlib.util.find_spec("runtime.commands") is None:
            return
    except ModuleNotFoundError:  # no `runtime` package at all
        return
    try:
        module = importlib.import_module("runtime.commands")
        for command in module.COMMANDS:
            main.add_command(command)
    except Exception as exc:  # a broken runtime must not break `flowc check`
        _RUNTIME_LOAD_ERROR = f"{type(exc).__name__}: {exc}"


_add_runtime_commands()
