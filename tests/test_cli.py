"""The `flowc` command line (flowlang/cli.py): check, compile, schema, graph, exit codes."""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import click
import jsonschema
import pytest
from click.testing import CliRunner, Result

from flowlang.cli import BUG_MESSAGE, _FlowcGroup, check_exit_code, main, summary
from flowlang.diagnostics import Diagnostic, Label, Severity
from flowlang.source import Span

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "cli"
FLOWC = ROOT / ".venv" / "bin" / "flowc"
BROKEN = sorted(p.name for p in (FIXTURES / "broken").glob("*.flow"))
JSON_KEYS = {
    "file",
    "line",
    "column",
    "end_line",
    "end_column",
    "severity",
    "code",
    "message",
    "help",
    "notes",
}


@pytest.fixture(autouse=True)
def _in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the fixtures folder so that file names in the output are short and stable."""
    monkeypatch.chdir(FIXTURES)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FLOWC_DEBUG", raising=False)


def flowc(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- check: exit codes


def test_check_clean_file_exits_0() -> None:
    result = flowc("check", "ok")
    assert result.exit_code == 0
    assert result.stdout == "checked 1 file: no problems\n"


def test_check_errors_exit_1_with_a_summary() -> None:
    result = flowc("check", "broken")
    assert result.exit_code == 1
    assert result.stdout.endswith(f"\n\nchecked {len(BROKEN)} files: {len(BROKEN)} errors\n")


def test_check_mixed_paths_reports_only_the_broken_file() -> None:
    result = flowc("check", "ok", "broken/unclosed_text.flow", "--format", "short")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "broken/unclosed_text.flow:5:9: error[FL003]: this text has no closing quote",
        "checked 2 files: 1 error",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "no_such_folder"], "there is no file or folder named 'no_such_folder'"),
        (["check", "ok", "missing.flow"], "there is no file or folder named 'missing.flow'"),
        (["check", "empty"], "no .flow files found in 'empty'"),
        (["check"], "Missing argument 'PATH...'"),
        (["check", "ok", "--format", "xml"], "'xml' is not one of"),
        (["check", "ok", "--no-such-option"], "No such option '--no-such-option'"),
        (["compile", "no_such_folder"], "there is no file or folder named 'no_such_folder'"),
        (["graph", "no_such.flow"], "there is no file named 'no_such.flow'"),
        (["graph", "graph/shop.flow", "--flow", "nope"], "there is no flow named 'nope'"),
        (["graph", "graph/shop.flow", "--format", "png"], "'png' is not one of"),
        (["nonsense"], "No such command 'nonsense'"),
    ],
)
def test_usage_problems_exit_2(args: list[str], message: str) -> None:
    result = flowc(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_strict_makes_warnings_fail() -> None:
    plain = flowc("check", "warning", "--format", "short")
    strict = flowc("check", "warning", "--format", "short", "--strict")
    assert plain.exit_code == 0, plain.output  # warnings alone never fail
    if "warning[" not in plain.stdout:
        pytest.skip("the unreachable-step check (FL201) does not report warnings yet")
    assert strict.exit_code == 1
    assert re.search(r"checked 1 file: 1 warnings?$", strict.stdout.strip())


def _diagnostic(severity: Severity) -> Diagnostic:
    return Diagnostic("FL201", severity, "m", Label(Span("a.flow", 0, 0)))


@pytest.mark.parametrize(
    ("severities", "strict", "code"),
    [
        ((), False, 0),
        ((), True, 0),
        ((Severity.NOTE,), True, 0),
        ((Severity.WARNING,), False, 0),
        ((Severity.WARNING,), True, 1),
        ((Severity.ERROR,), False, 1),
        ((Severity.WARNING, Severity.ERROR), False, 1),
    ],
)
def test_check_exit_code(severities: tuple[Severity, ...], strict: bool, code: int) -> None:
    assert check_exit_code([_diagnostic(s) for s in severities], strict) == code


def test_summary_wording() -> None:
    e, w = _diagnostic(Severity.ERROR), _diagnostic(Severity.WARNING)
    assert summary(4, [e, e, w]) == "checked 4 files: 2 errors, 1 warning"
    assert summary(1, [w, w]) == "checked 1 file: 2 warnings"
    assert summary(4, []) == "checked 4 files: no problems"


# -- check: every broken file's errors in one run, in every format


def test_all_files_in_short_format(snapshot) -> None:
    result = flowc("check", "broken", "--format", "short")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines == snapshot
    problems = lines[:-1]
    assert [line.split(":", 1)[0] for line in problems] == [f"broken/{n}" for n in BROKEN]
    for line in problems:
        assert re.fullmatch(r"broken/\w+\.flow:\d+:\d+: error\[FL\d{3}\]: .+", line)


def test_all_files_in_rich_format(snapshot) -> None:
    result = flowc("check", "broken")
    assert result.exit_code == 1
    assert result.stdout == snapshot
    for name in BROKEN:
        assert re.search(rf"^ --> broken/{name}:\d+:\d+$", result.stdout, re.MULTILINE)
    assert "\x1b[" not in result.stdout  # not a terminal: no colour


def test_all_files_in_json_format() -> None:
    result = flowc("check", "broken", "--format", "json")
    assert result.exit_code == 1
    items = json.loads(result.stdout)  # nothing but the JSON, no summary line
    assert [item["file"] for item in items] == [f"broken/{n}" for n in BROKEN]
    for item in items:
        assert set(item) == JSON_KEYS
        assert item["severity"] == "error"
        assert re.fullmatch(r"FL\d{3}", item["code"])
        assert item["line"] >= 1 and item["column"] >= 1
        assert (item["end_line"], item["end_column"]) >= (item["line"], item["column"])


def test_all_files_in_github_format() -> None:
    result = flowc("check", "broken", "--format", "github")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == len(BROKEN)
    for line, name in zip(lines, BROKEN, strict=True):
        assert line.startswith(f"::error file=broken/{name},line=")
        assert re.match(r"::error file=[^,]+,line=\d+,col=\d+,endLine=\d+,endColumn=\d+,", line)


def test_clean_json_and_github_output() -> None:
    assert flowc("check", "ok", "--format", "json").stdout == "[]\n"
    assert flowc("check", "ok", "--format", "github").stdout == ""


def test_format_name_is_case_insensitive() -> None:
    assert flowc("check", "ok", "--format", "JSON").stdout == "[]\n"


def test_rich_shows_the_tab_line_lined_up() -> None:
    result = flowc("check", "broken/stray_word.flow")
    assert '5 |     say "Tab    here" please\n  |                       ^^^^^^' in result.stdout


def test_unreadable_file_is_a_diagnostic_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.flow"
    bad.write_bytes(b'flow caf\xe9\n  step s\n    say "x"\n')
    result = flowc("check", str(bad))
    assert result.exit_code == 1
    assert f"error[FL007]: this file is not UTF-8 text\n --> {bad}:1:1" in result.stdout


def test_color_option() -> None:
    painted = flowc("check", "broken", "--format", "short", "--color")
    assert "\x1b[1;31merror[FL" in painted.stdout
    plain = flowc("check", "broken", "--format", "short", "--no-color")
    assert "\x1b[" not in plain.stdout
    # Machine formats never get colour.
    assert "\x1b[" not in flowc("check", "broken", "--format", "json", "--color").stdout


def _on_terminal(*args: str, env: dict[str, str]) -> str:
    """Run the real flowc with its output on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    try:
        subprocess.run([str(FLOWC), *args], stdout=follower, env=env, check=False, timeout=60)
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the terminal was closed and everything has been read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_unless_no_color() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    args = ("check", "broken/unclosed_text.flow", "--format", "short")
    assert "\x1b[1;31merror[FL003]" in _on_terminal(*args, env=env)
    assert "\x1b[" not in _on_terminal(*args, env={**env, "NO_COLOR": "1"})
    assert "\x1b[" in _on_terminal(*args, "--color", env={**env, "NO_COLOR": "1"})


# -- compile


def _schema() -> dict[str, object]:
    result = flowc("schema")
    assert result.exit_code == 0
    return json.loads(result.stdout)


def test_compile_prints_ir_that_validates_against_the_schema() -> None:
    result = flowc("compile", "graph")
    assert result.exit_code == 0, result.output
    program = json.loads(result.stdout)
    assert sorted(program["flows"]) == ["help", "sales", "shop"]
    jsonschema.validate(program, _schema(), cls=jsonschema.Draft202012Validator)


def test_schema_rejects_what_the_runtime_would_not_understand() -> None:
    program = json.loads(flowc("compile", "graph").stdout)
    schema = _schema()
    for broken in (
        {**program, "schema_version": 2},
        {**program, "surprise": True},
        {k: v for k, v in program.items() if k != "flows"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)


def test_schema_describes_the_program() -> None:
    schema = _schema()
    assert schema["title"] == "FlowProgram"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_compile_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "flows.json"
    result = flowc("compile", "ok", "-o", str(out))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == f"wrote 1 flow to {out}\n"
    assert list(json.loads(out.read_text())["flows"]) == ["hello"]


def test_compile_errors_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "flows.json"
    result = flowc("compile", "broken", "ok", "-o", str(out))
    assert result.exit_code == 1
    assert not out.exists()
    assert result.stdout == ""
    assert "error[FL003]: this text has no closing quote" in result.stderr
    assert result.stderr.endswith(f"nothing was written: {len(BROKEN)} errors to fix first\n")


def test_compile_errors_print_nothing_to_stdout() -> None:
    result = flowc("compile", "broken/tab_indent.flow")
    assert (result.exit_code, result.stdout) == (1, "")
    assert " --> broken/tab_indent.flow:4:1" in result.stderr


def test_compile_warnings_are_not_fatal() -> None:
    result = flowc("compile", "warning")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["flows"]) == ["lonely"]


def test_compile_creates_the_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "build" / "flows.json"
    assert flowc("compile", "ok", "-o", str(out)).exit_code == 0
    assert json.loads(out.read_text())["schema_version"] == 1


def test_compile_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    result = flowc("compile", "ok", "-o", str(tmp_path / "a_file" / "flows.json"))
    assert result.exit_code == 1
    assert "cannot write" in result.stderr
    assert "Traceback" not in result.output


# -- graph


def test_graph_draws_only_the_flows_of_the_file(snapshot) -> None:
    result = flowc("graph", "graph/shop.flow")
    assert result.exit_code == 0, result.output
    assert result.stdout == snapshot
    assert 'subgraph g0["shop"]' in result.stdout
    assert 'subgraph g1["help"]' in result.stdout
    assert 'F_sales[["flow sales"]]' in result.stdout  # from sales.flow, resolved, not drawn


def test_graph_one_flow_as_dot(snapshot) -> None:
    result = flowc("graph", "graph/shop.flow", "--flow", "shop", "--format", "dot")
    assert result.exit_code == 0, result.output
    assert result.stdout == snapshot
    assert result.stdout.startswith('digraph "shop" {')


def test_graph_of_a_flow_from_another_file() -> None:
    result = flowc("graph", "graph/shop.flow", "--flow", "sales")
    assert result.exit_code == 0
    assert 'b0(["Sales"])' in result.stdout


def test_graph_from_inside_the_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES / "graph")
    result = flowc("graph", "sales.flow")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == '  b0(["Sales"])'


def test_graph_with_errors_exits_1() -> None:
    result = flowc("graph", "broken/stray_word.flow")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error[FL002]" in result.stderr
    assert result.stderr.endswith(f"no diagram was drawn: {len(BROKEN)} errors to fix first\n")


# -- help, crashes, entry points


@pytest.mark.parametrize("command", ["check", "compile", "schema", "graph"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = flowc(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout
    assert f"flowc {command}" in result.stdout


def test_main_help_lists_the_commands() -> None:
    result = flowc("--help")
    assert result.exit_code == 0
    for command in ("check", "compile", "schema", "graph"):
        assert re.search(rf"^  {command} ", result.stdout, re.MULTILINE)


def _crashing_group() -> click.Group:
    @click.group(cls=_FlowcGroup)
    def app() -> None:
        """A group like `flowc`."""

    @app.command()
    def boom() -> None:
        raise KeyError("internal detail")

    return app


def test_unexpected_exception_is_one_plain_message() -> None:
    result = CliRunner().invoke(_crashing_group(), ["boom"], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr == BUG_MESSAGE.format(kind="KeyError", debug="FLOWC_DEBUG") + "\n"
    assert "Traceback" not in result.output
    assert "internal detail" not in result.output


def test_debug_variable_shows_the_real_exception() -> None:
    result = CliRunner().invoke(_crashing_group(), ["boom"], env={"FLOWC_DEBUG": "1"})
    assert isinstance(result.exception, KeyError)


def test_runtime_commands_are_added_when_present() -> None:
    if importlib.util.find_spec("runtime.commands") is None:
        pytest.skip("runtime/commands.py does not exist yet")
    from runtime.commands import COMMANDS  # type: ignore[import-not-found]

    for command in COMMANDS:
        assert main.commands[command.name] is command


def test_real_flowc_executable() -> None:
    run = subprocess.run(
        [str(FLOWC), "check", "broken", "ok", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 1, run.stderr
    assert {item["file"] for item in json.loads(run.stdout)} == {f"broken/{n}" for n in BROKEN}
    usage = subprocess.run(
        [str(FLOWC), "check", "nowhere"], capture_output=True, text=True, check=False, timeout=60
    )
    assert usage.returncode == 2
    assert "there is no file or folder named 'nowhere'" in usage.stderr


def test_python_dash_m_flowlang() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "flowlang", "check", "ok"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (run.returncode, run.stdout) == (0, "checked 1 file: no problems\n")
